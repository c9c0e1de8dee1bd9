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
    P/lock/set       commands from Home Assistant (subscribed only with mqtt.remote_unlock):
                     {"command": "UNLOCK"|"OPEN"|"LOCK", "time": UNIX_SECONDS, "nonce": TEXT}
    P/snapshot       JPEG of a denied attempt (only with mqtt.snapshots: personal data)
    P/review/DOOR    one review record per ended attempt, its face crop included (only with
                     review.mqtt: personal data; QoS 1, never retained; the household's
                     persistent session takes them, twinlock doors sync)

A command must be fresh: never a retained message (the broker would hand it over again at every
restart and reconnect), dated within ``mqtt.command_max_age_s`` of the door's clock, and with a
nonce not seen within that window (a replay). Anything else is refused and audited. Commands
reach the frame loop through a small bounded inbox, at most ``mqtt.commands_per_minute`` of
them; the rest are dropped unread and written as one summary record per flood, so whoever can
publish to the topic can neither fill the audit log nor stall the frame loop.

Refused attempts are published without their score, closest resident or liveness measurements
(an oracle for tuning an attack) unless ``mqtt.denial_details`` is on; the audit log keeps them.

Discovery configs go to ``<discovery_prefix>/<component>/<client_id>/<object>/config``
(retained): a lock, an event entity, sensors for the last user, last score and frame rate, and an
image entity when snapshots are on.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
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

from .. import version
from ..errors import ConfigError
from .events import Event, EventKind, Record

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
#: the longest command payload read; a fresh JSON command is about 100 bytes
MAX_COMMAND_BYTES = 512
#: commands waiting for the frame loop; more are dropped (counted) until it takes them
INBOX_SIZE = 16
#: a flood's summary is written once the flood has been quiet this long, seconds ...
FLOOD_QUIET_S = 5.0
#: ... or, while it goes on, once per this many seconds
FLOOD_REPORT_S = 60.0
#: what a nonce may look like (a uuid, random hex, a time with a random suffix)
NONCE = re.compile(r"^[A-Za-z0-9_.:+-]{8,128}$")
#: what Home Assistant's lock entity sends (discovery's command_template): the command, the
#: time and a nonce that is new each time (Jinja's sandbox caps range() at 100,000)
HA_COMMAND_TEMPLATE = ('{"command": "{{ value }}", "time": {{ as_timestamp(now()) }}, '
                       '"nonce": "{{ as_timestamp(now()) }}-{{ range(100000) | random }}"}')
#: the reason a refused attempt is published with (without mqtt.denial_details)
PLAIN_REASONS = {"denied": "not verified", "liveness_failure": "liveness check failed"}

Payload = bytes | Callable[[], bytes]


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


@dataclass(frozen=True)
class RemoteCommand:
    """A fresh unlock command, for the door to decide on (lockout, cooldown, remote_unlock)."""

    command: str
    source: str


class CommandCheck:
    """Whether a command payload is fresh: JSON ``{"command", "time", "nonce"}``, dated within
    ``max_age_s`` of the door's clock either way, its nonce unseen within that window.

    Why both: a time alone lets a copy be replayed for ``max_age_s``; a nonce alone needs every
    nonce remembered for ever. Together the door remembers one window's nonces only (a replay
    of an older one is stale). ``clock`` is the wall clock (the sender's time is wall time).
    """

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.time) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._seen: dict[str, float] = {}  # nonce -> when it may be forgotten

    def judge(self, payload: bytes, retained: bool) -> tuple[str, str, str | None]:
        """(command, nonce, why it is refused, or None when it is a fresh command)."""
        if retained:
            return "", "", ("a retained message (the broker hands it over again at every "
                            "restart and reconnect; a command must never be retained)")
        if len(payload) > MAX_COMMAND_BYTES:
            return "", "", f"{len(payload)} bytes, more than a command's {MAX_COMMAND_BYTES}"
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        if not isinstance(data, dict):
            return "", "", ('not a fresh command: send JSON {"command": "UNLOCK", "time": '
                            'UNIX_SECONDS, "nonce": NEW_RANDOM_TEXT}')
        command, sent, nonce = data.get("command"), data.get("time"), data.get("nonce")
        if not isinstance(command, str) or command.upper() not in (*UNLOCK_COMMANDS, "LOCK"):
            return "", "", "no command (UNLOCK, OPEN or LOCK) in it"
        command = command.upper()
        if not isinstance(nonce, str) or not NONCE.match(nonce):
            return command, "", "no nonce (8-128 letters, digits or . _ : + -)"
        if isinstance(sent, bool) or not isinstance(sent, int | float) or \
                not math.isfinite(sent):
            return command, nonce, "no time (UNIX seconds)"
        now = self._clock()
        age = now - float(sent)
        if age > self.max_age_s:
            return command, nonce, (f"stale: sent {age:.0f} s ago, more than "
                                    f"mqtt.command_max_age_s ({self.max_age_s:g} s)")
        if -age > self.max_age_s:
            return command, nonce, (f"dated {-age:.0f} s ahead of the door's clock (more than "
                                    f"{self.max_age_s:g} s): is either clock wrong?")
        for old in [n for n, until in self._seen.items() if until < now]:
            del self._seen[old]
        if nonce in self._seen:
            return command, nonce, "replayed: this nonce was already used"
        self._seen[nonce] = float(sent) + self.max_age_s + 1.0
        return command, nonce, None


class CommandInbox:
    """Commands from the MQTT thread to the frame loop: at most ``size`` waiting and at most
    ``per_minute`` admitted in any 60 s. The rest are dropped unread, counted, and reported as
    one record once the flood has been quiet ``FLOOD_QUIET_S`` (or once a ``FLOOD_REPORT_S``
    while it goes on), so a flood costs the frame loop a few records, not one per message."""

    def __init__(self, size: int, per_minute: int, topic: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.per_minute, self.topic = size, per_minute, topic
        self._clock = clock
        self._lock = threading.Lock()
        self._items: deque[Record | RemoteCommand] = deque()
        self._admitted: deque[float] = deque()  # admission times within the last minute
        self.dropped = 0  # in all
        self._unreported = 0
        self._first_drop = self._last_drop = 0.0

    def admit(self) -> bool:
        """May one more message be read? False (counted as dropped) during a flood."""
        now = self._clock()
        with self._lock:
            while self._admitted and now - self._admitted[0] >= 60.0:
                self._admitted.popleft()
            if len(self._items) >= self.size or len(self._admitted) >= self.per_minute:
                self.dropped += 1
                if not self._unreported:
                    self._first_drop = now
                    logger.warning("mqtt: commands on %s are flooding in (more than %d a "
                                   "minute); dropping them unread", self.topic, self.per_minute)
                self._unreported += 1
                self._last_drop = now
                return False
            self._admitted.append(now)
            return True

    def put(self, item: Record | RemoteCommand) -> None:
        with self._lock:
            self._items.append(item)

    def take(self, final: bool = False) -> list[Record | RemoteCommand]:
        """What the frame loop does next: refusals to record, fresh commands to decide on, and
        a flood's summary when it is due (``final``: now, and no command is handed over)."""
        now = self._clock()
        with self._lock:
            items: list[Record | RemoteCommand] = list(self._items)
            self._items.clear()
            if final:  # the daemon stops: commands left are counted with the flood, not run
                kept = [i for i in items if isinstance(i, Record)]
                left = len(items) - len(kept)
                if left:
                    if not self._unreported:
                        self._first_drop = now
                    self._unreported += left
                    self._last_drop = now
                items = list(kept)
            due = self._unreported and (final or now - self._last_drop >= FLOOD_QUIET_S
                                        or now - self._first_drop >= FLOOD_REPORT_S)
            if due:
                count, span = self._unreported, self._last_drop - self._first_drop
                self._unreported = 0
                items.append(Record(
                    "remote", "deny", f"{count} MQTT command(s) on {self.topic} dropped unread: "
                    f"more than {self.per_minute} a minute or {self.size} waiting (a flood?)",
                    details={"dropped": count, "seconds": round(span, 1),
                             "dropped_total": self.dropped}))
        return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class MqttLink:
    """The door's MQTT client. Every public method returns at once and never raises."""

    def __init__(self, cfg: MqttConfig) -> None:
        import paho.mqtt.client as mqtt

        self.cfg = cfg
        self.prefix = cfg.topic_prefix
        self.queue = OutQueue(cfg.queue_size)
        #: what came in on the command topic, for the frame loop (Daemon._handle_remote)
        self.commands = CommandInbox(INBOX_SIZE, cfg.commands_per_minute,
                                     self.topic("lock/set"))
        self._check = CommandCheck(cfg.command_max_age_s)
        #: messages that arrived although the door never subscribed (remote unlock off)
        self.unsolicited = 0
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
    def from_config(cls, cfg: MqttConfig) -> MqttLink | None:
        """A started link, or None when MQTT is off. A bad TLS/password file is a ConfigError."""
        if not cfg.enabled:
            return None
        try:
            link = cls(cfg)
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

    def handle(self, event: Event) -> bool:
        """The outbox's MQTT sink: a committed record as an event (a refused attempt's picture
        too, with ``mqtt.snapshots``), the camera's and the audit log's state, the relay."""
        kind, record = event.kind, event.record
        if record is not None and not record.audited:
            return True  # the review store's alone (a refusal during a lockout after the first)
        if record is not None:
            self.record(record)
            if record.event == "deny" and event.image is not None:
                self.snapshot(event.image)
        elif kind in (EventKind.CAMERA_LOST, EventKind.CAMERA_BACK):
            self.event(kind, reason=event.reason)
        elif kind is EventKind.AUDIT_FAILING:  # Home Assistant hears it too
            self.event(EventKind.FAULT, reason="audit log not writable, no unlock until it is: "
                       f"{event.reason}")
        elif kind in (EventKind.RELAY_OPEN, EventKind.RELAY_CLOSED):
            self.lock_state(unlocked=kind is EventKind.RELAY_OPEN)
        return True

    def record(self, record: Record) -> None:
        """One committed audit record as an event. A refused attempt goes without its score,
        closest resident and reason's measurements unless ``mqtt.denial_details``: they tell
        whoever may subscribe how near an attack came. The audit log keeps them all."""
        kind = record.kind
        details = record.details or {}
        published: dict[str, Any] = {
            "decision": record.decision, "reason": record.reason, "user": record.user,
            "score": record.best_score, "closest_user": details.get("closest_user"),
            "source": details.get("source"), "frame": record.frame}
        if kind in PLAIN_REASONS and not self.cfg.denial_details:
            published |= {"reason": PLAIN_REASONS[kind], "user": None, "score": None,
                          "closest_user": None}
        self.event(kind, **published)

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

    def review(self, door: str, message: bytes) -> None:
        """Queue one review record (``review.mqtt``; daemon/review/format.encode_mqtt) on
        ``P/review/<door>``: QoS 1 like every message here, never retained (a retained copy
        would be handed to every new subscriber again; the household ignores one)."""
        try:
            self.queue.put(Message(self.topic(f"review/{door}"), message))
        except Exception:
            logger.exception("mqtt: review record not queued")

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
        if self.cfg.remote_unlock:  # otherwise nobody's message on it can reach the door
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
        """paho's network thread: judge the command and leave it in the inbox (never more than
        the inbox admits: a flood is counted, not read)."""
        try:
            if not self.cfg.remote_unlock or message.topic != self.topic("lock/set"):
                self.unsolicited += 1
                if self.unsolicited in (1, 100) or self.unsolicited % 10_000 == 0:
                    logger.warning("mqtt: %d message(s) the door did not subscribe to (last on "
                                   "%s); ignored", self.unsolicited, message.topic)
                return
            if not self.commands.admit():
                return
            source = (f"mqtt {message.topic} via {self.cfg.username or 'anonymous'}@"
                      f"{self.cfg.host}:{self.cfg.port}{' (TLS)' if self.cfg.ca_file else ''}")
            command, nonce, refused = self._check.judge(bytes(message.payload),
                                                        bool(message.retain))
            if refused is not None:
                logger.warning("mqtt: command refused (%s): %s", source, refused)
                details = {"source": source} | ({"nonce": nonce} if nonce else {})
                self.commands.put(Record("remote", "deny", f"remote command refused: {refused}",
                                         details=details | {"command": command or None}))
            elif command in UNLOCK_COMMANDS:
                logger.info("mqtt: fresh %s command (%s)", command, source)
                self.commands.put(RemoteCommand(command, source))
            else:
                logger.info("mqtt: %s ignored: the door locks by itself", command)
        except Exception:  # the network thread must go on
            logger.exception("mqtt: command not handled")

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
              "sw_version": version()}
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
        } | ({"command_template": HA_COMMAND_TEMPLATE, "retain": False}
             if cfg.remote_unlock else {}),
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
