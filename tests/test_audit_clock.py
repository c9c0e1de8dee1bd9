"""The audit log and the snapshots under a clock that jumps: a Pi has no battery clock.

Real SQLite files and real JPEGs. A clock 400 days ahead at start used to prune the whole log
(every record looked older than the retention period); a clock set back made each new snapshot
sort first by its name's time, so the next save deleted it.
"""

from __future__ import annotations

import logging
import time
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.storage import audit as audit_module
from twinlock.daemon.storage.audit import AuditLog, SnapshotStore
from twinlock.daemon.storage.guard import open_audit

DAY = 86400.0


def _log_of_the_last_days(path: Path, days: int, now: float) -> AuditLog:
    log = AuditLog(path)
    for day in range(days, 0, -1):
        log.record("deny", "deny", f"{day} days ago", ts=now - day * DAY)
    log.record("stop", "ignore", "twinlockd stopped", ts=now - 60.0)
    return log


def test_a_clock_400_days_ahead_at_start_keeps_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon's own start (``_open_audit``: open, then prune with the configured retention)
    with the audit module's clock 400 days ahead: every record stays, and a warning says the
    clock and the log disagree. Without the fix all 21 records went."""
    now = time.time()
    db = tmp_path / "audit.db"
    _log_of_the_last_days(db, 20, now).close()
    ahead = types.SimpleNamespace(time=lambda: now + 400 * DAY, monotonic=time.monotonic)
    monkeypatch.setattr(audit_module, "time", ahead)
    cfg = parse_config(yaml.safe_dump({"audit": {"db": str(db), "retention_days": 30}}))
    with caplog.at_level(logging.WARNING):
        log = open_audit(cfg.audit.db, cfg.audit.retention_days)
    assert isinstance(log, AuditLog)
    with log:
        assert len(log.query()) == 21
    assert any("nothing pruned" in r.getMessage() for r in caplog.records)


def test_prune_measures_age_from_the_newest_record_when_the_clock_runs_ahead(
        tmp_path: Path) -> None:
    """A clock ahead by less than the retention period: age counts from the newest record (the
    earlier of the two), so only what is older than the period before it goes."""
    now = time.time()
    with _log_of_the_last_days(tmp_path / "audit.db", 40, now) as log:
        assert log.prune(30, now=now + 20 * DAY) == 10  # days 31..40 before the newest
        assert len(log.query()) == 31
        assert log.prune(30, now=now) == 0


def test_a_clock_set_back_prunes_nothing_newer_than_it(tmp_path: Path) -> None:
    """A clock 400 days behind the log: no record is older than the retention by that clock
    either, and none is pruned; one set back by hours still prunes what is truly old."""
    now = time.time()
    with _log_of_the_last_days(tmp_path / "audit.db", 40, now) as log:
        assert log.prune(30, now=now - 400 * DAY) == 0
        assert log.prune(30, now=now - 3600) == 10
        assert log.query()[0].reason == "30 days ago"


def _noise(seed: int, size: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_snapshots_taken_with_a_clock_set_back_keep_the_newest(tmp_path: Path) -> None:
    """Eight snapshots, the clock set back a day before each: the cap keeps the last ones
    saved, and the newest survives the next save. Ordered by their names' time, each new one
    sorted first and the next save deleted it."""
    store = SnapshotStore(tmp_path / "snaps", max_total_mb=0.05, jpeg_quality=90)
    start = 1_800_000_000.0
    saved = [store.save(_noise(i), ts=start - i * DAY, tag="deny") for i in range(8)]
    kept = store.snapshots()
    assert 1 < len(kept) < len(saved)
    assert kept == saved[-len(kept):], [p.name for p in kept]
    assert saved[-2].exists() and saved[-1].exists()


def test_snapshots_of_the_former_naming_count_as_older(tmp_path: Path) -> None:
    """Snapshots from before the sequence (``<time>_<tag>.jpg``) are deleted before any
    numbered one, whatever their time says."""
    store = SnapshotStore(tmp_path / "snaps", max_total_mb=0.05, jpeg_quality=90)
    old = store.save(_noise(0), ts=1_900_000_000.0, tag="deny")
    legacy = old.with_name(old.name.split("_", 1)[1])  # the former name: its time first
    old.rename(legacy)
    saved = [store.save(_noise(i), ts=1_800_000_000.0 + i, tag="deny") for i in range(1, 8)]
    assert store.snapshots()[-1] == saved[-1]
    assert not legacy.exists()
    assert saved[0].name.startswith("0000000001_")
