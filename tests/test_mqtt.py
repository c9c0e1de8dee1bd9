"""MQTT and Home Assistant against a real mosquitto broker on 127.0.0.1.

Each test starts its own broker (apt's ``mosquitto``, installed by scripts/setup.sh) on a free
port with a password file, once with TLS and a client certificate made here, and stops it. The
door is the real daemon replaying the real clip through the shipped model; a subscriber plays
Home Assistant's part.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from daemon_helpers import CLIP, enrol_miranda, write_config

from twinlock.daemon.config.loader import load_config
from twinlock.daemon.config.schema import Config, MqttConfig
from twinlock.daemon.door.events import EventKind, Record
from twinlock.daemon.door.mqtt import (
    EVENT_TYPES,
    FLOOD_QUIET_S,
    CommandCheck,
    CommandInbox,
    Message,
    MqttLink,
    OutQueue,
    RemoteCommand,
    discovery_messages,
)
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.errors import ConfigError
from twinlock.daemon.storage.audit import AuditLog

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(),
                                reason="mosquitto not installed (scripts/setup.sh installs it)")
PREFIX = "twinlock/test_door"
USER, PASSWORD = "door", "s3cret-door"
HA_USER, HA_PASSWORD = "homeassistant", "s3cret-ha"

# Home Assistant's MQTT discovery schema keys (abbreviations aside) for the platforms we use,
# from its MQTT lock, event, sensor and image documentation; and what each requires.
COMMON_KEYS = {"availability", "availability_mode", "availability_template",
               "availability_topic", "device", "enabled_by_default", "encoding",
               "entity_category", "entity_picture", "icon", "json_attributes_template",
               "json_attributes_topic", "name", "object_id", "default_entity_id",
               "payload_available", "payload_not_available", "platform", "qos", "unique_id"}
SCHEMA = {
    "lock": (COMMON_KEYS | {"code_format", "command_template", "command_topic", "optimistic",
                            "payload_lock", "payload_open", "payload_reset", "payload_unlock",
                            "retain", "state_jammed", "state_locked", "state_locking",
                             "state_open", "state_opening", "state_topic", "state_unlocked",
                            "state_unlocking", "value_template"}, {"command_topic"}),
    "event": (COMMON_KEYS | {"device_class", "event_types", "state_topic", "value_template"},
              {"event_types", "state_topic"}),
    "sensor": (COMMON_KEYS | {"device_class", "expire_after", "force_update",
                              "last_reset_value_template", "options", "state_class",
                              "state_topic", "suggested_display_precision",
                              "unit_of_measurement", "value_template"}, {"state_topic"}),
    "image": (COMMON_KEYS | {"content_type", "image_encoding", "image_topic", "url_template",
                             "url_topic"}, set()),
}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer",
               "model", "model_id", "name", "serial_number", "suggested_area", "sw_version",
               "via_device"}


# ------------------------------------------------------------------------------------------
# broker, certificates, observer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def cert(subject: str, key: Any, issuer: x509.Name | None, issuer_key: Any,
             ca: bool, san: list[x509.GeneralName] | None) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("twinlock test CA", ca_key, None, ca_key, True, None)
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    out = {}
    for role, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                  x509.DNSName("localhost")]), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        c = cert(f"twinlock test {role}", key, ca_cert.subject, ca_key, False, san)
        (folder / f"{role}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[role] = (folder / f"{role}.pem", key_pem(key, folder / f"{role}.key"))
    return Certs(folder / "ca.pem", *out["server"], *out["client"])


class Broker:
    """A mosquitto process on 127.0.0.1:port with a password file (and TLS when given certs)."""

    def __init__(self, folder: Path, port: int, certs: Certs | None = None,
                 require_certificate: bool = False, persistent: bool = False) -> None:
        self.folder, self.port, self.certs = folder, port, certs
        folder.mkdir(parents=True, exist_ok=True)
        passwd = folder / "passwd"
        for i, (user, password) in enumerate(((USER, PASSWORD), (HA_USER, HA_PASSWORD))):
            subprocess.run([PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd), user,
                            password], check=True, capture_output=True)
        # persistent: retained messages survive a restart (saved at a clean stop); the log
        # says who subscribed to what (log_type all), so tests can ask the broker
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous false",
                 f"password_file {passwd}", "user root",
                 f"persistence {'true' if persistent else 'false'}",
                 f"persistence_location {folder}/", "log_type all",
                 f"log_dest file {folder / 'mosquitto.log'}"]
        if certs is not None:
            lines += [f"cafile {certs.ca}", f"certfile {certs.server_cert}",
                      f"keyfile {certs.server_key}",
                      f"require_certificate {'true' if require_certificate else 'false'}"]
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def subscriptions(self, client_id: str) -> list[str]:
        """The topic filters ``client_id`` subscribed to, as the broker's log says: a line
        ``<client id> <qos> <topic filter>`` for each subscription it granted."""
        found = []
        for line in (self.folder / "mosquitto.log").read_text(errors="replace").splitlines():
            parts = line.split(": ", 1)[-1].split(" ")
            if len(parts) == 3 and parts[0] == client_id and parts[1].isdigit():
                found.append(parts[2])
        return found

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def brokers():
    started: list[Broker] = []
    yield started
    for broker in started:
        broker.stop()


@dataclass
class Observer:
    """Home Assistant's side: subscribes to everything and keeps every message in order."""

    port: int
    certs: Certs | None = None
    user: str | None = HA_USER
    password: str | None = HA_PASSWORD
    messages: list[tuple[float, str, bytes, bool]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    refused: list[str] = field(default_factory=list)

    def start(self) -> Observer:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"observer-{id(self)}")
        if self.user:
            client.username_pw_set(self.user, self.password)
        if self.certs is not None:
            client.tls_set(ca_certs=str(self.certs.ca), certfile=str(self.certs.client_cert),
                           keyfile=str(self.certs.client_key))
        client.reconnect_delay_set(1, 1)

        def on_connect(c: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
            if reason.is_failure:
                self.refused.append(str(reason))
                return
            c.subscribe([(f"{PREFIX}/#", 1), ("homeassistant/#", 1)])
            self.connected.set()

        client.on_connect = on_connect
        client.on_disconnect = lambda *a: self.connected.clear()
        client.on_message = lambda c, u, m: self.messages.append(
            (time.monotonic(), m.topic, bytes(m.payload), bool(m.retain)))
        client.connect_async("127.0.0.1", self.port, 30)
        client.loop_start()
        self.client = client
        return self

    def wait_connected(self, timeout: float = 10) -> None:
        assert self.connected.wait(timeout), f"observer not connected: {self.refused}"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[bytes]:
        return [payload for _, t, payload, _ in self.messages if t == topic]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.on(f"{PREFIX}/event")]

    def wait_for(self, predicate: Any, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False


def mqtt_section(port: int, tmp_path: Path, certs: Certs | None = None,
                 **extra: Any) -> dict[str, Any]:
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    section: dict[str, Any] = {
        "enabled": True, "host": "127.0.0.1", "port": port, "username": USER,
        "password_file": str(password_file), "client_id": "test_door", "topic_prefix": PREFIX,
        "keepalive_s": 5, "reconnect_min_s": 1, "reconnect_max_s": 2,
    }
    if certs is not None:
        section |= {"ca_file": str(certs.ca), "client_cert": str(certs.client_cert),
                    "client_key": str(certs.client_key)}
    return section | extra


class TimedDaemon(Daemon):
    """The real daemon, noting when each frame was handled (test instrumentation only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.seen: list[float] = []
        super().__init__(*args, **kwargs)

    def process(self, frame: Any) -> Any:
        self.seen.append(time.monotonic())
        return super().process(frame)


def start_daemon(config: Path) -> tuple[TimedDaemon, threading.Thread]:
    daemon = TimedDaemon(config)
    thread = threading.Thread(target=daemon.run, name="door", daemon=True)
    thread.start()
    return daemon, thread


@contextlib.contextmanager
def door_running(config: Path, observer: Observer) -> Iterator[TimedDaemon]:
    """The daemon in a thread until the block ends; then it is stopped, and so is observer."""
    daemon, thread = start_daemon(config)
    try:
        yield daemon
    finally:
        daemon.stop()
        thread.join(30)
        observer.stop()


def audit_rows(config: Path) -> list[dict[str, Any]]:
    cfg = load_config(config)
    with AuditLog(cfg.audit.db) as log:
        return [r.to_dict() for r in log.query()]


def in_order(events: list[dict[str, Any]]) -> list[int]:
    """The event sequence numbers, QoS 1 redeliveries removed; asserts they only go up."""
    seqs: list[int] = []
    for e in events:
        if seqs and e["seq"] == seqs[-1]:
            continue  # an at-least-once duplicate, right after the original
        assert not seqs or e["seq"] > seqs[-1], f"out of order: {seqs[-3:]} then {e['seq']}"
        seqs.append(e["seq"])
    return seqs


@pytest.fixture()
def clip_door(tmp_path: Path, door_model: Path, examples_dir: Path) -> dict[str, Any]:
    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    return {"path": tmp_path / "config.yaml", "state": tmp_path / "state", "model": door_model,
            "gallery": gallery, "source": str(examples_dir / CLIP)}


#: what these tests are about is MQTT, not liveness (which has its own tests)
NO_LIVENESS: dict[str, Any] = ({"liveness": {"mode": "off"}}
                               if "liveness" in Config.model_fields else {})


def clip_config(door: dict[str, Any], **overrides: Any) -> Path:
    return write_config(door["path"], door["state"], door["model"], door["gallery"],
                        door["source"], **NO_LIVENESS, **overrides)


# ------------------------------------------------------------------------------------------
# no broker needed


def test_queue_drops_the_oldest_and_counts() -> None:
    q = OutQueue(3)
    for i in range(5):
        q.put(Message("t", str(i).encode()))
    assert q.dropped == 2
    assert [q.get(0).payload for _ in range(3)] == [b"2", b"3", b"4"]
    assert q.get(0) is None


def test_off_by_default_and_remote_unlock_needs_tls_and_auth(tmp_path: Path) -> None:
    assert MqttConfig().enabled is False and MqttConfig().remote_unlock is False
    assert MqttConfig().snapshots is False
    (tmp_path / "pw").write_text("x")
    for section in ({"remote_unlock": True},
                    {"remote_unlock": True, "username": "u", "password_file": "pw"},
                    {"remote_unlock": True, "ca_file": "ca.pem"}):
        text = "mqtt:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in section.items())
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match="remote unlock needs TLS"):
            load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("mqtt:\n  password: hunter2\n")
    with pytest.raises(ConfigError, match="unknown key"):  # never the password itself
        load_config(tmp_path / "c.yaml")


def test_world_readable_password_file_is_refused(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    cfg = MqttConfig(enabled=True, username="u", password_file=pw)
    with pytest.raises(ConfigError, match="readable by everyone"):
        MqttLink.from_config(cfg)


def test_a_missing_broker_never_blocks_the_caller(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    link = MqttLink.from_config(MqttConfig(enabled=True, host="127.0.0.1", port=port,
                                           queue_size=50))
    assert link is not None
    try:
        start = time.perf_counter()
        for i in range(1000):
            link.event("denied", reason="test", score=0.1 * (i % 10))
        per_call = (time.perf_counter() - start) / 1000
        assert per_call < 0.002, f"{per_call * 1e3:.2f} ms per event"
        assert len(link.queue) == 50 and link.queue.dropped > 1000  # events and states
    finally:
        start = time.perf_counter()
        link.close()
        assert time.perf_counter() - start < 5


# ------------------------------------------------------------------------------------------
# with a real broker


def check_discovery(observer: Observer, snapshots: bool) -> None:
    configs = {t: json.loads(p) for _, t, p, retained in observer.messages
               if t.startswith("homeassistant/") and t.endswith("/config")}
    components = sorted(t.split("/")[1] for t in configs)
    assert components == sorted(["lock", "event", "sensor", "sensor", "sensor",
                                 *(["image"] if snapshots else [])])
    for topic, config in configs.items():
        component = topic.split("/")[1]
        allowed, required = SCHEMA[component]
        assert set(config) <= allowed, f"{topic}: keys HA does not know: {set(config) - allowed}"
        assert required <= set(config), f"{topic}: missing {required - set(config)}"
        assert set(config["device"]) <= DEVICE_KEYS and config["device"]["identifiers"]
        # the version has one home, pyproject.toml, read from the installed distribution
        assert config["device"]["sw_version"] == importlib.metadata.version("twinlock")
        assert config["availability_topic"] == f"{PREFIX}/availability"
        assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    lock = next(c for t, c in configs.items() if t.startswith("homeassistant/lock/"))
    assert lock["command_topic"] == f"{PREFIX}/lock/set"
    assert lock["state_topic"] == f"{PREFIX}/lock/state"
    event = next(c for t, c in configs.items() if t.startswith("homeassistant/event/"))
    assert set(event["event_types"]) == set(EVENT_TYPES)
    retained = {t for _, t, _, r in observer.messages if r}
    assert set(configs) <= retained | {t for t in configs}  # published with retain


def test_discovery_config_matches_the_schema_offline() -> None:
    """The same schema check on the messages themselves (no broker)."""
    for snapshots in (False, True):
        messages = discovery_messages(MqttConfig(enabled=True, topic_prefix=PREFIX,
                                                 snapshots=snapshots))
        fake = Observer(0)
        fake.messages = [(0.0, t, json.dumps(c).encode(), True) for t, c in messages.items()]
        check_discovery(fake, snapshots)


@pytest.mark.data
@pytest.mark.slow
def test_replayed_unlock_arrives_as_event_and_lock_state(
        clip_door: dict[str, Any], tmp_path: Path, brokers: list[Broker], mock_pins: Any) -> None:
    port = free_port()
    brokers.append(Broker(tmp_path / "broker", port).start())
    observer = Observer(port).start()
    observer.wait_connected()
    config = clip_config(clip_door, mqtt=mqtt_section(port, tmp_path, snapshots=True))
    _daemon, thread = start_daemon(config)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert observer.wait_for(lambda: b"offline" in observer.on(f"{PREFIX}/availability"))
    observer.stop()

    check_discovery(observer, snapshots=True)
    events = observer.events()
    unlocks = [e for e in events if e["event_type"] == "unlock"]
    assert unlocks and unlocks[0]["user"] == "lin" and 0 < unlocks[0]["score"] <= 1
    lock_states = observer.on(f"{PREFIX}/lock/state")
    assert b"UNLOCKED" in lock_states
    first_open = lock_states.index(b"UNLOCKED")
    assert lock_states[0] == b"LOCKED" and b"LOCKED" in lock_states[first_open:]
    states = [json.loads(p) for p in observer.on(f"{PREFIX}/state")]
    assert any(s["last_user"] == "lin" for s in states)
    assert any(s["fps"] > 0 for s in states)
    # availability: online while running, offline (retained) at the end
    availability = observer.on(f"{PREFIX}/availability")
    assert availability[0] == b"online" and availability[-1] == b"offline"
    # every audit record was published, in order (the log is the record of truth)
    seqs = in_order(events)
    rows = audit_rows(config)
    assert len(seqs) == len(rows) and seqs == list(range(1, len(rows) + 1))
    assert [e["event_type"] for e in events][:1] == ["start"] and events[-1]["event_type"] == "stop"
    assert sum(r["event"] == "unlock" for r in rows) == len(unlocks)
    # a snapshot for each denied attempt (none for a quality rejection: no face to show)
    assert len(observer.on(f"{PREFIX}/snapshot")) == sum(1 for r in rows if r["event"] == "deny")


@pytest.mark.data
def test_snapshot_of_a_denied_attempt(tmp_path: Path, examples_dir: Path, door_model: Path,
                                      brokers: list[Broker], mock_pins: Any) -> None:
    """A stranger (not enrolled) for a second, then nobody: one denial, one JPEG of it."""
    port = free_port()
    brokers.append(Broker(tmp_path / "broker", port).start())
    observer = Observer(port).start()
    observer.wait_connected()
    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    frames = tmp_path / "frames"
    frames.mkdir()
    stranger = cv2.imread(str(examples_dir / "biden.jpg"))
    for i in range(40):
        image = stranger if i < 10 else np.full_like(stranger, 128)
        cv2.imwrite(str(frames / f"{i:03d}.png"), image)
    config = write_config(tmp_path / "config.yaml", tmp_path / "state", door_model, gallery,
                          str(frames / "*.png"),
                          camera={"type": "replay", "source": str(frames / "*.png"), "fps": 10,
                                  "realtime": True},
                          mqtt=mqtt_section(port, tmp_path, snapshots=True), **NO_LIVENESS)
    _daemon, thread = start_daemon(config)
    thread.join(60)
    assert observer.wait_for(lambda: b"offline" in observer.on(f"{PREFIX}/availability"))
    observer.stop()
    rows = audit_rows(config)
    denials = [r for r in rows if r["event"] == "deny"]
    assert len(denials) == 1 and denials[0]["user"] is None
    (jpeg,) = observer.on(f"{PREFIX}/snapshot")
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    # the frame as the camera delivered it: shrunk at capture to camera.max_side, aspect kept
    assert max(picture.shape[:2]) == Config().camera.max_side
    assert abs(picture.shape[1] / picture.shape[0] - stranger.shape[1] / stranger.shape[0]) < 0.01
    assert abs(float(picture.mean()) - float(stranger.mean())) < 5  # the stranger, not grey
    denied = [e for e in observer.events() if e["event_type"] == "denied"]
    # the closest resident and the score stay in the audit log (mqtt.denial_details is off)
    assert len(denied) == 1 and denied[0]["reason"] == "not verified"
    assert not {"closest_user", "score", "user"} & set(denied[0])
    assert denials[0]["details"]["closest_user"] == "lin" and denials[0]["best_score"] > 0


@pytest.mark.data
@pytest.mark.slow
def test_broker_down_at_start_then_up(clip_door: dict[str, Any], tmp_path: Path,
                                      brokers: list[Broker], mock_pins: Any) -> None:
    port = free_port()
    config = clip_config(clip_door, mqtt=mqtt_section(port, tmp_path))
    daemon, thread = start_daemon(config)
    time.sleep(3.0)  # the door runs with no broker at all
    frames_before = len(daemon.seen)
    brokers.append(Broker(tmp_path / "broker", port).start())
    observer = Observer(port).start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert frames_before > 5, "the door waited for the broker"
    assert observer.wait_for(lambda: b"offline" in observer.on(f"{PREFIX}/availability"))
    observer.stop()
    assert b"online" in observer.on(f"{PREFIX}/availability")
    # what happened before the broker came up was queued and published after, in order
    seqs = in_order(observer.events())
    rows = audit_rows(config)
    assert seqs and seqs[-1] == len(rows)
    assert observer.events()[-1]["event_type"] == "stop"


@pytest.mark.data
@pytest.mark.slow
def test_broker_killed_mid_run_then_restarted(clip_door: dict[str, Any], tmp_path: Path,
                                              brokers: list[Broker], mock_pins: Any) -> None:
    port = free_port()
    broker = Broker(tmp_path / "broker", port).start()
    brokers.append(broker)
    observer = Observer(port).start()
    observer.wait_connected()
    config = clip_config(clip_door, mqtt=mqtt_section(port, tmp_path, reconnect_min_s=2,
                                                      reconnect_max_s=2))
    daemon, thread = start_daemon(config)
    time.sleep(3.0)
    broker.kill()
    killed = time.monotonic()
    time.sleep(2.5)
    broker.start()
    restarted = time.monotonic()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert observer.wait_for(lambda: b"offline" in observer.on(f"{PREFIX}/availability"))
    observer.stop()

    # the door kept deciding: frames were handled while the broker was away, with no stall
    during = [t for t in daemon.seen if killed < t < restarted]
    assert len(during) > 5  # a few frames a second at least, on a slow machine too
    gaps = [b - a for a, b in zip(daemon.seen, daemon.seen[1:], strict=False)]
    assert max(gaps) < 1.5, f"the frame loop stalled for {max(gaps):.1f} s"
    # the audit log is complete: one start, one stop, decisions in between
    rows = audit_rows(config)
    assert rows[0]["event"] == "start" and rows[-1]["event"] == "stop"
    # after the reconnect, events arrive in order and without gaps, up to the stop
    events = observer.events()
    seqs = in_order(events)
    after = [t for t, topic, _, _ in observer.messages if topic == f"{PREFIX}/event"
             and t > restarted]
    assert after, "nothing published after the broker came back"
    tail = [json.loads(p)["seq"] for t, topic, p, _ in observer.messages
            if topic == f"{PREFIX}/event" and t > restarted]
    tail = sorted(set(tail))
    assert tail == list(range(tail[0], len(rows) + 1))
    assert seqs[-1] == len(rows)
    assert observer.on(f"{PREFIX}/availability").count(b"online") >= 2  # announced again


def still_door(tmp_path: Path, examples_dir: Path, door_model: Path, mqtt: dict[str, Any],
               **overrides: Any) -> Path:
    """A door watching an empty grey scene: no face, so only a remote unlock can open it (and
    no stranger's frames run into a lockout while the test runs)."""
    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.full((480, 640, 3), 128, np.uint8))
    return write_config(tmp_path / "config.yaml", tmp_path / "state", door_model, gallery,
                        str(frames), camera={"type": "replay", "source": str(frames),
                                             "loop": True, "fps": 10, "realtime": True},
                        mqtt=mqtt, **NO_LIVENESS, **overrides)


def fresh_command(command: str = "UNLOCK", age_s: float = 0.0, **fields: Any) -> bytes:
    """What Home Assistant's lock entity sends (discovery's command_template): the command, the
    time it was sent and a new nonce; ``age_s`` back-dates it, ``fields`` override."""
    payload: dict[str, Any] = {"command": command, "time": time.time() - age_s,
                               "nonce": os.urandom(8).hex()}
    return json.dumps({k: v for k, v in (payload | fields).items() if v is not None}).encode()


def press_unlock(port: int, certs: Certs | None, user: str | None, password: str | None,
                 payload: bytes | None = None, retain: bool = False) -> str:
    """Publish a command (a fresh UNLOCK unless ``payload``) to the lock's command topic as
    Home Assistant would; the CONNACK."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ha-{time.time_ns()}")
    if user:
        client.username_pw_set(user, password)
    if certs is not None:
        client.tls_set(ca_certs=str(certs.ca), certfile=str(certs.client_cert),
                       keyfile=str(certs.client_key))
    result: dict[str, str] = {}
    done = threading.Event()

    def on_connect(c: Any, u: Any, f: Any, reason: Any, p: Any) -> None:
        result["connack"] = str(reason)
        if not reason.is_failure:
            c.publish(f"{PREFIX}/lock/set", fresh_command() if payload is None else payload,
                      qos=1, retain=retain).wait_for_publish(5)
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, 10)
    client.loop_start()
    done.wait(10)
    client.disconnect()
    client.loop_stop()
    return result.get("connack", "no answer")


@pytest.mark.data
def test_with_remote_unlock_off_the_door_does_not_subscribe(
        tmp_path: Path, examples_dir: Path, door_model: Path, brokers: list[Broker],
        mock_pins: Any) -> None:
    """Off (the default): no subscription, so neither a retained UNLOCK waiting at the broker
    nor one published later reaches the door (the broker's log lists what it subscribed to)."""
    port = free_port()
    broker = Broker(tmp_path / "broker", port).start()
    brokers.append(broker)
    assert press_unlock(port, None, HA_USER, HA_PASSWORD, b"UNLOCK", retain=True) == "Success"
    observer = Observer(port).start()
    config = still_door(tmp_path, examples_dir, door_model, mqtt_section(port, tmp_path))
    with door_running(config, observer) as daemon:
        assert observer.wait_for(lambda: b"online" in observer.on(f"{PREFIX}/availability"))
        assert press_unlock(port, None, HA_USER, HA_PASSWORD) == "Success"
        assert press_unlock(port, None, HA_USER, HA_PASSWORD, b"UNLOCK") == "Success"
        time.sleep(1.0)
        assert daemon.mqtt is not None and daemon.mqtt.unsolicited == 0
    # the broker's log does list subscriptions (Home Assistant's), and none of the door's
    assert f"{PREFIX}/#" in broker.subscriptions(f"observer-{id(observer)}")
    assert broker.subscriptions("test_door") == []
    rows = audit_rows(config)
    assert not [r for r in rows if r["event"] in ("remote", "unlock")]
    assert mock_pins.pin(17).state is False and all(not s for _, s in mock_pins.pin(17).states)


@pytest.mark.data
def test_remote_unlock_over_tls_accepted_audited_refused_without_auth_and_in_lockout(
        tmp_path: Path, examples_dir: Path, door_model: Path, brokers: list[Broker],
        mock_pins: Any) -> None:
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    brokers.append(Broker(tmp_path / "broker", port, certs, require_certificate=True).start())
    observer = Observer(port, certs).start()
    config = still_door(tmp_path, examples_dir, door_model,
                        mqtt_section(port, tmp_path, certs, remote_unlock=True))
    pin = mock_pins.pin(17)
    with door_running(config, observer) as daemon:
        assert observer.wait_for(lambda: b"online" in observer.on(f"{PREFIX}/availability"))
        # without authentication the broker refuses the publisher: nothing reaches the door
        assert press_unlock(port, certs, None, None) != "Success"
        assert press_unlock(port, certs, HA_USER, "wrong") != "Success"
        time.sleep(1.0)
        assert not any(state for _, state in pin.states)
        # authenticated over TLS: the door opens, and says so
        assert press_unlock(port, certs, HA_USER, HA_PASSWORD) == "Success"
        assert observer.wait_for(lambda: b"UNLOCKED" in observer.on(f"{PREFIX}/lock/state"))
        assert observer.wait_for(lambda: observer.on(f"{PREFIX}/lock/state")[-1] == b"LOCKED")
        assert any(state for _, state in pin.states)
        # during a lockout a remote unlock is refused
        daemon.door.lockout.until = time.monotonic() + 60
        daemon.door.cooldown_until = 0.0
        assert press_unlock(port, certs, HA_USER, HA_PASSWORD) == "Success"
        assert observer.wait_for(lambda: any(e["event_type"] == "remote_unlock_refused"
                                             for e in observer.events()))
    rows = audit_rows(config)
    unlocks = [r for r in rows if r["event"] == "unlock"]
    assert len(unlocks) == 1 and unlocks[0]["reason"] == "remote unlock"
    source = unlocks[0]["details"]["source"]
    assert "lock/set" in source and "TLS" in source and USER in source
    refused = [r for r in rows if r["event"] == "remote"]
    assert len(refused) == 1 and "locked out" in refused[0]["reason"]
    highs = sum(1 for _, state in pin.states if state)
    assert highs == 1 and pin.state is False


@pytest.mark.data
def test_a_killed_door_reads_offline_through_its_retained_last_will(
        tmp_path: Path, examples_dir: Path, door_model: Path, brokers: list[Broker]) -> None:
    """kill -9 the daemon: nobody says goodbye, the broker publishes the will, and a client that
    subscribes later still reads "offline" (retained)."""
    port = free_port()
    brokers.append(Broker(tmp_path / "broker", port).start())
    observer = Observer(port).start()
    config = still_door(tmp_path, examples_dir, door_model, mqtt_section(port, tmp_path))
    env = dict(os.environ) | {"GPIOZERO_PIN_FACTORY": "mock"}
    proc = subprocess.Popen([sys.executable, "-m", "twinlock.daemon.cli", "run", "-c",
                             str(config)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert observer.wait_for(lambda: b"online" in observer.on(f"{PREFIX}/availability"),
                                 timeout=60)
        proc.kill()
        proc.wait(10)
        assert observer.wait_for(lambda: observer.on(f"{PREFIX}/availability")[-1] == b"offline")
    finally:
        if proc.poll() is None:
            proc.kill()
        observer.stop()
    later = Observer(port).start()
    try:
        assert later.wait_for(lambda: later.on(f"{PREFIX}/availability") == [b"offline"])
        assert any(r for _, t, _, r in later.messages if t == f"{PREFIX}/availability")
    finally:
        later.stop()


# ------------------------------------------------------------------------------------------
# issue 20: retained, stale and replayed commands, floods, and what denials publish


def test_a_command_must_be_fresh_json_with_a_time_and_a_new_nonce() -> None:
    now = [1_765_000_000.0]
    check = CommandCheck(30.0, clock=lambda: now[0])

    def judge(payload: Any, retained: bool = False) -> str | None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return check.judge(data, retained)[2]

    ok = {"command": "UNLOCK", "time": now[0] - 2.5, "nonce": "3f9c2a7e51d04b8a"}
    assert judge(ok) is None
    assert "replayed" in (judge(ok) or "")
    assert "retained" in (judge(ok | {"nonce": "another-nonce-1"}, retained=True) or "")
    assert "stale" in (judge(ok | {"time": now[0] - 31, "nonce": "another-nonce-2"}) or "")
    assert "ahead" in (judge(ok | {"time": now[0] + 31, "nonce": "another-nonce-3"}) or "")
    for bad in (b"UNLOCK", b"\xff\xfe", b"[1]", b"{" + b" " * 600 + b"}",
                {"command": "UNLOCK", "time": now[0]},
                {"command": "UNLOCK", "time": now[0], "nonce": "short"},
                {"command": "UNLOCK", "time": "now", "nonce": "another-nonce-4"},
                {"command": "UNLOCK", "time": True, "nonce": "another-nonce-5"},
                {"command": "UNLOCK", "time": float("nan"), "nonce": "another-nonce-6"},
                {"command": "SHOUT", "time": now[0], "nonce": "another-nonce-7"}):
        assert judge(bad) is not None, bad
    assert judge(ok | {"command": "open", "nonce": "another-nonce-8"}) is None
    # a nonce is remembered for its window only; by then a replay is stale anyway
    now[0] += 60
    assert "stale" in (judge(ok) or "")
    assert judge(ok | {"time": now[0]}) is None  # same nonce, new time: a new command


def test_home_assistants_command_template_makes_fresh_commands() -> None:
    """Discovery's command_template, rendered as Home Assistant does (a Jinja sandbox, with
    its now() and as_timestamp()), gives commands the door accepts, each with its own nonce."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    env.globals |= {"now": lambda: dt.datetime.now(dt.UTC),
                    "as_timestamp": lambda d: d.timestamp()}
    cfg = MqttConfig(enabled=True, topic_prefix=PREFIX, remote_unlock=True, ca_file="ca.pem",
                     username="u", password_file="pw")
    lock = next(c for t, c in discovery_messages(cfg).items() if "/lock/" in t)
    assert lock["retain"] is False
    template = env.from_string(lock["command_template"])
    check = CommandCheck(cfg.command_max_age_s)
    payloads = [template.render(value=lock["payload_unlock"]).encode() for _ in range(20)]
    assert [check.judge(p, retained=False)[2] for p in payloads] == [None] * 20
    assert len({json.loads(p)["nonce"] for p in payloads}) == 20
    assert "command_template" not in next(
        c for t, c in discovery_messages(MqttConfig(enabled=True)).items() if "/lock/" in t)


def test_the_inbox_admits_a_few_commands_a_minute_and_sums_up_a_flood() -> None:
    now = [100.0]
    inbox = CommandInbox(16, 10, f"{PREFIX}/lock/set", clock=lambda: now[0])
    admitted = 0
    for _ in range(100_000):
        if inbox.admit():
            admitted += 1
            inbox.put(RemoteCommand("UNLOCK", "test"))
    assert admitted == 10 and inbox.dropped == 99_990
    taken = inbox.take()
    assert len(taken) == 10 and all(isinstance(i, RemoteCommand) for i in taken)
    now[0] += FLOOD_QUIET_S
    (summary,) = inbox.take()
    assert isinstance(summary, Record) and summary.details is not None
    assert summary.event == "remote" and summary.details["dropped"] == 99_990
    assert inbox.take() == []
    now[0] += 60  # a minute later the rate is there again
    assert inbox.admit()
    inbox.put(RemoteCommand("UNLOCK", "test"))
    (left,) = inbox.take(final=True)  # the daemon stops: counted, never run
    assert isinstance(left, Record) and left.details and left.details["dropped"] == 1


def test_denials_are_published_without_score_or_closest_user_unless_asked() -> None:
    reason = "liveness: no head motion (parallax 0.012 < 0.03 in 0/2 frames) in 5 s"
    record = Record("deny", "deny", reason, best_score=0.93, details={"closest_user": "lin"},
                    kind=EventKind.LIVENESS_FAILURE)  # the door machine says it: no parsing
    for details, expected in ((False, None), (True, "lin")):
        link = MqttLink(MqttConfig(enabled=True, denial_details=details))
        link.record(record)
        event = json.loads(link.queue.get(0).payload)  # type: ignore[union-attr, arg-type]
        assert event["event_type"] == "liveness_failure"
        assert event.get("closest_user") == expected and ("score" in event) == details
        assert ("parallax" in json.dumps(event)) == details
        state = json.loads(link.queue.get(0).payload)  # type: ignore[union-attr, arg-type]
        assert state["last_score"] == (0.93 if details else None)


def flood(port: int, certs: Certs | None, payloads: Iterator[bytes], qos: int = 0) -> int:
    """Publish every payload to the command topic as fast as paho goes; how many."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{time.time_ns()}")
    client.username_pw_set(HA_USER, HA_PASSWORD)
    if certs is not None:
        client.tls_set(ca_certs=str(certs.ca), certfile=str(certs.client_cert),
                       keyfile=str(certs.client_key))
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    sent = 0
    try:
        for payload in payloads:
            while client.publish(f"{PREFIX}/lock/set", payload, qos=qos).rc != 0:
                time.sleep(0.001)
            sent += 1
        time.sleep(0.5)
    finally:
        client.disconnect()
        client.loop_stop()
    return sent


@pytest.mark.data
@pytest.mark.parametrize("payload", ["plain", "fresh"])
def test_a_retained_unlock_opens_neither_at_start_nor_at_a_reconnect(
        payload: str, tmp_path: Path, examples_dir: Path, door_model: Path,
        brokers: list[Broker], mock_pins: Any) -> None:
    """A retained UNLOCK waits at the broker before the door starts: the broker hands it over at
    the subscription, and again after the broker restarts. Refused and audited both times, even
    when it is otherwise a fresh command (the time window is wide here, so only the retain flag
    can refuse it)."""
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    broker = Broker(tmp_path / "broker", port, certs, persistent=True).start()
    brokers.append(broker)
    command = b"UNLOCK" if payload == "plain" else fresh_command()
    assert press_unlock(port, certs, HA_USER, HA_PASSWORD, command, retain=True) == "Success"
    observer = Observer(port, certs).start()
    config = still_door(tmp_path, examples_dir, door_model,
                        mqtt_section(port, tmp_path, certs, remote_unlock=True,
                                     command_max_age_s=300))

    def refused() -> list[dict[str, Any]]:
        return [e for e in observer.events() if e["event_type"] == "remote_unlock_refused"]

    with door_running(config, observer) as daemon:
        assert observer.wait_for(lambda: len(refused()) >= 1, timeout=60)
        connects = daemon.mqtt.connects if daemon.mqtt else 0
        broker.stop()  # saves the retained message ...
        broker.start()  # ... and the door, reconnecting, is handed it again
        observer.wait_connected()
        assert observer.wait_for(lambda: len(refused()) >= 2, timeout=60)
        assert daemon.mqtt is not None and daemon.mqtt.connects > connects
    rows = audit_rows(config)
    remote = [r for r in rows if r["event"] == "remote"]
    assert len(remote) == 2 and all("retained" in r["reason"] for r in remote)
    assert all("lock/set" in r["details"]["source"] for r in remote)
    assert not [r for r in rows if r["event"] == "unlock"]
    assert not any(state for _, state in mock_pins.pin(17).states)


@pytest.mark.data
def test_a_stale_replayed_or_malformed_command_is_refused_and_audited(
        tmp_path: Path, examples_dir: Path, door_model: Path, brokers: list[Broker],
        mock_pins: Any) -> None:
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    brokers.append(Broker(tmp_path / "broker", port, certs).start())
    observer = Observer(port, certs).start()
    config = still_door(tmp_path, examples_dir, door_model,
                        mqtt_section(port, tmp_path, certs, remote_unlock=True))
    pin = mock_pins.pin(17)

    def refusals() -> int:
        return sum(e["event_type"] == "remote_unlock_refused" for e in observer.events())

    with door_running(config, observer):
        assert observer.wait_for(lambda: b"online" in observer.on(f"{PREFIX}/availability"))
        first = fresh_command()
        assert press_unlock(port, certs, HA_USER, HA_PASSWORD, first) == "Success"
        assert observer.wait_for(lambda: b"UNLOCKED" in observer.on(f"{PREFIX}/lock/state"))
        assert observer.wait_for(lambda: observer.on(f"{PREFIX}/lock/state")[-1] == b"LOCKED")
        time.sleep(1.5)  # past action.cooldown_seconds (1 s): only the nonce can refuse it
        for payload in (first, fresh_command(age_s=120), fresh_command(age_s=-120),
                        fresh_command(nonce=None), b"UNLOCK", b"\x00garbage"):
            assert press_unlock(port, certs, HA_USER, HA_PASSWORD, payload) == "Success"
        assert observer.wait_for(lambda: refusals() >= 6)
    rows = audit_rows(config)
    reasons = [r["reason"] for r in rows if r["event"] == "remote"]
    assert len(reasons) == 6 and all(r.startswith("remote command refused: ") for r in reasons)
    for word, reason in zip(("replayed", "stale", "ahead", "nonce", "not a fresh command",
                             "not a fresh command"), reasons, strict=True):
        assert word in reason
    unlocks = [r for r in rows if r["event"] == "unlock"]
    assert len(unlocks) == 1 and unlocks[0]["reason"] == "remote unlock"
    assert sum(1 for _, state in pin.states if state) == 1 and pin.state is False


@pytest.mark.data
@pytest.mark.slow
def test_a_flood_with_remote_unlock_off_costs_the_door_nothing(
        clip_door: dict[str, Any], tmp_path: Path, brokers: list[Broker], mock_pins: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 UNLOCKs while the resident walks up (the replayed clip, in real time): no record
    of them, the frame loop goes on, systemd's watchdog keeps being pinged, the resident gets in.
    (Before the fix each one was an audit record written on the frame thread, with no ping.)"""
    sock_path = tmp_path / "notify.sock"
    if len(str(sock_path)) > 100:
        pytest.skip(f"tmp path too long for AF_UNIX: {sock_path}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(0.2)
    pings: list[float] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                if b"WATCHDOG=1" in listener.recv(4096):
                    pings.append(time.monotonic())

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # a ping a second
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    port = free_port()
    broker = Broker(tmp_path / "broker", port).start()
    brokers.append(broker)
    observer = Observer(port).start()
    observer.wait_connected()
    config = clip_config(clip_door, mqtt=mqtt_section(port, tmp_path),
                         service={"watchdog": True})
    daemon, thread = start_daemon(config)
    try:
        assert observer.wait_for(lambda: b"online" in observer.on(f"{PREFIX}/availability"),
                                 timeout=60)
        flood_start = time.monotonic()
        assert flood(port, None, (b"UNLOCK" for _ in range(20_000))) == 20_000
        flood_end = time.monotonic()
        thread.join(timeout=120)
        assert not thread.is_alive()
    finally:
        daemon.stop()
        done.set()
        reader.join(5)
        listener.close()
        observer.stop()
    rows = audit_rows(config)
    assert not [r for r in rows if r["event"] == "remote"]
    assert [r["user"] for r in rows if r["event"] == "unlock"][:1] == ["lin"]
    assert broker.subscriptions("test_door") == []
    assert daemon.mqtt is not None and daemon.mqtt.unsolicited == 0
    # frames were handled and the watchdog pinged while the flood went on, and after it
    assert [t for t in daemon.seen if flood_start <= t <= flood_end + 1.0]
    assert [t for t in pings if t > flood_start] and pings[-1] > flood_end


@pytest.mark.data
def test_a_flood_with_remote_unlock_on_opens_once_per_cooldown_in_a_few_records(
        tmp_path: Path, examples_dir: Path, door_model: Path, brokers: list[Broker],
        mock_pins: Any) -> None:
    """3,000 valid commands (each fresh, each its own nonce) within seconds: one pulse for the
    cooldown (30 s here), at most commands_per_minute records of them, one summary of the rest.
    (Before the fix: an unlock record for nearly every command, and a pulse per cooldown.)"""
    port = free_port()
    certs = make_certs(tmp_path / "certs")
    brokers.append(Broker(tmp_path / "broker", port, certs).start())
    observer = Observer(port, certs).start()
    config = still_door(tmp_path, examples_dir, door_model,
                        mqtt_section(port, tmp_path, certs, remote_unlock=True),
                        action={"cooldown_seconds": 30.0})
    per_minute = MqttConfig().commands_per_minute
    pin = mock_pins.pin(17)

    def summaries() -> list[dict[str, Any]]:
        return [e for e in observer.events() if "dropped unread" in e.get("reason", "")]

    with door_running(config, observer) as daemon:
        assert observer.wait_for(lambda: b"online" in observer.on(f"{PREFIX}/availability"))
        assert flood(port, certs, (fresh_command() for _ in range(3_000))) == 3_000
        assert observer.wait_for(lambda: bool(summaries()), timeout=60)
        assert daemon.mqtt is not None
        dropped = daemon.mqtt.commands.dropped
    rows = audit_rows(config)
    unlocks = [r for r in rows if r["event"] == "unlock"]
    remote = [r for r in rows if r["event"] == "remote"]
    summary = [r for r in remote if "dropped unread" in r["reason"]]
    assert len(unlocks) == 1 and sum(1 for _, state in pin.states if state) == 1
    assert len(summary) == 1 and summary[0]["details"]["dropped"] == dropped > 2_000
    cooldown = [r for r in remote if "cooldown" in r["reason"]]
    assert len(unlocks) + len(cooldown) == per_minute == len(remote) - 1 + len(unlocks)
    assert len(rows) <= per_minute + 4  # start, the commands, one summary, stop


@pytest.mark.data
def test_a_liveness_failure_is_published_without_score_closest_user_or_parallax(
        tmp_path: Path, examples_dir: Path, door_model: Path, brokers: list[Broker],
        mock_pins: Any) -> None:
    """A still photo of the resident fails liveness: the audit log has the score, the closest
    resident and the parallax; MQTT (denial_details off, the default) says only that it failed."""
    port = free_port()
    brokers.append(Broker(tmp_path / "broker", port).start())
    observer = Observer(port).start()
    observer.wait_connected()
    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    frames = tmp_path / "frames"
    frames.mkdir()
    photo = cv2.imread(str(examples_dir / "lin-manuel-miranda.png"))
    rng = np.random.default_rng(20)
    for i in range(100):  # 7 s of a photo held up (a camera's noise, a hand's small shifts):
        # past liveness.timeout_seconds (5 s); then nobody
        shift = np.float32([[1, 0, rng.uniform(-2, 2)], [0, 1, rng.uniform(-2, 2)]])
        held = cv2.warpAffine(photo, shift, photo.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
        noisy = np.clip(held + rng.normal(0, 2, held.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(frames / f"{i:03d}.png"), noisy if i < 70 else np.full_like(photo, 128))
    config = write_config(tmp_path / "config.yaml", tmp_path / "state", door_model, gallery,
                          str(frames / "*.png"),
                          camera={"type": "replay", "source": str(frames / "*.png"), "fps": 10,
                                  "realtime": True},
                          mqtt=mqtt_section(port, tmp_path), liveness={"mode": "motion"})
    _daemon, thread = start_daemon(config)
    thread.join(90)
    assert observer.wait_for(lambda: b"offline" in observer.on(f"{PREFIX}/availability"))
    observer.stop()
    rows = audit_rows(config)
    failures = [r for r in rows if r["event"] == "deny" and r["reason"].startswith("liveness")]
    assert failures and not [r for r in rows if r["event"] == "unlock"], [r["reason"] for r in rows]
    assert "parallax" in failures[0]["reason"] and failures[0]["best_score"] > 0
    assert failures[0]["details"]["closest_user"] == "lin"
    published = [e for e in observer.events() if e["event_type"] == "liveness_failure"]
    assert len(published) == len(failures)
    for event in published:
        assert event["reason"] == "liveness check failed"
        assert not {"closest_user", "score", "user"} & set(event)
    raw = b"".join(observer.on(f"{PREFIX}/event") + observer.on(f"{PREFIX}/state"))
    assert b"parallax" not in raw and b'"lin"' not in raw
