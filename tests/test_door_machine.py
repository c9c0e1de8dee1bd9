"""The door's decisions as a pure state machine, on a fake clock: what ``DoorMachine.step``
returns for a given run of observations, and how the daemon's ``carry_out`` turns that into
records and relay pulses (a real SQLite audit log, gpiozero's MockFactory pin)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from daemon_helpers import scored, verdict
from gpiozero.pins.mock import MockFactory

from twinlock.daemon.config.schema import Config
from twinlock.daemon.door.actions import GpioAction
from twinlock.daemon.door.assemble import door_settings
from twinlock.daemon.door.carry import carry_out
from twinlock.daemon.door.events import AuditSink, Event, EventKind, Outbox
from twinlock.daemon.door.liveness import LivenessSettings
from twinlock.daemon.door.machine import (
    Command,
    DoorMachine,
    DoorSettings,
    Record,
    SaveSnapshot,
    Unlock,
)
from twinlock.daemon.faces import quality as q
from twinlock.daemon.recognition.analyser import Rejected
from twinlock.daemon.storage.audit import AuditLog
from twinlock.daemon.storage.guard import GuardedAudit, UnavailableAudit

PIN = 17


def settings(**changes: object) -> DoorSettings:
    """The shipped defaults (from the config schema), recognition alone, with ``changes``."""
    base = door_settings(Config())
    base = dataclasses.replace(base, liveness=LivenessSettings(mode="off"))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def unlocks(commands: list[Command]) -> list[Unlock]:
    return [c for c in commands if isinstance(c, Unlock)]


def records(commands: list[Command], event: str | None = None) -> list[Record]:
    return [c for c in commands if isinstance(c, Record) and event in (None, c.event)]


class Clock:
    """Frames ``1/fps`` apart, each a new picture (distinct evidence)."""

    def __init__(self, door: DoorMachine, start: float = 1000.0, fps: float = 10.0) -> None:
        self.door, self.now, self.fps, self.frame = door, start, fps, 0

    def show(self, *users: str | None) -> list[Command]:
        """One frame per entry: that user verified (None: a face that verified nobody)."""
        out: list[Command] = []
        for user in users:
            out += self.door.step(self.now, self.frame, [scored(verdict(user), self.frame)])
            self.now += 1 / self.fps
            self.frame += 1
        return out

    def wait(self, seconds: float) -> list[Command]:
        """Nobody in view for ``seconds`` (the camera still delivers empty frames)."""
        self.now += seconds
        return self.door.step(self.now, self.frame)


# -- k of n within t ---------------------------------------------------------------------------

def test_k_of_n_frames_must_agree_and_the_unlock_carries_its_record() -> None:
    door = DoorMachine(settings(frames_required=3, frame_window=5, window_seconds=3.0))
    clock = Clock(door)
    assert unlocks(clock.show("ana", None, "ana")) == []  # 2 of 3
    (unlock,) = unlocks(clock.show(None, "ana"))  # 3 of the last 5
    assert unlock.user == "ana"
    assert (unlock.record.event, unlock.record.user, unlock.record.frame) == ("unlock", "ana", 4)
    assert unlock.record.reason == "verified in 3 of 5 frames"
    assert unlock.record.details is not None and unlock.record.details["verified_frames"] == 3


def test_votes_for_different_residents_never_add_up() -> None:
    door = DoorMachine(settings(frames_required=3, frame_window=4))
    assert unlocks(Clock(door).show("ana", "bob", "ana", "bob")) == []
    two = DoorMachine(settings(frames_required=2, frame_window=4))
    assert [u.user for u in unlocks(Clock(two).show("ana", "bob", "ana"))] == ["ana"]


def test_votes_older_than_the_window_expire() -> None:
    door = DoorMachine(settings(frames_required=2, frame_window=5, window_seconds=1.0))
    clock = Clock(door, fps=0.5)  # one frame every 2 s: never two within 1 s
    assert unlocks(clock.show("ana", "ana", "ana", "ana")) == []


def test_a_repeated_picture_is_no_second_vote() -> None:
    door = DoorMachine(settings(frames_required=2, frame_window=3))
    same = scored(verdict("ana"), 7)
    assert unlocks(door.step(0.0, 0, [same]) + door.step(0.1, 1, [same])) == []
    assert door.window.repeats == 1
    assert unlocks(door.step(0.2, 2, [scored(verdict("ana"), 8)]))  # a new picture: in


# -- cooldown ----------------------------------------------------------------------------------

def test_cooldown_ignores_the_rest_of_the_visit_then_a_new_visit_needs_k_frames() -> None:
    door = DoorMachine(settings(frames_required=2, frame_window=2, cooldown_seconds=5.0))
    clock = Clock(door)
    assert len(unlocks(clock.show("ana", "ana"))) == 1
    assert clock.show(*["ana"] * 40) == []  # 4 s of the same visit: nothing, not even a record
    clock.wait(1.5)
    assert unlocks(clock.show("ana")) == []  # after the cooldown one frame is not enough
    assert len(unlocks(clock.show("ana"))) == 1


def test_an_unlock_that_could_not_be_recorded_leaves_no_cooldown() -> None:
    door = DoorMachine(settings(frames_required=2, frame_window=2, cooldown_seconds=30.0))
    clock = Clock(door)
    (unlock,) = unlocks(clock.show("ana", "ana"))
    door.unlock_not_recorded(unlock.user)
    assert "audit log not writable" in door.last_decision
    assert len(unlocks(clock.show("ana", "ana"))) == 1  # tried again at once, not in 30 s


# -- attempts and lockout ----------------------------------------------------------------------

def test_failed_attempts_lock_out_then_the_lockout_expires() -> None:
    door = DoorMachine(settings(max_failures=2, lockout_window_seconds=60.0,
                                lockout_seconds=100.0, window_seconds=1.0))
    clock = Clock(door)
    clock.show(None, None, None)
    first = clock.wait(2.0)  # the face left: a failed attempt, with a snapshot
    assert [r.reason for r in records(first, "deny")] == ["face left without a match"]
    assert any(isinstance(c, SaveSnapshot) for c in first)
    clock.show(None, None)
    second = clock.wait(2.0)
    (lockout,) = records(second, "lockout")
    assert lockout.reason == "2 failed attempts within 60 s"
    refused = clock.show("ana", "ana", "ana", "ana")
    assert unlocks(refused) == []
    # one audited record for the first refusal, the rest counted; the second keeps its face
    # for the review store alone (not audited)
    assert [(r.reason, r.audited) for r in records(refused)] == [
        ("locked out after repeated failures", True),
        ("locked out after repeated failures", False)]
    summary = clock.wait(100.0)  # the lockout is over: one summary of what it refused
    assert [r.details for r in records(summary)] == [{"refused": 2, "users": {"ana": 2}}]
    assert len(unlocks(clock.show("ana", "ana"))) == 1


def test_a_gapless_stream_of_strangers_locks_out_by_frames() -> None:
    door = DoorMachine(settings(max_failed_frames=30, lockout_window_seconds=60.0))
    commands = Clock(door, fps=15.0).show(*[None] * 30)
    (lockout,) = records(commands, "lockout")
    assert lockout.reason == "30 unrecognised face-frames within 60 s"
    assert door.lockout.locked(1000.0 + 30 / 15.0)


def test_attempts_are_cut_after_attempt_seconds_and_each_cut_counts() -> None:
    door = DoorMachine(settings(attempt_seconds=5.0, max_failures=3, max_failed_frames=None,
                                lockout_window_seconds=60.0))
    commands = Clock(door, fps=2.0).show(*[None] * 40)  # 20 s of one face, never a match
    cuts = [r for r in records(commands, "deny")
            if r.reason == "not recognised within the attempt time"]
    assert len(cuts) == 3
    assert len(records(commands, "lockout")) == 1


def test_quality_rejections_alone_are_a_quality_record_not_a_failure() -> None:
    door = DoorMachine(settings(max_failures=1, window_seconds=1.0))
    for i in range(3):
        assert door.step(10.0 + i / 10, i, [Rejected(None, q.TOO_DARK)]) == []
    (record,) = door.step(12.0)
    assert (record.event, record.reason) == ("quality", "face unusable: " + q.describe(q.TOO_DARK))
    assert not door.lockout.locked(12.0)


# -- reload and stop ---------------------------------------------------------------------------

def test_a_reload_keeps_a_running_lockout_and_a_cut_attempt_is_no_failure() -> None:
    door = DoorMachine(settings(max_failures=1, window_seconds=1.0, lockout_seconds=100.0))
    clock = Clock(door)
    clock.show(None)
    assert records(clock.wait(2.0), "lockout")
    reloaded = DoorMachine(door.settings, door.lockout)  # what Daemon.reload does
    assert unlocks(Clock(reloaded, start=clock.now).show("ana", "ana")) == []
    fresh = DoorMachine(settings(max_failures=1, window_seconds=1.0))
    cut = Clock(fresh)
    cut.show(None, None)
    (record,) = records(fresh.finish("reloaded during the attempt"))
    assert record.reason == "reloaded during the attempt"
    assert not fresh.lockout.locked(cut.now)  # max_failures 1, yet no lockout


# -- carrying it out: record first, then the relay ---------------------------------------------

def _relay(mock_pins: MockFactory) -> GpioAction:
    return GpioAction(PIN, True, 0.05, pin_factory=mock_pins)


def _wait_off(action: GpioAction) -> None:
    deadline = time.monotonic() + 10.0
    while action.busy and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_relay_is_off_at_start_pulses_after_the_record_and_is_off_at_stop(
        tmp_path: Path, mock_pins: MockFactory) -> None:
    pin = mock_pins.pin(PIN)
    action = _relay(mock_pins)
    assert pin.state == 0  # claimed inactive
    door = DoorMachine(settings(frames_required=2, frame_window=2))
    audit = AuditLog(tmp_path / "audit.db")
    seen: list[tuple[int, int]] = []  # (records committed, pin level) when the pin rose

    class Watch:  # the next sink after the audit log hears the unlock before the relay moves
        def handle(self, event: Event) -> bool:
            seen.append((len(audit.query()), pin.state))
            return True

    outbox = Outbox([AuditSink(GuardedAudit(audit)), Watch()])
    carry_out(Clock(door).show("ana", "ana"), door, outbox, action)
    _wait_off(action)
    (unlock,) = audit.query(event="unlock")
    assert unlock.user == "ana"
    assert seen == [(1, 0)], "the record was committed while the relay was still off"
    levels = [state for _, state in pin.states]
    assert levels[-2:] == [True, False] or levels[-2:] == [1, 0]  # one pulse, then off
    action.close()
    assert pin.state == 0
    audit.close()


def test_no_record_means_no_pulse(tmp_path: Path, mock_pins: MockFactory) -> None:
    pin = mock_pins.pin(PIN)
    action = _relay(mock_pins)
    door = DoorMachine(settings(frames_required=2, frame_window=2))
    broken = GuardedAudit(UnavailableAudit(tmp_path / "audit.db", "disk full"))
    carry_out(Clock(door).show("ana", "ana"), door, Outbox([AuditSink(broken)]), action)
    _wait_off(action)
    assert all(not state for _, state in pin.states)
    assert broken.failures == 1 and door.last_decision.startswith("refused ana")
    action.close()


@pytest.mark.parametrize("mode", ["motion", "blink"])
def test_with_liveness_on_recognition_alone_does_not_open(mode: str) -> None:
    door = DoorMachine(settings(liveness=LivenessSettings(mode=mode)))  # type: ignore[arg-type]
    assert door.needs_liveness
    assert unlocks(Clock(door).show(*["ana"] * 20)) == []  # no mesh: no liveness evidence


def test_each_record_says_its_kind_without_reading_the_reason() -> None:
    """MQTT, the status line and the review store take the kind from the record: a liveness
    failure is said by the machine (it used to be guessed from the reason's first word)."""
    live = DoorMachine(settings(liveness=LivenessSettings(mode="motion", timeout_seconds=1.0)))
    clock = Clock(live)
    out = clock.show(*["ana"] * 30)  # recognised, no mesh: liveness never passes
    failed = records(out, "deny")
    assert failed and all(r.kind is EventKind.LIVENESS_FAILURE and r.reason.startswith("liveness")
                          for r in failed)
    plain = DoorMachine(settings())
    out = Clock(plain).show(*[None] * 5) + plain.finish()
    assert {r.kind for r in records(out, "deny")} == {EventKind.DENIED}
    out = Clock(plain, start=5000.0).show("ana", "ana")
    assert unlocks(out)[0].record.kind is EventKind.UNLOCK


# -- the attempt's end, for the review store ---------------------------------------------------

def test_each_ended_attempt_carries_its_decision_and_best_scoring_face() -> None:
    """The record that ends an attempt hands the review store the attempt's best-scoring face
    (its crop and embedding, not the last frame's) and its decision; other records carry none."""
    door = DoorMachine(settings(max_failures=2, max_failed_frames=None, window_seconds=1.0,
                                lockout_window_seconds=60.0, lockout_seconds=30.0))
    faces = [scored(verdict(None, s), i) for i, s in enumerate((0.2, 0.6, 0.3))]
    out: list[Command] = []
    for i, face in enumerate(faces):
        out += door.step(10.0 + i / 10, i, [face])
    out += door.step(12.0)  # the face left: a refusal
    (deny,) = records(out, "deny")
    assert deny.attempt is not None and deny.attempt.decision == "deny"
    assert deny.attempt.crop is faces[1].crop and deny.attempt.embedding is faces[1].embedding
    # a visitor who never scored (quality only) is an attempt too, with no face
    out = [c for i in range(2) for c in door.step(13.0 + i / 10, i, [Rejected(None, q.TOO_DARK)])]
    (quality,) = records(out + door.step(15.0), "quality")
    assert quality.attempt is not None and quality.attempt.crop is None
    # the second failed attempt locks out: the lockout record is no attempt of its own; a
    # resident refused during it is one, with decision "lockout"
    out = Clock(door, start=16.0).show(None) + door.step(18.0)
    assert records(out, "lockout") and records(out, "lockout")[0].attempt is None
    clock = Clock(door, start=19.0)
    (refusal,) = records(clock.show("amelie", "amelie", "amelie"), "deny")
    assert refusal.attempt is not None and refusal.attempt.decision == "lockout"
    assert refusal.attempt.embedding is not None
    # an unlock carries its best face, decision "unlock"
    door = DoorMachine(settings())
    (unlock,) = unlocks(Clock(door).show("amelie", "amelie"))
    assert unlock.record.attempt is not None and unlock.record.attempt.decision == "unlock"
    assert unlock.record.attempt.crop is not None
