"""Review records over MQTT (``review.mqtt``), against a real mosquitto on 127.0.0.1.

The door publishes each review record, crop included, on ``PREFIX/review/DOOR`` (QoS 1, never
retained); the household's persistent session (``twinlock doors add NAME --mqtt``) keeps them at
the broker while it is off, and ``twinlock doors sync NAME`` drains them into the activity store
through the same strict reader as the SSH and folder path. Real faces (LFW chips, the clip),
real SQLite, the real daemon."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from test_mqtt import (
    HA_PASSWORD,
    HA_USER,
    PREFIX,
    Broker,
    Observer,
    brokers,  # noqa: F401  (fixture)
    clip_config,
    clip_door,  # noqa: F401  (fixture)
    free_port,
    mqtt_section,
)

from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.config.schema import MqttConfig, ReviewConfig
from twinlock.daemon.door.events import AttemptEnd, AuditSink, Outbox, Record
from twinlock.daemon.door.mqtt import MqttLink
from twinlock.daemon.door.review_sink import ReviewSink
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.errors import ConfigError
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.review.format import (
    CROPS_DIR,
    ReviewRecord,
    encode_mqtt,
    encode_record,
    new_record_id,
    parse_record,
)
from twinlock.daemon.review.store import encode_crop
from twinlock.daemon.storage.audit import AuditLog
from twinlock.daemon.storage.guard import GuardedAudit
from twinlock.trainer.cli import main

DOOR = "front"
DIM = 128
TOPIC = f"{PREFIX}/review/{DOOR}"


@pytest.fixture(scope="module")
def chips(lfw_dir: Path) -> list[np.ndarray]:
    """Real faces as the tower's chips (150 px RGB)."""
    out = []
    for person in sorted(p.name for p in lfw_dir.iterdir() if p.is_dir())[:3]:
        path = min((lfw_dir / person).glob("*.jpg"))
        out.append(cv2.resize(load_image(path)[60:190, 60:190], (150, 150)))
    return out


@pytest.fixture()
def broker(tmp_path: Path, brokers: list[Broker]) -> Broker:  # noqa: F811
    started = Broker(tmp_path / "broker", free_port()).start()
    brokers.append(started)
    return started


def household(tmp_path: Path, port: int, *extra: str) -> list[str]:
    """``doors add front --mqtt ...``'s arguments: the household's own broker account."""
    password = tmp_path / "household-password"
    password.write_text(HA_PASSWORD + "\n")
    password.chmod(0o600)
    return ["doors", "add", DOOR, "--mqtt", f"127.0.0.1:{port}", "--mqtt-prefix", PREFIX,
            "--mqtt-user", HA_USER, "--mqtt-password-file", str(password),
            "--activity-db", str(tmp_path / "activity.db"), *extra]


def sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["doors", "sync", DOOR, "--activity-db", str(tmp_path / "activity.db"),
                 "--timeout", "120"]) == 0
    return capsys.readouterr().out


def stored(tmp_path: Path) -> list[tuple[Any, ...]]:
    """Every attempt row of the activity store, crops and embeddings included, in id order."""
    with sqlite3.connect(tmp_path / "activity.db") as conn:
        return conn.execute("SELECT id, door, time, decision, audit_id, bundle_id, model_id, "
                            "resident, score, reason, dim, embedding, crop FROM attempts "
                            "ORDER BY id").fetchall()


class DoorSide:
    """The door's outbox as the daemon builds it with review.mqtt: the audit log, the review
    sink (its folder, and the MQTT link), the MQTT link; records as the door machine makes
    them, with real chips."""

    def __init__(self, tmp_path: Path, port: int, review_mqtt: bool = True) -> None:
        cfg = MqttConfig.model_validate(mqtt_section(port, tmp_path))
        self.link = MqttLink(cfg)
        self.link.start()
        self.audit = AuditLog(tmp_path / "audit.db")
        self.folder = tmp_path / "review"
        review = ReviewConfig(enabled=True, dir=self.folder, door=DOOR, mqtt=review_mqtt)
        self.review = ReviewSink.from_config(review, lambda: ("b-20261206", "m-4a2d"),
                                             publish=self.link.review)
        self.outbox = Outbox([AuditSink(GuardedAudit(self.audit)), self.review, self.link])

    def attempt(self, chip: np.ndarray, seed: int, decision: str = "deny") -> None:
        embedding = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        if decision == "unlock":
            record = Record("unlock", "unlock", "verified in 2 of 2 frames", "alice", 0.97,
                            attempt=AttemptEnd("unlock", chip, embedding))
        else:
            record = Record("deny", "deny", "face left without a match", None, 0.12,
                            attempt=AttemptEnd("deny", chip, embedding))
        assert self.outbox.write(record)

    def folder_records(self) -> list[ReviewRecord]:
        return [parse_record(line, door=DOOR)
                for day in sorted(self.folder.glob("*.jsonl"))
                for line in day.read_bytes().splitlines(keepends=True)]

    def close(self) -> None:
        self.link.close()
        self.audit.close()


def published(observer: Observer, count: int) -> list[bytes]:
    """Wait (generously) until the observer has seen ``count`` review messages; them."""
    assert observer.wait_for(lambda: len(observer.on(TOPIC)) >= count, timeout=60), \
        f"{len(observer.on(TOPIC))} of {count} review messages reached the broker"
    return observer.on(TOPIC)


def raw_publish(port: int, payload: bytes, retain: bool = False) -> None:
    """Someone else with write access to the broker publishes on the door's review topic."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"intruder-{retain}")
    client.username_pw_set(HA_USER, HA_PASSWORD)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    info = client.publish(TOPIC, payload, qos=1, retain=retain)
    info.wait_for_publish(timeout=30)
    assert info.is_published()
    client.disconnect()
    client.loop_stop()


def forged(chip: np.ndarray, door: str = DOOR, **changes: Any) -> tuple[ReviewRecord, bytes]:
    """A well-formed record (and its crop) as a door would send it."""
    crop = encode_crop(chip)
    when = datetime.now(UTC)
    record = ReviewRecord(id=new_record_id(door, when), door=door, time=when, decision="deny",
                          bundle_id="b-1", model_id="m-4a2d", audit_id=7, score=0.2,
                          embedding=np.ones(DIM, np.float32),
                          crop_sha256=hashlib.sha256(crop).hexdigest())
    return dataclasses.replace(record, **changes), crop


# -- the door and the household ------------------------------------------------------------------


def test_records_queued_while_the_household_is_off_are_synced_once(
        tmp_path: Path, broker: Broker, chips: list[np.ndarray],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(household(tmp_path, broker.port)) == 0  # opens the household's session
    assert "now keeps front's review records" in capsys.readouterr().out
    observer = Observer(broker.port).start()
    observer.wait_connected()
    door = DoorSide(tmp_path, broker.port)
    try:
        # the household machine is off (not connected) while the door publishes
        for i in range(3):
            door.attempt(chips[i], i, "unlock" if i == 0 else "deny")
        messages = published(observer, 3)
        assert all(not retained for _, t, _, retained in observer.messages if t == TOPIC)
        assert "3 new attempts" in sync(tmp_path, capsys)
        # the same records as the door's folder, crops byte for byte
        rows = stored(tmp_path)
        folder = door.folder_records()
        assert [r[0] for r in rows] == sorted(r.id for r in folder)
        for row in rows:
            assert row[12] == (door.folder / CROPS_DIR / f"{row[0]}.jpg").read_bytes()
        assert {r[4] for r in rows} == {r.audit_id for r in folder} and None not in {r[4]
                                                                                     for r in rows}
        # syncing again adds nothing; a re-delivered message is a no-op
        assert "0 new attempts" in sync(tmp_path, capsys)
        raw_publish(broker.port, messages[1])
        out = sync(tmp_path, capsys)
        assert "0 new attempts (1 read" in out and "refused" not in out
        assert stored(tmp_path) == rows
        # the household online again: what the door does next comes with the next sync
        door.attempt(chips[0], 10)
        published(observer, 5)
        assert "1 new attempts" in sync(tmp_path, capsys)
        assert len(stored(tmp_path)) == 4
    finally:
        door.close()
        observer.stop()


def test_crafted_foreign_and_retained_records_are_refused_and_nothing_is_written(
        tmp_path: Path, broker: Broker, chips: list[np.ndarray],
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(household(tmp_path, broker.port)) == 0
    capsys.readouterr()
    # a record from another door, on this door's topic
    other, crop = forged(chips[0], door="back")
    raw_publish(broker.port, encode_mqtt(encode_record(other), crop))
    # crafted: a crop that is not the record's, a truncated JPEG, a record with extra fields
    record, crop = forged(chips[1])
    raw_publish(broker.port, encode_mqtt(encode_record(record), encode_crop(chips[2])))
    record, crop = forged(chips[1])
    bad = dataclasses.replace(record, crop_sha256=hashlib.sha256(crop[:-200]).hexdigest())
    raw_publish(broker.port, encode_mqtt(encode_record(bad), crop[:-200]))
    line = json.loads(encode_record(forged(chips[1])[0]))
    raw_publish(broker.port, json.dumps(line | {"path": "../../etc/passwd"}).encode() + b"\n")
    raw_publish(broker.port, b"\x00" * 300_000)
    # a well-formed record of this door, but retained: a stale or planted copy
    record, crop = forged(chips[2])
    raw_publish(broker.port, encode_mqtt(encode_record(record), crop), retain=True)
    out = sync(tmp_path, capsys)
    # the retained one twice: the copy queued for the household's session keeps its flag
    # (retain as published), and the broker's stored copy comes with the subscription
    assert "0 new attempts" in out and "7 refused" in out, out
    assert out.count("a retained message, ignored") == 2
    assert "from door 'back', not from 'front'" in out
    assert "crop does not match the record's sha256" in out
    assert "not a whole JPEG" in out
    assert "unknown field(s) 'path'" in out
    assert "over the" in out and "byte limit" in out
    assert stored(tmp_path) == []
    # the stored copy comes with every new subscription, and is ignored every time; the
    # refused messages were taken off the queue (acknowledged), nothing else comes again
    out = sync(tmp_path, capsys)
    assert "0 new attempts (0 read" in out and "1 refused" in out, out
    assert "a retained message, ignored" in out and stored(tmp_path) == []


def test_with_review_mqtt_off_nothing_goes_to_the_broker(
        tmp_path: Path, broker: Broker, chips: list[np.ndarray]) -> None:
    observer = Observer(broker.port).start()
    observer.wait_connected()
    door = DoorSide(tmp_path, broker.port, review_mqtt=False)
    try:
        door.attempt(chips[0], 1)
        door.attempt(chips[1], 2, "unlock")
        # the events of both attempts reached the broker; no review record did
        assert observer.wait_for(lambda: len(observer.events()) >= 2, timeout=60)
        assert len(door.folder_records()) == 2  # the folder has them
    finally:
        door.close()
        observer.stop()
    assert not [t for _, t, _, _ in observer.messages if "/review" in t]
    assert not [m for m in observer.messages if m[2].startswith(b'{"v":1,"id":')]


def test_review_mqtt_needs_review_and_mqtt_on() -> None:
    with pytest.raises(ConfigError, match="review.mqtt is true but mqtt.enabled is false"):
        parse_config("review: {enabled: true, mqtt: true}\n")
    with pytest.raises(ConfigError, match="it needs review.enabled"):
        parse_config("review: {mqtt: true}\nmqtt: {enabled: true}\n")
    assert parse_config("review: {enabled: true, mqtt: true}\nmqtt: {enabled: true}\n"
                        ).review.mqtt
    assert ReviewConfig().mqtt is False  # off by default: pictures of people


def test_a_message_is_the_records_line_then_its_crop(chips: list[np.ndarray]) -> None:
    from twinlock.daemon.review.format import ReviewRecordError, parse_mqtt

    record, crop = forged(chips[0])
    message = encode_mqtt(encode_record(record), crop)
    line, text = message.split(b"\n", 1)
    assert json.loads(line)["crop_sha256"] == record.crop_sha256
    assert base64.b64decode(text) == crop
    parsed, parsed_crop = parse_mqtt(message, door=DOOR)
    assert parsed.id == record.id and parsed_crop == crop
    assert parsed.embedding is not None and np.array_equal(parsed.embedding, record.embedding)
    with pytest.raises(ReviewRecordError, match="names a crop the message does not hold"):
        parse_mqtt(encode_record(record), door=DOOR)
    with pytest.raises(ReviewRecordError, match="the crop is not base64"):
        parse_mqtt(encode_record(record) + b"!!", door=DOOR)


# -- the real daemon on the clip -----------------------------------------------------------------


@pytest.mark.data
def test_the_clip_door_publishes_and_the_household_syncs_what_its_folder_holds(
        clip_door: dict[str, Any], tmp_path: Path, broker: Broker,  # noqa: F811
        mock_pins: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(household(tmp_path, broker.port)) == 0
    capsys.readouterr()
    review = {"enabled": True, "dir": str(tmp_path / "review"), "door": DOOR, "mqtt": True}
    config = clip_config(clip_door, mqtt=mqtt_section(broker.port, tmp_path), review=review)
    daemon = Daemon(config)
    assert daemon.run() == 0  # the household is off the whole time
    folder = sorted(r.id for day in sorted((tmp_path / "review").glob("*.jsonl"))
                    for r in (parse_record(line, door=DOOR)
                              for line in day.read_bytes().splitlines(keepends=True)))
    assert folder, "the clip ended no attempt"
    out = sync(tmp_path, capsys)
    assert f"{len(folder)} new attempts" in out and "refused" not in out, out
    rows = stored(tmp_path)
    assert [r[0] for r in rows] == folder
    assert any(r[3] == "unlock" and r[7] == "lin" and r[12] for r in rows)
    assert "0 new attempts" in sync(tmp_path, capsys)
    assert stored(tmp_path) == rows

