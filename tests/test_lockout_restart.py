"""A restart does not lift a lockout, and a clock set since does not either.

The real daemon replays the clip: Alex Lacamoire (not enrolled) at the door until it locks out,
then a restart, then the enrolled resident. The clock rules are tested on a real SQLite log
with records as the daemon writes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import pytest
import yaml
from daemon_helpers import CLIP, MIRANDA_FRAMES, Doorway, enrol_miranda, liveness_off, write_config

from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.door.carry import resume_lockout
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.storage.audit import AuditLog, boot_clock, seconds_since

STRANGER_FRAMES = range(20, 82)  # Alex Lacamoire, who is not enrolled


def _frames(examples: Path, folder: Path, wanted: range, step: int) -> Path:
    folder.mkdir()
    video = cv2.VideoCapture(str(examples / CLIP))
    index = 0
    while True:
        ok, image = video.read()
        if not ok:
            break
        if index in wanted and (index - wanted.start) % step == 0:
            cv2.imwrite(str(folder / f"{index:04d}.png"), image)
        index += 1
    video.release()
    return folder


@pytest.mark.data
@pytest.mark.slow
def test_a_lockout_survives_a_restart_of_the_daemon(
        tmp_path: Path, door_model: Path, examples_dir: Path) -> None:
    """Run 1: the stranger's face-frames lock the door (5 minutes). Run 2, a restart on the
    same state: the resident's 43 frames are refused as locked out, no unlock. Without the
    resumed lockout the resident was let in at once. Run 3, a control on fresh state: the same
    frames let the resident in (the refusal is the lockout's)."""
    strangers = _frames(examples_dir, tmp_path / "strangers", STRANGER_FRAMES, 2)
    resident = _frames(examples_dir, tmp_path / "resident", MIRANDA_FRAMES, 3)
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    lockout = {"max_failed_frames": 8, "lockout_seconds": 300}

    def run(name: str, state: Path, frames: Path) -> None:
        config = write_config(tmp_path / f"{name}.yaml", state, door_model,
                              tmp_path / "gallery.json", str(frames),
                              camera={"realtime": False}, action={"type": "log"},
                              lockout=lockout, **liveness_off())
        assert Daemon(config).run() == 0

    run("strangers", tmp_path / "state", strangers)
    with AuditLog(tmp_path / "state" / "audit.db") as audit:
        locked = audit.query(event="lockout")
        assert len(locked) == 1 and "unrecognised face-frames" in locked[0].reason
        assert locked[0].details is not None and locked[0].details["lockout_seconds"] == 300
    run("restarted", tmp_path / "state", resident)
    with AuditLog(tmp_path / "state" / "audit.db") as audit:
        unlocks = [(r.user, r.frame) for r in audit.query(event="unlock")]
        resumed = audit.query(event="lockout")[1:]
        refused = [r for r in audit.query(event="deny") if "locked out" in r.reason]
    assert not unlocks, f"the restart lifted the lockout: {unlocks}"
    assert len(resumed) == 1 and resumed[0].details is not None and resumed[0].details["resumed"]
    assert 0 < resumed[0].details["lockout_seconds"] <= 300
    assert refused and all(r.user == "lin" for r in refused)
    run("control", tmp_path / "fresh", resident)
    with AuditLog(tmp_path / "fresh" / "audit.db") as audit:
        assert [r.user for r in audit.query(event="unlock")][:1] == ["lin"]


def _door(tmp_path: Path, name: str) -> Doorway:
    cfg = parse_config(yaml.safe_dump({"action": {"type": "log"}, **liveness_off(),
                                       "lockout": {"lockout_seconds": 300}}))
    return Doorway(cfg, tmp_path / f"{name}.db")


def _write_lockout(audit: AuditLog, ts: float, **clock: object) -> None:
    audit.record("lockout", "deny", "450 unrecognised face-frames within 180 s", ts=ts,
                 details={"lockout_seconds": 300} | clock)


@pytest.mark.skipif(not boot_clock(), reason="no boot clock (not Linux)")
def test_a_wall_clock_jump_after_the_lockout_does_not_lift_it(tmp_path: Path) -> None:
    """Written in this boot 10 s ago by the boot clock, but the wall clock has since jumped a
    year ahead (the record's time looks a year old): 290 s are still left. Measured by the
    wall clock, the lockout would be over."""
    door = _door(tmp_path, "jump")
    clock = boot_clock()
    clock["boottime_s"] -= 10.0
    _write_lockout(door.audit, time.time() - 365 * 86400, **clock)
    left = resume_lockout(door.audit, door.door, door.outbox, now=1000.0)
    assert 289 < left <= 290.5
    assert door.door.lockout.locked(1000.0 + 285) and not door.door.lockout.locked(1000.0 + 291)
    record = door.audit.last("lockout")
    assert record is not None and record.details is not None and record.details["resumed"]
    assert seconds_since(record) < 5  # the next restart measures from the resumed record


def test_a_lockout_from_before_a_reboot_counts_by_the_wall_clock(tmp_path: Path) -> None:
    """Another boot's record: the wall clock decides. 100 s ago: 200 s are left. 10 minutes
    ago: over, nothing resumed. Dated in the future (the clock was set back since): the whole
    lockout again rather than none."""
    cases = [(time.time() - 100, (199.0, 201.0)), (time.time() - 600, None),
             (time.time() + 86400, (299.0, 300.0))]
    for i, (ts, expected) in enumerate(cases):
        door = _door(tmp_path, f"reboot{i}")
        _write_lockout(door.audit, ts, boot_id="another boot", boottime_s=5.0)
        left = resume_lockout(door.audit, door.door, door.outbox, now=50.0)
        if expected is None:
            assert left == 0.0 and not door.door.lockout.locked(50.0)
            assert len(door.audit.query(event="lockout")) == 1
        else:
            assert expected[0] < left <= expected[1], (i, left)
            assert door.door.lockout.locked(50.0 + expected[0] - 1)


def test_a_lockout_turned_off_in_the_config_is_not_resumed(tmp_path: Path) -> None:
    cfg = parse_config(yaml.safe_dump({"action": {"type": "log"}, **liveness_off(),
                                       "lockout": {"enabled": False}}))
    door = Doorway(cfg, tmp_path / "off.db")
    _write_lockout(door.audit, time.time())
    assert resume_lockout(door.audit, door.door, door.outbox, now=1.0) == 0.0
