"""The lockout holds against a gapless stream of strangers, and the resident waits it out.

Fast tests drive the door's state machine with the daemon's own ``carry_out`` (real audit log in
SQLite, the log action) on a fake clock;
one test replays 250 different LFW strangers' faces, then the enrolled resident, through the real
daemon.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import yaml
from daemon_helpers import (
    CLIP,
    MIRANDA_FRAMES,
    Doorway,
    enrol_miranda,
    liveness_off,
    scored,
    write_config,
)

from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.config.schema import Config
from twinlock.daemon.door.rules import Lockout
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.recognition.verify import FrameVerdict
from twinlock.daemon.storage.audit import AuditLog

FPS = 15.0
STRANGER = FrameVerdict(None, "lin", 0.2, 0.0)
RESIDENT = FrameVerdict("lin", "lin", 0.9, 1.0)


def door(tmp_path: Path, **lockout: object) -> Doorway:
    cfg = parse_config(yaml.safe_dump({"action": {"type": "log", "cooldown_seconds": 5},
                                       "lockout": lockout, **liveness_off()}))
    return Doorway(cfg, tmp_path / "audit.db")


def feed(d: Doorway, start: float, frames: int, verdict: FrameVerdict, fps: float = FPS) -> float:
    """``frames`` evaluated faces, each a different picture, ``1/fps`` apart and without gaps;
    returns the next time."""
    for i in range(frames):
        now = start + i / fps
        d.step(now, i, scored(verdict, int(now * 1000)))
    return start + frames / fps


def test_failed_frames_without_gaps_lock_and_thin_ones_do_not() -> None:
    lockout = Lockout(True, 5, 60.0, 300.0, max_failed_frames=150)
    started = [i for i in range(400) if lockout.failed_frame(1000.0 + i / FPS)]
    assert started == [149] and lockout.locked(1000.0 + 400 / FPS)
    assert "150 unrecognised face-frames within 60 s" in lockout.reason
    thin = Lockout(True, 5, 60.0, 300.0, max_failed_frames=150)
    assert not any(thin.failed_frame(1000.0 + i * 0.5) for i in range(2000))  # 2 a second


def test_a_stream_of_strangers_locks_out_the_resident_until_it_expires(tmp_path: Path) -> None:
    d = door(tmp_path)
    action, audit = d.action, d.audit
    t = feed(d, 1000.0, 600, STRANGER)  # 600 strangers in 40 s, one after another
    t = feed(d, t, 30, RESIDENT)
    assert action.calls == [], "the resident opened the door right after the strangers"
    lockouts = audit.query(event="lockout")
    assert len(lockouts) == 1 and "unrecognised face-frames" in lockouts[0].reason
    assert any("locked out" in r.reason for r in audit.query(event="deny"))
    feed(d, d.door.lockout.until + 0.1, 30, RESIDENT)  # after the lockout: in
    assert len(action.calls) == 1


def test_attempt_length_is_a_config_key_and_each_cut_counts(tmp_path: Path) -> None:
    """One face in view without a match for 60 s, at one frame a second: attempts are cut every
    ``attempt_seconds`` and five cuts within the window lock (the frame budget never fills)."""
    d = door(tmp_path, attempt_seconds=5, window_seconds=30, max_failures=5,
             max_failed_frames=100_000)
    audit = d.audit
    feed(d, 1000.0, 60, STRANGER, fps=1.0)
    denies = [r for r in audit.query(event="deny")
              if r.reason == "not recognised within the attempt time"]
    assert len(denies) >= 5
    lockouts = audit.query(event="lockout")
    assert len(lockouts) == 1 and "5 failed attempts within 30 s" in lockouts[0].reason


def test_the_defaults_keep_the_attackers_rate_and_let_a_visitor_wait() -> None:
    """benchmarks/lockout.py chose them: the rate a stream of faces can keep up without a
    lockout (frames / window) and the failed attempts a minute are those of the former 150
    frames or 5 attempts in 60 s; the window is three times as long."""
    lk = Config().lockout
    assert (lk.max_failed_frames, lk.max_failures, lk.window_seconds, lk.attempt_seconds) == \
        (450, 15, 180.0, 15.0)
    assert lk.max_failed_frames / lk.window_seconds == 150 / 60
    assert lk.max_failures / lk.window_seconds == 5 / 60


@pytest.mark.parametrize("visit_seconds, resident_gets_in", [(25, True), (31, False)])
def test_a_visitor_may_wait_25_s_and_the_resident_coming_home_still_gets_in(
        tmp_path: Path, visit_seconds: int, resident_gets_in: bool) -> None:
    """An unenrolled visitor waits at the door (a face in every frame at 15 fps), leaves, and the
    resident comes home 5 s later. With the former 150 frames in 60 s a visit of 10 s locked the
    door for 5 minutes; with the defaults a visit of 25 s does not, one of 31 s does."""
    d = door(tmp_path)
    t = feed(d, 1000.0, int(visit_seconds * FPS), STRANGER)
    t += 5.0
    d.step(t)  # the visitor has gone
    feed(d, t, 30, RESIDENT)
    assert bool(d.action.calls) is resident_gets_in, d.audit.query(event="lockout")
    assert bool(d.audit.query(event="lockout")) is not resident_gets_in


def test_a_thin_stream_at_the_budgets_rate_never_locks_and_a_faster_one_does(
        tmp_path: Path) -> None:
    """The lockout's ceiling on an attacker: faces that verify nobody at 95 % of
    max_failed_frames / window_seconds a second, for 15 minutes, never lock (attempts are cut
    every attempt_seconds, 15 of them within the window do not come); at 105 % they lock."""
    lk = Config().lockout
    for share, locks in ((0.95, False), (1.05, True)):
        d = door(tmp_path / str(share))
        rate = share * lk.max_failed_frames / lk.window_seconds
        for i in range(int(15 * 60 * rate)):
            d.step(1000.0 + i / rate, i, scored(STRANGER, i))
        assert bool(d.audit.query(event="lockout")) is locks, share


@pytest.mark.data
@pytest.mark.slow
def test_replayed_strangers_without_gaps_lock_out_the_resident(
        tmp_path: Path, door_model: Path, examples_dir: Path, lfw_dir: Path) -> None:
    """500 different people's faces back to back (more than the default budget of 450 failed
    frames), then the enrolled resident: no unlock. The same replay with the lockout off lets
    the resident in (the refusal is the lockout's)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir())[:500]
    for i, person in enumerate(people):
        (frames / f"{i:04d}.jpg").symlink_to(min(person.glob("*.jpg")))
    video = cv2.VideoCapture(str(examples_dir / CLIP))
    index = 0
    while True:
        ok, image = video.read()
        if not ok:
            break
        if index in MIRANDA_FRAMES and index % 3 == 0:
            cv2.imwrite(str(frames / f"{1000 + index:04d}.png"), image)
        index += 1
    video.release()
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")

    def replay(name: str, **lockout: object) -> AuditLog:
        state = tmp_path / name
        config = write_config(tmp_path / f"{name}.yaml", state, door_model,
                              tmp_path / "gallery.json", str(frames), camera={"realtime": False},
                              action={"type": "log"}, lockout=lockout, **liveness_off())
        assert Daemon(config).run() == 0
        return AuditLog(state / "audit.db")

    with replay("locked") as audit:
        lockouts = audit.query(event="lockout")
        unlocks = audit.query(event="unlock")
        refused = [r for r in audit.query(event="deny") if "locked out" in r.reason]
    assert lockouts and "unrecognised face-frames" in lockouts[0].reason
    assert not unlocks, [(r.user, r.frame) for r in unlocks]
    assert refused and all(r.user == "lin" for r in refused)
    with replay("control", enabled=False) as audit:
        assert [r.user for r in audit.query(event="unlock")][:1] == ["lin"]


def test_a_resident_waiting_out_a_lockout_is_one_record_with_a_count(tmp_path: Path) -> None:
    d = door(tmp_path)
    action, audit = d.action, d.audit
    t = feed(d, 1000.0, 500, STRANGER)  # locks
    feed(d, t, 90, RESIDENT)  # 6 s of the resident at the door: one refusal per k frames
    refused = 90 // d.door.window.frames_required
    refusals = [r for r in audit.query(event="deny") if "locked out" in r.reason]
    assert len(refusals) == 1, [r.reason for r in refusals]
    assert not any("refused during the lockout" in r.reason for r in audit.query(event="deny"))
    d.step(d.door.lockout.until + 1.0)  # the lockout is over: one summary
    summary = [r for r in audit.query(event="deny") if "refused during the lockout" in r.reason]
    assert len(summary) == 1 and summary[0].details["refused"] == refused
    assert summary[0].reason == f"{refused} unlock(s) refused during the lockout (lin x{refused})"
    assert action.calls == []


def test_an_attempt_cut_by_a_reload_or_stop_is_no_failure(tmp_path: Path) -> None:
    d = door(tmp_path, max_failures=2)
    audit = d.audit
    t = 1000.0
    for _ in range(3):
        t = feed(d, t, 2, STRANGER) + 0.1
        d.finish()  # what a reload (and a stop) does with the attempt in progress
    assert len([r for r in audit.query(event="deny")]) == 3, "each attempt is still recorded"
    assert not d.door.lockout.locked(t) and not audit.query(event="lockout")
