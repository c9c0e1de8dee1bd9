"""``twinlockd log`` on a long audit log: wall time and peak memory of the command, per mode.

Why: a door writes a record per attempt for a year (``audit.retention_days`` 365); ``twinlockd
log`` without --since/--limit on a 3-million-row log once took 57 s and 5.6 GB (``--json`` 146 s
and 7.1 GB), because it read every row into a list before printing. It now shows the newest 50
records unless asked for more, and ``--all`` streams rows from the SQLite cursor a page at a
time (daemon/cli.py, ``AuditLog.stream``).

What it does: writes an audit log of ``--rows`` records (default 3,000,000; the daemon's own
schema, made by ``AuditLog``; varied events, users and a details object like the door's) into a
temporary folder, or reuses ``--db``; then runs ``python -m twinlock.daemon.cli log --db DB``
as a child once per mode (default table, ``--json``, ``--all``, ``--all --json``), reading its
stdout through a pipe (bytes and lines counted, nothing kept) and its peak RSS from
``wait4``'s ``ru_maxrss``. ``--pythonpath DIR`` runs the children on another tree (e.g. one
made with ``git archive`` into ``DIR/twinlock/daemon``) to measure a version from before; modes
that tree's ``log`` does not know (``--all``) are skipped.

Usage::

    .venv/bin/python benchmarks/audit_log.py [--rows N] [--db FILE] [--pythonpath DIR]
                                             [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, from any working directory
import _common as common

from twinlock.daemon.storage.audit import AuditLog

#: the modes measured: name -> arguments after ``log --db DB``
MODES: dict[str, list[str]] = {
    "default": [], "json": ["--json"], "all": ["--all"], "all_json": ["--all", "--json"],
}
START = 1_765_000_000.0


def make_log(db: Path, rows: int) -> None:
    """An audit log of ``rows`` records, 10 s apart, in the daemon's schema."""
    AuditLog(db).close()
    events = ("deny", "quality", "no_match", "unlock", "deny", "fault")
    users = ("alice", None, "bob", None, "carol")
    details = json.dumps({"frames": 12, "verified_frames": 3, "seconds": 3.52,
                          "quality_rejections": {"too_blurry": 2, "too_small": 1},
                          "closest_user": "alice", "liveness": {"mode": "motion",
                                                                "best_parallax": 0.0421}})

    def records() -> Any:
        for i in range(rows):
            yield (START + 10 * i, f"2025-12-06T00:00:{i % 60:02d}.000Z", events[i % 6],
                   users[i % 5], 0.3 + (i % 50) / 100, "deny", "face left without a match", i,
                   details)

    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany(
            "INSERT INTO decisions (ts, ts_iso, event, user, best_score, decision, reason, "
            "frame, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", records())


def run_log(db: Path, extra: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """One ``twinlockd log`` child: wall time, peak RSS, exit code, output size."""
    cmd = [sys.executable, "-m", "twinlock.daemon.cli", "log", "--db", str(db), *extra]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert child.stdout is not None
    out_bytes = lines = 0
    deadline = started + timeout
    while chunk := child.stdout.read(1 << 20):
        out_bytes += len(chunk)
        lines += chunk.count(b"\n")
        if time.perf_counter() > deadline:
            child.kill()
            break
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"args": ["log", *extra], "returncode": child.returncode,
            "wall_s": round(time.perf_counter() - started, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "output_lines": lines, "output_mb": round(out_bytes / 2**20, 1),
            "timed_out": time.perf_counter() > deadline}


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = str(args.pythonpath)
    helptext = subprocess.run([sys.executable, "-m", "twinlock.daemon.cli", "log", "--help"],
                              env=env, capture_output=True, text=True, check=True).stdout
    report: dict[str, Any] = {"benchmark": "audit_log", "tree": str(args.pythonpath or "this one"),
                              "modes": {}}
    with tempfile.TemporaryDirectory(prefix="twinlock-log-") as tmp:
        db = args.db or Path(tmp) / "audit.db"
        if not db.exists():
            started = time.perf_counter()
            make_log(db, args.rows)
            report["made_log_s"] = round(time.perf_counter() - started, 1)
        with contextlib.closing(sqlite3.connect(db)) as conn:
            report["rows"] = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        report["db_mb"] = round(db.stat().st_size / 2**20, 1)
        for name, extra in MODES.items():
            if any(a.startswith("--") and a not in helptext for a in extra):
                report["modes"][name] = {"skipped": f"this tree's log has no {' '.join(extra)}"}
                continue
            report["modes"][name] = run_log(db, extra, env, args.timeout)
    report["environment"] = common.environment()
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = common.make_parser(__doc__)
    parser.add_argument("--rows", type=int, default=3_000_000, help="records (default 3,000,000)")
    parser.add_argument("--db", type=Path, help="an audit log to reuse (made if missing)")
    parser.add_argument("--pythonpath", type=Path, help="run the children on this tree")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds per child before it is killed (default 900)")
    common.add_json_option(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(common.main(parse_args, run))
