"""Review records for the attempts that ended without one before: a remote unlock (a record of
its own kind, with no face) and every refusal during a lockout (each with its face, though the
audit log keeps one record per lockout); and ``review:`` turned on by a reload (SIGHUP's path).

The door's rules on a fake clock with the daemon's own ``carry_out``, a real SQLite audit log,
the real review writer and real face chips (LFW); the reload through the real daemon on the
clip."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from daemon_helpers import Doorway, scored, verdict
from test_review_door import DOOR, audit_records, door, read_review  # noqa: F401  (fixture)
from test_review_mqtt import chips  # noqa: F401  (fixture: real faces as the tower's chips)

from twinlock.daemon.config.schema import Config, MqttConfig
from twinlock.daemon.door.events import Event
from twinlock.daemon.door.machine import REVIEWED_REFUSALS_PER_LOCKOUT, Unlock
from twinlock.daemon.door.mqtt import MqttLink
from twinlock.daemon.door.review_sink import ReviewSink
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.recognition.analyser import Scored
from twinlock.daemon.review.format import CROPS_DIR
from twinlock.daemon.review.store import ReviewWriter

IDS = ("b-20261206", "m-4a2d")


def doorway(tmp_path: Path, **lockout: Any) -> Doorway:
    """A door (liveness off) whose outbox is the audit log, then the review store."""
    cfg = Config.model_validate({"liveness": {"mode": "off"}, "lockout": lockout,
                                 "action": {"type": "log"}})
    way = Doorway(cfg, tmp_path / "audit.db")
    writer = ReviewWriter(tmp_path / "review", DOOR, retention_days=30, max_bytes=10**8)
    way.outbox.sinks.append(ReviewSink(writer, lambda: IDS))
    return way


def face(user: str | None, n: int, chip: np.ndarray) -> Scored:
    """A scored face with a real chip and an embedding unique to ``n`` (a new picture: one pixel
    differs, as in any two camera frames)."""
    crop = chip.copy()
    crop[0, 0] = (n % 256, n // 256, 7)
    return dataclasses.replace(scored(verdict(user), n), crop=crop,
                               embedding=np.full(4, n + 1, np.float32))


def test_a_remote_unlock_leaves_a_review_record_of_its_own_kind_with_no_face(
        tmp_path: Path) -> None:
    way = doorway(tmp_path)
    commands = way.door.remote(100.0, "mqtt twinlock/door/lock/set via ha@broker (TLS)", True)
    from twinlock.daemon.door.carry import carry_out

    carry_out(commands, way.door, way.outbox, way.action)
    assert [c.user for c in commands if isinstance(c, Unlock)] == ["remote"]
    (record,) = read_review(tmp_path / "review", dim=4)
    (audited,) = [r for r in audit_records(tmp_path) if r.event == "unlock"]
    assert record.decision == "remote" and record.audit_id == audited.id
    assert record.embedding is None and record.crop_sha256 is None
    assert not (tmp_path / "review" / CROPS_DIR).exists() \
        or not any((tmp_path / "review" / CROPS_DIR).iterdir())
    assert (record.bundle_id, record.model_id) == IDS


def test_each_refusal_during_a_lockout_keeps_its_face_the_audit_log_one_record(
        tmp_path: Path, chips: list[np.ndarray]) -> None:  # noqa: F811
    way = doorway(tmp_path, max_failures=1, max_failed_frames=100_000, lockout_seconds=600.0)
    now, n = 10.0, 0
    # a stranger's attempt fails and locks the door out
    way.step(now, 0, face(None, n, chips[0]))
    way.step(now + 10.0)
    assert [r.event for r in audit_records(tmp_path)] == ["deny", "lockout"]
    # a resident keeps trying during the lockout: refused again and again (2 frames each)
    refusals = REVIEWED_REFUSALS_PER_LOCKOUT + 5
    now += 20.0
    for _ in range(refusals):
        for _ in range(2):
            n, now = n + 1, now + 0.1
            way.step(now, n, face("alice", n, chips[1]))
    events = [r.event for r in audit_records(tmp_path)]
    assert events == ["deny", "lockout", "deny"], "the lockout's refusals are audited once"
    records = read_review(tmp_path / "review", dim=4)
    lockout = [r for r in records if r.decision == "lockout"]
    # each refusal up to the cap keeps its own face; only the first is tied to an audit record
    assert len(lockout) == REVIEWED_REFUSALS_PER_LOCKOUT
    assert all(r.crop_sha256 is not None and r.resident == "alice" for r in lockout)
    assert len({r.embedding.tobytes() for r in lockout if r.embedding is not None}) \
        == len(lockout)
    audit_ids = [r.audit_id for r in sorted(lockout, key=lambda r: r.id)]
    assert audit_ids[0] == audit_records(tmp_path)[2].id and set(audit_ids[1:]) == {None}
    # when the lockout ends, one summary record counts every refusal
    way.step(now + 700.0)
    summary = audit_records(tmp_path)[-1]
    assert summary.details is not None and summary.details["refused"] == refusals


def test_mqtt_publishes_no_event_for_a_refusal_only_the_review_store_keeps(
        tmp_path: Path, chips: list[np.ndarray]) -> None:  # noqa: F811
    way = doorway(tmp_path, max_failures=1, max_failed_frames=100_000, lockout_seconds=600.0)
    link = MqttLink(MqttConfig(enabled=True, port=1, discovery=False))  # never started
    way.step(10.0, 0, face(None, 0, chips[0]))
    way.step(20.0)
    commands = []
    for n in range(1, 5):
        commands += way.door.step(30.0 + n / 10, n, [face("alice", n, chips[1])])
    first, second = [c for c in commands if getattr(c, "event", None) == "deny"]
    assert first.audited and not second.audited
    link.handle(Event.of(second))
    assert len(link.queue) == 0
    link.handle(Event.of(first))
    assert len(link.queue) > 0


@pytest.mark.data
def test_review_turned_on_by_a_reload_starts_recording(
        door: Path, tmp_path: Path, mock_pins: Any) -> None:  # noqa: F811
    cfg = yaml.safe_load(door.read_text())
    cfg["review"]["enabled"] = False
    door.write_text(yaml.safe_dump(cfg))
    daemon = Daemon(door)
    assert daemon.review is None
    cfg["review"]["enabled"] = True
    door.write_text(yaml.safe_dump(cfg))
    daemon.reload_requested.set()  # what SIGHUP does; the loop reloads before its first frame
    assert daemon.run() == 0
    assert isinstance(daemon.review, ReviewSink) and daemon.review in daemon.outbox.sinks
    events = [r.event for r in audit_records(tmp_path / "state")]
    assert "reload" in events and "unlock" in events
    records = read_review(tmp_path / "review", None)  # type: ignore[arg-type]
    assert any(r.decision == "unlock" and r.resident == "lin" for r in records)
