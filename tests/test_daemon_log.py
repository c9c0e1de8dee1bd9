"""``twinlockd log`` on real SQLite audit files: the newest records by default, every record
streamed with --all (memory bounded however long the log), and readable when the rest of the
config is broken (issue 20, items 9 and 14)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tracemalloc
from pathlib import Path

import pytest
import yaml

from twinlock.daemon.cli import main
from twinlock.daemon.storage.audit import AuditLog

START = 1_800_000_000.0
#: what `twinlockd log --help` promises without --limit or --all
LOG_DEFAULT_LIMIT = 50


def make_log(db: Path, rows: int) -> list[int]:
    """A real audit log (the daemon's schema, made by AuditLog) holding ``rows`` records one
    second apart, inserted in one transaction (AuditLog.record syncs each: too slow for many);
    returns their ids, oldest first."""
    AuditLog(db).close()
    users = ("alice", "bob", None)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany(
            "INSERT INTO decisions (ts, ts_iso, event, user, best_score, decision, reason, "
            "frame, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((START + i, f"row {i}", "deny", users[i % 3], 0.25, "deny",
              "face left without a match", i,
              json.dumps({"frames": 12, "verified_frames": 0, "seconds": 3.5,
                          "quality_rejections": {"too_blurry": 2}, "closest_user": "alice"}))
             for i in range(rows)))
        return [row[0] for row in conn.execute("SELECT id FROM decisions ORDER BY ts")]


class _CountingSink:
    """stdout that counts lines and keeps nothing (capsys would keep the whole output)."""

    def __init__(self) -> None:
        self.lines = 0
        self.last = ""

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        if text.strip():
            self.last = text
        return len(text)

    def flush(self) -> None:
        pass


def test_log_shows_the_newest_records_by_default(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "audit.db"
    ids = make_log(db, 3000)
    assert main(["log", "--db", str(db), "--json"]) == 0
    out = capsys.readouterr()
    shown = [json.loads(line)["id"] for line in out.out.splitlines()]
    assert shown == ids[-LOG_DEFAULT_LIMIT:]  # the newest 50, oldest first
    assert "--all" in out.err  # says that there may be more
    assert main(["log", "--db", str(db)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 1 + LOG_DEFAULT_LIMIT and table[0].split()[0] == "TIME"
    assert main(["log", "--db", str(db), "--json", "--limit", "7", "--user", "bob"]) == 0
    bob = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in bob] == [i for n, i in enumerate(ids) if n % 3 == 1][-7:]
    for every in (["--all"], ["--limit", "0"]):
        assert main(["log", "--db", str(db), "--json", *every]) == 0
        out = capsys.readouterr()
        assert [json.loads(line)["id"] for line in out.out.splitlines()] == ids
        assert "--all" not in out.err
    assert main(["log", "--db", str(db), "--all"]) == 0  # a table in pages: one header
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3001 and sum(line.startswith("TIME") for line in table) == 1
    assert main(["log", "--db", str(db), "--limit", "-1"]) == 2


def test_log_all_streams_rows_instead_of_holding_the_log(tmp_path: Path) -> None:
    """20,000 records (about 8 MB as JSON lines): printing them all must cost a page of
    records, not the whole log in memory (fetchall, a list of records, one output string)."""
    db = tmp_path / "audit.db"
    ids = make_log(db, 20_000)
    sink = _CountingSink()
    tracemalloc.start()
    try:
        with contextlib.redirect_stdout(sink):  # type: ignore[type-var]
            assert main(["log", "--db", str(db), "--json", "--all"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.lines == len(ids)
    assert json.loads(sink.last.splitlines()[-1])["id"] == ids[-1]
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MB of Python objects while streaming"


def _broken_camera_config(tmp_path: Path, db: Path) -> Path:
    """A config whose camera section does not validate (keys of another camera type, no
    replay source) but whose audit section is fine."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "camera": {"type": "replay", "width": 3840, "detect_width": 320},
        "audit": {"db": db.name},  # relative to the config's folder
        "action": {"type": "log"},
    }))
    return config


def test_log_with_a_broken_camera_section_prints_records_and_warns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "audit.db"
    with AuditLog(db) as audit:
        audit.record("unlock", "unlock", "verified in 2 of 2 frames", user="alice",
                     best_score=0.97, ts=START)
        audit.record("fault", "error", "camera: cannot open", ts=START + 5)
    config = _broken_camera_config(tmp_path, db)
    assert main(["check-config", str(config)]) == 2  # the door would not start with it
    capsys.readouterr()
    assert main(["log", "--config", str(config), "--json"]) == 0
    out = capsys.readouterr()
    records = [json.loads(line) for line in out.out.splitlines()]
    assert [(r["event"], r["user"]) for r in records] == [("unlock", "alice"), ("fault", None)]
    assert "warning" in out.err and "camera.width" in out.err and "camera.source" in out.err
    # the audit section itself must still be valid: it names the file to read
    config.write_text(yaml.safe_dump({"audit": {"db": str(db), "retention_days": 0}}))
    assert main(["log", "--config", str(config)]) == 2
    assert "audit.retention_days" in capsys.readouterr().err
