"""MQTT for home automation: every decision as JSON, state, availability, Home Assistant discovery,
and (off by default) a remote unlock through the lock entity's command topic.

The door must never wait for a broker. The frame loop only appends to a bounded in-memory queue
(the oldest message is dropped and counted when it is full); one background thread publishes,
one message at a time and each acknowledged (QoS 1) before the next, so events arrive in the
order they happened, across reconnects. paho-mqtt's own network thread connects and reconnects
with a doubling backoff. A retained last will says ``offline`` if the door dies; the audit log,
not the broker, is the record of truth.

Topics under ``mqtt.topic_prefix`` (P)::

    P/availability   "online" / "offline" (retained; the will)
    P/event          one JSON object per decision: unlock, denied, lockout, liveness_failure,
                     fault, camera_lost, camera_back, reload, remote_unlock_refused, ...
    P/state          JSON (retained): lock, last_user, last_score, last_event, fps, camera, dropped
    P/lock/state     "LOCKED" / "UNLOCKED" (retained): the relay, as Home Assistant's lock shows it
    P/lock/set       commands from Home Assistant: UNLOCK / OPEN (remote unlock), LOCK
    P/snapshot       JPEG of a denied attempt (only with mqtt.snapshots: personal data)

Discovery configs go to ``<discovery_prefix>/<component>/<client_id>/<object>/config``
(retained): a lock, an event entity, sensors for the last user, last score and frame rate, and an
image entity when snapshots are on.
"""

from __future__ import annotations

import itertools
import json
import logging
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config.schema import MqttConfig

logger = logging.getLogger(__name__)

#: the event types Home Assistant's event entity is told about (P/event's "event_type")
EVENT_TYPES = ("unlock", "denied", "lockout", "liveness_failure", "fault", "camera_lost",
               "camera_back", "reload", "remote_unlock_refused", "bundle", "start", "stop")
#: Home Assistant lock payloads
LOCKED, UNLOCKED = "LOCKED", "UNLOCKED"
UNLOCK_COMMANDS = ("UNLOCK", "OPEN")
#: how long close() waits for queued messages and the "offline" message, seconds
CLOSE_FLUSH_S = 2.0
VERSION = "0.1.0"

Payload = bytes | Callable[[], bytes]


def event_type(event: str, reason: str) -> str:
    """The published type of an audit record (``event`` as the audit log names it)."""
    if event == "deny" and reason.startswith("liveness"):
        return "liveness_failure"
    if event in ("deny", "quality"):
        return "denied"
    if event == "remote":
        return "remote_unlock_refused"
    return event


def read_password(path: Path) -> str:
    """The broker password from its file (first line). Refused when others may read it."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"mqtt.password_file {path}: cannot read ({exc.strerror or exc})") \
            from None
    if st.st_mode & (stat.S_IRWXO):
        raise ConfigError(f"mqtt.password_file {path}: readable by everyone (chmod 600)")
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigError(f"mqtt.password_file {path}: empty")
    return password


@dataclass
class Message:
    topic: str
    payload: Payload
    retain: bool = False


class OutQueue:
    """A bounded FIFO that never blocks its writer: when full, the oldest message goes."""

    def __init__(self, size: int) -> None:
        self._items: deque[Message] = deque()
        self._size = size
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, message: Message) -> None:
        with self._cond:
            if len(self._items) >= self._size:
                self._items.popleft()
                self.dropped += 1
                if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                    logger.warning("mqtt: queue full (%d), %d message(s) dropped so far",
                                   self._size, self.dropped)
            self._items.append(message)
            self._cond.notify()

    def get(self, timeout: float) -> Message | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def push_front(self, message: Message) -> None:
        with self._cond:
            self._items.appendleft(message)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class MqttLink:
    """The door's MQTT client. Every public method returns at once and never raises."""

    def __init__(self, cfg: MqttConfig,
                 on_command: Callable[[str, str], None] | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.cfg = cfg
        self.on_command = on_command
        self.prefix = cfg.topic_prefix
        self.queue = OutQueue(cfg.queue_size)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._seq = itertools.count(1)
        self._acked: set[int] = set()
        self._acked_cond = threading.Condition()
        self._state: dict[str, Any] = {"lock": "locked", "last_user": None, "last_score": None,
                                       "last_event": None, "last_time": None, "fps": 0.0,
                                       "camera": "unknown", "dropped": 0}
        self._state_lock = threading.Lock()
        self.connects = 0
        password = read_password(cfg.password_file) if cfg.password_file else None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        if cfg.ca_file:
            client.tls_set(ca_certs=str(cfg.ca_file),
                           certfile=str(cfg.client_cert) if cfg.client_cert else None,
                           keyfile=str(cfg.client_key) if cfg.client_key else None)
        client.will_set(self.topic("availability"), "offline", qos=1, retain=True)
        client.reconnect_delay_set(max(1, round(cfg.reconnect_min_s)),
                                   max(1, round(cfg.reconnect_max_s)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self.client = client
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-send", daemon=True)

    # -- life cycle ------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: MqttConfig,
                    on_command: Callable[[str, str], None] | None = None) -> MqttLink | None:
        """A started link, or None when MQTT is off. A bad TLS/password file is a ConfigError."""
        if not cfg.enabled:
            return None
        try:
            link = cls(cfg, on_command)
        except (OSError, ValueError) as exc:  # ssl errors are OSError; paho raises ValueError
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"mqtt: cannot set up the client: {exc}") from None
        link.start()
        return link

    def start(self) -> None:
        """Connect in the background; a missing broker is retried with backoff, never waited on."""
        logger.info("mqtt: connecting to %s:%d as %s (%s)", self.cfg.host, self.cfg.port,
                    self.cfg.client_id, "TLS" if self.cfg.ca_file else "no TLS")
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        self.client.loop_start()
        self._sender.start()

    def close(self) -> None:
        """Flush briefly, say ``offline`` (retained), disconnect. Bounded in time."""
        deadline = time.monotonic() + CLOSE_FLUSH_S
        while len(self.queue) and self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._sender.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.connected.is_set():
            try:
                info = self.client.publish(self.topic("availability"), "offline", qos=1,
                                           retain=True)
                info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                logger.debug("mqtt: offline not sent: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
        logger.info("mqtt: closed (%d message(s) dropped while the broker was away)",
                    self.queue.dropped)

    # -- what the door calls (never blocks, never raises) ------------------------------------

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def event(self, kind: str, **fields: Any) -> None:
        """Queue one decision event; updates the last user/score state it implies."""
        try:
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            payload = {"event_type": kind, "seq": next(self._seq), "time": now}
            payload.update({k: v for k, v in fields.items() if v is not None})
            with self._state_lock:
                self._state["last_event"] = kind
                self._state["last_time"] = now
                if kind == "unlock":
                    self._state["last_user"] = fields.get("user")
                if fields.get("score") is not None:
                    self._state["last_score"] = round(float(fields["score"]), 4)
            self.queue.put(Message(self.topic("event"), _json(payload)))
            self._queue_state()
        except Exception:  # the door goes on whatever MQTT does
            logger.exception("mqtt: event not queued")

    def lock_state(self, unlocked: bool) -> None:
        """The relay moved: the lock entity follows it."""
        try:
            with self._state_lock:
                self._state["lock"] = "unlocked" if unlocked else "locked"
            self.queue.put(Message(self.topic("lock/state"),
                                   (UNLOCKED if unlocked else LOCKED).encode(), retain=True))
            self._queue_state()
        except Exception:
            logger.exception("mqtt: lock state not queued")

    def status(self, fps: float, camera: str) -> None:
        try:
            with self._state_lock:
                self._state["fps"] = round(float(fps), 2)
                self._state["camera"] = camera
            self._queue_state()
        except Exception:
            logger.exception("mqtt: status not queued")

    def snapshot(self, image: np.ndarray, quality: int = 85) -> None:
        """Queue a JPEG of a denied attempt (encoded in the sender thread, not the door's)."""
        if not self.cfg.snapshots:
            return
        image = image.copy()

        def encode() -> bytes:
            import cv2

            ok, data = cv2.imencode(".jpg", image[:, :, ::-1],
                                    [int(cv2.IMWRITE_JPEG_QUALITY), quality])
            return data.tobytes() if ok else b""

        self.queue.put(Message(self.topic("snapshot"), encode))

    # -- internals -------------------------------------------------------------------------

    def _queue_state(self) -> None:
        with self._state_lock:
            self._state["dropped"] = self.queue.dropped
            data = _json(self._state)
        self.queue.put(Message(self.topic("state"), data, retain=True))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            logger.error("mqtt: broker %s:%d refused the connection: %s", self.cfg.host,
                         self.cfg.port, reason)
            return
        self.connects += 1
        logger.info("mqtt: connected to %s:%d", self.cfg.host, self.cfg.port)
        client.subscribe(self.topic("lock/set"), qos=1)
        if self.cfg.discovery:
            for topic, config in discovery_messages(self.cfg).items():
                client.publish(topic, _json(config), qos=1, retain=True)
        with self._state_lock:
            lock = UNLOCKED if self._state["lock"] == "unlocked" else LOCKED
        client.publish(self.topic("lock/state"), lock, qos=1, retain=True)
        client.publish(self.topic("availability"), "online", qos=1, retain=True)
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        with self._acked_cond:
            self._acked_cond.notify_all()
        if was and not self._stop.is_set():
            logger.warning("mqtt: lost the broker (%s); reconnecting with backoff", reason)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self._acked_cond:
            self._acked.add(mid)
            self._acked_cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        command = bytes(message.payload[:32]).decode("utf-8", "replace").strip().upper()
        source = (f"mqtt {message.topic} via {self.cfg.username or 'anonymous'}@"
                  f"{self.cfg.host}:{self.cfg.port}{' (TLS)' if self.cfg.ca_file else ''}")
        logger.info("mqtt: command %r on %s", command, message.topic)
        if self.on_command is not None:
            try:
                self.on_command(command, source)
            except Exception:
                logger.exception("mqtt: command handler failed")

    def _send_loop(self) -> None:
        """Publish queued messages in order, each acknowledged before the next."""
        while not self._stop.is_set():
            if not self.connected.wait(0.2):
                continue
            message = self.queue.get(0.2)
            if message is None:
                continue
            payload = message.payload() if callable(message.payload) else message.payload
            info = self.client.publish(message.topic, payload, qos=1, retain=message.retain)
            if info.rc not in (0, 4):  # 4: MQTT_ERR_NO_CONN (kept by paho, sent on reconnect)
                logger.debug("mqtt: publish refused (%s); requeued", info.rc)
                self.queue.push_front(message)
                time.sleep(0.1)
                continue
            with self._acked_cond:
                # paho resends an unacknowledged QoS 1 message after a reconnect: wait for it
                while info.mid not in self._acked and not self._stop.is_set():
                    self._acked_cond.wait(0.2)
                self._acked.discard(info.mid)


def discovery_messages(cfg: MqttConfig) -> dict[str, dict[str, Any]]:
    """Home Assistant MQTT discovery: topic -> config (published retained on every connect)."""
    node = cfg.client_id
    prefix = cfg.topic_prefix
    device = {"identifiers": [f"twinlock_{node}"], "name": cfg.device_name,
              "manufacturer": "TwinLock", "model": "TwinLock face-verification door lock",
              "sw_version": VERSION}
    common = {"availability_topic": f"{prefix}/availability", "payload_available": "online",
              "payload_not_available": "offline", "device": device, "qos": 1}

    def topic(component: str, obj: str) -> str:
        return f"{cfg.discovery_prefix}/{component}/{node}/{obj}/config"

    messages: dict[str, dict[str, Any]] = {
        topic("lock", "lock"): common | {
            "name": "Lock", "unique_id": f"{node}_lock",
            "state_topic": f"{prefix}/lock/state", "command_topic": f"{prefix}/lock/set",
            "payload_lock": "LOCK", "payload_unlock": "UNLOCK", "payload_open": "OPEN",
            "state_locked": LOCKED, "state_unlocked": UNLOCKED, "optimistic": False,
        },
        topic("event", "face"): common | {
            "name": "Face", "unique_id": f"{node}_face",
            "state_topic": f"{prefix}/event", "event_types": list(EVENT_TYPES),
        },
        topic("sensor", "last_user"): common | {
            "name": "Last user", "unique_id": f"{node}_last_user",
            "state_topic": f"{prefix}/state",
            "value_template": "{{ value_json.last_user }}", "icon": "mdi:account-check",
            "json_attributes_topic": f"{prefix}/state",
        },
        topic("sensor", "last_score"): common | {
            "name": "Last score", "unique_id": f"{node}_last_score",
            "state_topic": f"{prefix}/state",
            "value_template": "{{ value_json.last_score }}", "state_class": "measurement",
        },
        topic("sensor", "fps"): common | {
            "name": "Frame rate", "unique_id": f"{node}_fps",
            "state_topic": f"{prefix}/state", "value_template": "{{ value_json.fps }}",
            "unit_of_measurement": "fps", "state_class": "measurement",
            "entity_category": "diagnostic",
        },
    }
    if cfg.snapshots:
        messages[topic("image", "snapshot")] = common | {
            "name": "Denied attempt", "unique_id": f"{node}_snapshot",
            "image_topic": f"{prefix}/snapshot",
            "content_type": "image/jpeg",
        }
    return messages


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode("utf-8")
