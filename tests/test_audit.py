"""The audit log on a real SQLite file: durability settings, privacy, queries, and a hard kill.

The kill test is the one that matters most: a child process writes records as fast as it can and
prints each id only after ``record()`` returned; it is SIGKILLed mid-burst, and every id it
printed must be in the file, which must pass ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from twinlock.daemon.cli import format_records, parse_since
from twinlock.daemon.errors import AuditError, TwinLockError, UsageError
from twinlock.daemon.storage.audit import (
    EVENTS,
    SCHEMA_VERSION,
    AuditLog,
    AuditRecord,
    SnapshotStore,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def log(tmp_path: Path):
    with AuditLog(tmp_path / "state" / "audit.db") as audit:
        yield audit


# -- durability and privacy -----------------------------------------------------------------------


def test_wal_and_full_sync_are_really_set(log: AuditLog) -> None:
    settings = log.settings()
    assert settings["journal_mode"] == "wal"
    assert settings["synchronous"] == 2  # FULL; NORMAL (1) could lose the last commits
    assert settings["busy_timeout"] >= 1000
    assert settings["user_version"] == SCHEMA_VERSION == log.schema_version
    log.record("start", "ok", "service started")
    # journal_mode=WAL is a property of the file: a fresh connection sees it too
    other = sqlite3.connect(log.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        other.close()


def test_files_and_folders_are_private_even_with_a_loose_umask(tmp_path: Path) -> None:
    outside = mode(tmp_path)
    old = os.umask(0o022)
    try:
        path = tmp_path / "var" / "lib" / "twinlock" / "audit.db"
        with AuditLog(path) as audit:
            audit.record("start", "ok", "service started")
            for folder in (tmp_path / "var", tmp_path / "var" / "lib", path.parent):
                assert mode(folder) == 0o700, folder
            for suffix in ("", "-wal", "-shm"):
                companion = Path(f"{path}{suffix}")
                assert companion.exists(), companion
                assert mode(companion) == 0o600, companion
        # the umask is the caller's again afterwards
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(old)
    assert mode(tmp_path) == outside  # an existing parent is not ours to change


def test_an_existing_loose_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.touch()
    os.chmod(path, 0o644)
    with AuditLog(path):
        assert mode(path) == 0o600


def test_a_file_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(AuditError, match="schema 99"):
        AuditLog(path)


def test_reopening_keeps_records_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path) as audit:
        first = audit.record("start", "ok", "first run")
    with AuditLog(path) as audit:
        assert audit.schema_version == SCHEMA_VERSION
        second = audit.record("start", "ok", "second run")
        assert [r.id for r in audit.query()] == [first, second]


# -- records --------------------------------------------------------------------------------------


def test_records_round_trip(log: AuditLog) -> None:
    rid = log.record(
        "unlock", "granted", "3 of 5 frames agreed", user="alice", best_score=np.float32(0.9125),
        frame=1234, details={"threshold": np.float64(0.5), "frames": [1, 2, 3]}, ts=0.5,
    )
    (rec,) = log.query()
    assert rec == AuditRecord(
        id=rid, ts=0.5, ts_iso="1970-01-01T00:00:00.500Z", event="unlock", user="alice",
        best_score=pytest.approx(0.9125), decision="granted", reason="3 of 5 frames agreed",
        frame=1234, details={"threshold": 0.5, "frames": [1, 2, 3]},
    )
    assert isinstance(rec.best_score, float)
    nulls = log.record("no_match", "denied", "nobody enrolled matched")
    rec2 = log.query()[-1]
    assert (rec2.id, rec2.user, rec2.best_score, rec2.frame, rec2.details) == (
        nulls, None, None, None, None)


def test_default_timestamp_is_now_in_utc(log: AuditLog) -> None:
    before = time.time()
    log.record("start", "ok", "up")
    after = time.time()
    (rec,) = log.query()
    assert before <= rec.ts <= after
    parsed = datetime.strptime(rec.ts_iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - rec.ts) < 0.001


def test_every_known_event_is_accepted_and_unknown_ones_are_not(log: AuditLog) -> None:
    for event in sorted(EVENTS):
        log.record(event, "x", "y")
    assert sorted(r.event for r in log.query()) == sorted(EVENTS)
    with pytest.raises(AuditError, match="unknown audit event 'opened'"):
        log.record("opened", "granted", "typo")
    assert len(log.query()) == len(EVENTS)


def test_embeddings_and_junk_are_refused_in_details(log: AuditLog) -> None:
    with pytest.raises(AuditError, match="embeddings never go in the audit log"):
        log.record("unlock", "granted", "x", details={"embedding": np.zeros(128, np.float32)})
    with pytest.raises(AuditError, match="not JSON data"):
        log.record("unlock", "granted", "x", details={"when": object()})
    with pytest.raises(AuditError, match="at most"):
        log.record("fault", "error", "x", details={"blob": "x" * 100_000})
    assert log.query() == []


def test_closed_log_refuses_writes(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.db")
    audit.close()
    audit.close()  # idempotent
    with pytest.raises(AuditError, match="closed"):
        audit.record("stop", "ok", "bye")
    assert issubclass(AuditError, TwinLockError)


def test_concurrent_writers_share_one_connection(log: AuditLog) -> None:
    ids: list[int] = []
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for i in range(50):
                ids.append(log.record("deny", "denied", "test", user=name, frame=i))
        except (AuditError, sqlite3.Error) as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"u{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(ids)) == 200
    assert len(log.query()) == 200


def test_query_filters(log: AuditLog) -> None:
    log.record("deny", "denied", "a", user="alice", ts=100.0)
    log.record("unlock", "granted", "b", user="alice", ts=200.0)
    log.record("unlock", "granted", "c", user="bob", ts=300.0)
    log.record("fault", "error", "d", ts=400.0)

    def reasons(**kwargs: object) -> list[str]:
        return [r.reason for r in log.query(**kwargs)]

    assert reasons() == ["a", "b", "c", "d"]
    assert reasons(since=200.0) == ["b", "c", "d"]
    assert reasons(until=300.0) == ["a", "b"]  # until is exclusive
    assert reasons(since=150.0, until=350.0) == ["b", "c"]
    assert reasons(event="unlock") == ["b", "c"]
    assert reasons(user="alice") == ["a", "b"]
    assert reasons(event="unlock", user="alice") == ["b"]
    assert reasons(limit=2) == ["c", "d"]  # the newest two, newest last
    assert reasons(user="carol") == []
    with pytest.raises(UsageError, match="unknown event"):
        log.query(event="nope")
    with pytest.raises(UsageError, match="limit"):
        log.query(limit=0)


def test_newest_last_even_when_written_out_of_order(log: AuditLog) -> None:
    log.record("stop", "ok", "late", ts=50.0)
    log.record("start", "ok", "early", ts=10.0)
    assert [r.reason for r in log.query()] == ["early", "late"]


def test_prune_deletes_only_old_records(log: AuditLog) -> None:
    now = 1_000_000.0
    log.record("deny", "denied", "ten days ago", ts=now - 10 * 86400)
    log.record("deny", "denied", "eight days ago", ts=now - 8 * 86400)
    log.record("deny", "denied", "yesterday", ts=now - 86400)
    log.record("stop", "ignore", "a minute ago", ts=now - 60)  # age counts from the newest
    assert log.prune(7, now=now) == 2
    assert [r.reason for r in log.query()] == ["yesterday", "a minute ago"]
    assert log.prune(7, now=now) == 0
    with pytest.raises(UsageError):
        log.prune(0)


# -- power loss -----------------------------------------------------------------------------------

CHILD = """
import sys
from pathlib import Path
from twinlock.daemon.storage.audit import AuditLog
log = AuditLog(Path(sys.argv[1]))
print("open", flush=True)
i = 0
while True:
    rid = log.record("deny", "denied", "burst", user="u", best_score=0.5, frame=i,
                     details={"i": i})
    print(rid, flush=True)
    i += 1
"""


def test_every_committed_record_survives_sigkill(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    path = tmp_path / "audit.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True,
        stderr=subprocess.PIPE,
    )
    printed: list[int] = []
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == "open", (first, proc.stderr.read() if proc.poll() else "")
        target = rng.randint(30, 400)
        while len(printed) < target:
            line = proc.stdout.readline()
            assert line, f"child stopped early: {proc.stderr.read() if proc.stderr else ''}"
            printed.append(int(line))
        time.sleep(rng.uniform(0.0, 0.02))  # let the kill land anywhere inside a record()
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # lines the child printed before it died were also printed after a commit
    printed += [int(line) for line in rest.split() if line.strip()]
    assert len(printed) >= 30

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT id FROM decisions")}
    finally:
        conn.close()
    missing = sorted(set(printed) - stored)
    assert missing == [], f"seed {seed}: committed ids lost after SIGKILL: {missing[:10]}"
    # and the file is still usable by the daemon afterwards
    with AuditLog(path) as audit:
        assert audit.query(limit=1)[0].id >= max(printed)
        audit.record("start", "ok", "after the crash")


# -- command-line helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "age"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 7 * 86400), ("1.5h", 5400), (" 2H ", 7200)],
)
def test_parse_since_relative(text: str, age: float) -> None:
    assert parse_since(text, now=1_000_000.0) == pytest.approx(1_000_000.0 - age)


def test_parse_since_relative_defaults_to_now() -> None:
    assert abs(parse_since("1h") - (time.time() - 3600)) < 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28", datetime(2026, 11, 28).timestamp()),  # local midnight
        ("2026-11-28T10:00", datetime(2026, 11, 28, 10, 0).timestamp()),
        ("2026-11-28 10:00:30", datetime(2026, 11, 28, 10, 0, 30).timestamp()),
        ("2026-11-28T10:00+00:00", datetime(2026, 11, 28, 10, 0, tzinfo=UTC).timestamp()),
        ("2026-11-28T10:00Z", datetime(2026, 11, 28, 10, 0, tzinfo=UTC).timestamp()),
    ],
)
def test_parse_since_iso(text: str, expected: float) -> None:
    assert parse_since(text, now=0.0) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "5x", "-3d", "10", "2026-13-01", "7 days"])
def test_parse_since_errors(text: str) -> None:
    with pytest.raises(UsageError, match="2026-11-28T10:00.*30s"):
        parse_since(text)


def _sample(log: AuditLog) -> list[AuditRecord]:
    log.record("unlock", "granted", "3 of 5 frames", user="alice", best_score=0.91234,
               ts=1_800_000_000.25, details={"k": 3})
    log.record("no_match", "denied", "no anchor passed", ts=1_800_000_060.0)
    log.record("fault", "error", "camera\nlost", user="bob", ts=1_800_000_120.0)
    return log.query()


def test_format_records_json_lines(log: AuditLog) -> None:
    records = _sample(log)
    lines = format_records(records, as_json=True).splitlines()
    assert len(lines) == 3
    objects = [json.loads(line) for line in lines]
    assert objects[0]["user"] == "alice"
    assert objects[0]["best_score"] == pytest.approx(0.91234)
    assert objects[0]["details"] == {"k": 3}
    assert objects[1]["user"] is None
    assert objects[2]["reason"] == "camera\nlost"
    assert [o["id"] for o in objects] == [r.id for r in records]
    assert format_records([], as_json=True) == ""


def test_format_records_table(log: AuditLog) -> None:
    records = _sample(log)
    lines = format_records(records, as_json=False).splitlines()
    assert len(lines) == 4  # header + one line per record, even with a newline in a reason
    header = lines[0]
    assert header.split() == ["TIME", "EVENT", "USER", "SCORE", "DECISION", "REASON"]
    for column in ("EVENT", "USER", "SCORE", "DECISION", "REASON"):
        start = header.index(column)
        for line in lines[1:]:
            assert line[start - 2:start] == "  " and line[start] != " ", (column, line)
    local = datetime.fromtimestamp(1_800_000_000.25).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert lines[1].startswith(local)
    assert " 0.912 " in lines[1] and " alice " in lines[1]
    no_match = lines[2].split()
    assert no_match[2:6] == ["no_match", "-", "-", "denied"]
    assert lines[3].endswith("camera\\nlost")
    assert "no matching records" in format_records([], as_json=False)


# -- snapshots ------------------------------------------------------------------------------------


def _noise(seed: int, size: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_snapshot_is_a_private_rgb_jpeg(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps", max_total_mb=1.0, jpeg_quality=95)
    red = np.zeros((32, 48, 3), np.uint8)
    red[..., 0] = 255
    path = store.save(red, ts=1_800_000_000.123, tag="unlock alice/../x")
    assert path.parent == tmp_path / "snaps"
    assert path.name == "0000000001_20270115T080000.123Z_unlock-alice-x.jpg"
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    bgr = cv2.imread(str(path))
    assert bgr.shape == (32, 48, 3)
    assert bgr[..., 2].mean() > 240 and bgr[..., 0].mean() < 15  # red stayed red
    again = store.save(red, ts=1_800_000_000.123, tag="unlock alice/../x")
    assert again != path and again.exists() and path.exists()
    assert not list(store.dir.glob(".tmp-*"))


def test_snapshot_cap_deletes_the_oldest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps", max_total_mb=0.05, jpeg_quality=90)
    foreign = store.dir / "notes.txt"
    foreign.write_text("not a snapshot")
    saved = [store.save(_noise(i), ts=1_800_000_000.0 + i, tag="deny") for i in range(8)]
    kept = store.snapshots()
    assert 1 < len(kept) < len(saved)
    assert kept == saved[-len(kept):]  # exactly the newest survive
    assert store.total_bytes() <= store.max_total_bytes
    assert all(mode(p) == 0o600 for p in kept)
    assert foreign.exists()


def test_the_newest_snapshot_is_kept_even_above_the_cap(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps", max_total_mb=0.001, jpeg_quality=90)
    first = store.save(_noise(1), ts=1.0, tag="a")
    second = store.save(_noise(2), ts=2.0, tag="b")
    assert store.snapshots() == [second]
    assert not first.exists()


def test_snapshot_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        SnapshotStore(tmp_path, max_total_mb=0, jpeg_quality=90)
    with pytest.raises(UsageError):
        SnapshotStore(tmp_path, max_total_mb=1, jpeg_quality=101)
    store = SnapshotStore(tmp_path / "s", max_total_mb=1, jpeg_quality=90)
    with pytest.raises(AuditError, match="uint8"):
        store.save(np.zeros((4, 4, 3), np.float32), ts=1.0, tag="x")
