"""A door's review records over MQTT: the household's persistent session at the broker.

A door with ``review.mqtt`` publishes each review record, crop included, on
``PREFIX/review/DOOR`` (QoS 1, never retained; daemon/review/format.encode_mqtt). The door opens
no port and takes no command for it: it only publishes, as it does its events. The household
subscribes with a fixed client id (``twinlock-household-DOOR``) and a persistent session (MQTT 5,
clean start off, a session that outlives a disconnect by ``SESSION_EXPIRY_S``, QoS 1), so the
broker keeps the records for it while the household machine is off; ``twinlock doors sync NAME``
drains that queue. The session starts with ``doors add``: what the door published before that
is not queued (the door's folder still has it, over SSH). A broker keeps a bounded queue per
session (mosquitto: ``max_queued_messages``, 1000 by default): raise it for a household that
is off for long, or fill a gap over SSH.

Why it is safe to drain:

- Every message goes through the same strict reader as the SSH and folder path
  (:func:`~twinlock.daemon.review.format.parse_mqtt`: the record line by ``parse_record``, the
  crop by ``check_crop``, and the model's dimension by ``doors.check_dimension``); a refused one
  is reported and nothing of it is stored.
- A message is acknowledged only once its record is committed (paho's manual acks): a sync cut
  off midway leaves the rest queued at the broker, and one redelivered is stored once (its id
  is the store's key), so syncing twice gives the same store.
- A retained message is never a door's (the door never retains review records): it is a stale
  or planted copy the broker hands to every new subscription, and is ignored.
- The queue is drained until the broker has sent nothing for ``quiet_s`` after the
  subscription was granted, within one deadline; the broker sends at most its in-flight limit of
  unacknowledged messages at a time, so memory stays bounded however long the queue is.

A door's target in the household's list is ``mqtt://[USER@]HOST[:PORT]/PREFIX`` with the TLS
and password files as query parameters (``ca_file``, ``client_cert``, ``client_key``,
``password_file``), the door's own ``mqtt:`` keys, checked by the door's own schema.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from pydantic import ValidationError

from twinlock.daemon.config.schema import MqttConfig
from twinlock.daemon.door.mqtt import read_password
from twinlock.daemon.errors import UsageError
from twinlock.daemon.review.format import (
    ReviewRecord,
    ReviewRecordError,
    check_door_name,
    parse_mqtt,
)

from ..errors import DeployError
from .activity import ActivityStore, DoorEntry

logger = logging.getLogger(__name__)

SCHEME = "mqtt://"
DEFAULT_PREFIX = "twinlock/door"  # the door's mqtt.topic_prefix default
#: the door's mqtt: keys a target may carry as query parameters (file paths, no secrets)
FILE_KEYS = ("ca_file", "client_cert", "client_key", "password_file")
#: the sync ends once the broker has sent nothing for this long after granting the subscription
QUIET_S = 2.0
#: how long the broker keeps the household's session (and its queue) after a disconnect
SESSION_EXPIRY_S = 30 * 24 * 3600


def is_mqtt_target(target: str) -> bool:
    return target.strip().lower().startswith(SCHEME)


def client_id(door: str) -> str:
    """The household's fixed client id for ``door``: the broker keeps its session by it."""
    return f"twinlock-household-{check_door_name(door)}"


def review_topic(prefix: str, door: str) -> str:
    return f"{prefix}/review/{door}"


def mqtt_target(host: str, prefix: str = DEFAULT_PREFIX, username: str | None = None,
                **files: Path | None) -> str:
    """The target URL ``doors add NAME --mqtt HOST[:PORT]`` keeps (checked by
    :func:`parse_mqtt_target`); file paths are made absolute."""
    query = {k: str(Path(v).expanduser().resolve()) for k, v in files.items() if v is not None}
    unknown = sorted(set(query) - set(FILE_KEYS))
    if unknown:
        raise UsageError(f"unknown MQTT setting(s): {', '.join(unknown)}")
    user = f"{quote(username, safe='')}@" if username else ""
    url = f"{SCHEME}{user}{host.strip()}/{prefix.strip('/')}"
    return url + (f"?{urlencode(query)}" if query else "")


def parse_mqtt_target(target: str, door: str) -> MqttConfig:
    """The broker settings of an ``mqtt://`` target, as the door's own ``mqtt:`` section (its
    schema checks them: port, topic prefix, a password file needs a user, a key needs a cert)."""
    parts = urlsplit(target.strip())
    if parts.scheme != "mqtt" or not parts.hostname:
        raise UsageError(f"door target {target!r}: use mqtt://[USER@]HOST[:PORT]/PREFIX")
    query = parse_qs(parts.query, strict_parsing=bool(parts.query))
    unknown = sorted(set(query) - set(FILE_KEYS))
    if unknown or any(len(v) != 1 for v in query.values()):
        raise UsageError(f"door target {target!r}: unknown or repeated setting(s) "
                         f"{', '.join(unknown) or ''}; known: {', '.join(FILE_KEYS)}")
    try:
        port = parts.port or 1883
    except ValueError:
        raise UsageError(f"door target {target!r}: the port is not a number") from None
    data: dict[str, Any] = {
        "enabled": True, "host": parts.hostname, "port": port,
        "topic_prefix": parts.path.strip("/") or DEFAULT_PREFIX, "client_id": client_id(door),
        "username": parts.username or None} | {k: v[0] for k, v in query.items()}
    try:
        return MqttConfig.model_validate(data, context={"base_dir": Path.cwd()})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"door target {target!r}: {where}: {first['msg']}") from None


class _Session:
    """One connection with the household's persistent session; messages to a queue."""

    def __init__(self, cfg: MqttConfig, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.cfg, self.topic = cfg, topic
        self.messages: queue.Queue[Any] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.refused: str | None = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True, reconnect_on_failure=False)
        if cfg.username:
            password = read_password(cfg.password_file) if cfg.password_file else None
            client.username_pw_set(cfg.username, password)
        if cfg.ca_file:
            client.tls_set(ca_certs=str(cfg.ca_file),
                           certfile=str(cfg.client_cert) if cfg.client_cert else None,
                           keyfile=str(cfg.client_key) if cfg.client_key else None)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = lambda c, u, message: self.messages.put(message)
        self.client = client

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        # retainAsPublished: a retained message keeps its flag even when it arrives live, so
        # every retained one is known (and ignored), not only the copy a subscription brings
        client.subscribe(self.topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        self.connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        if reasons and reasons[0].is_failure:  # an ACL that does not let the household read
            self.refused = f"subscription to {self.topic} refused: {reasons[0]}"
        self.subscribed.set()

    def open(self, deadline: float) -> None:
        where = f"{self.cfg.host}:{self.cfg.port}"
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            self.client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s,
                                clean_start=False, properties=session)
        except (OSError, ValueError) as exc:
            raise DeployError(f"sync over MQTT failed at step 'connect': cannot reach the broker "
                              f"at {where} ({exc})", step="connect") from None
        self.client.loop_start()
        while not self.subscribed.is_set() and self.refused is None:
            if time.monotonic() > deadline:
                raise DeployError(f"sync over MQTT failed at step 'subscribe': the broker at "
                                  f"{where} did not answer in time", step="subscribe")
            self.subscribed.wait(0.05)
        if self.refused is not None:
            raise DeployError(f"sync over MQTT failed at step 'connect': the broker at {where} "
                              f"refused {self.cfg.client_id}: {self.refused}", step="connect")

    def ack(self, message: Any) -> None:
        self.client.ack(message.mid, message.qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def register(entry: DoorEntry, timeout_s: float = 30.0) -> None:
    """Open the household's session for ``entry`` at the broker (``doors add``): from now on
    the broker keeps the door's records for it. Takes nothing (nothing acknowledged)."""
    cfg = parse_mqtt_target(entry.target, entry.name)
    session = _Session(cfg, review_topic(cfg.topic_prefix, entry.name))
    try:
        session.open(time.monotonic() + timeout_s)
    finally:
        session.close()


#: doors.check_dimension: an embedding's size against its model's (the SSH path's own check)
Check = Callable[[ReviewRecord, dict[str, int], str], None]


def drain(store: ActivityStore, entry: DoorEntry, report: Any, timeout_s: float,
          check: Check, quiet_s: float = QUIET_S) -> None:
    """Take ``entry``'s queued review records from the broker into ``store`` (see the module
    docstring); ``report`` is the door's doors.SyncReport, ``check`` doors.check_dimension."""
    cfg = parse_mqtt_target(entry.target, entry.name)
    topic = review_topic(cfg.topic_prefix, entry.name)
    dims = store.model_dims()
    deadline = time.monotonic() + timeout_s
    session = _Session(cfg, topic)
    try:
        session.open(deadline)
        while time.monotonic() < deadline:
            try:
                message = session.messages.get(timeout=quiet_s)
            except queue.Empty:
                break
            _take(store, entry.name, topic, message, dims, report, check)
            session.ack(message)  # after the commit: a record is never lost, at worst re-sent
        else:
            logger.warning("%s: the sync's %.0f s ran out with records still arriving; the rest "
                           "stay queued at the broker for the next sync", entry.name, timeout_s)
    finally:
        session.close()


def _take(store: ActivityStore, door: str, topic: str, message: Any, dims: dict[str, int],
          report: Any, check: Check) -> None:
    """Check and store one message (a refused or retained one is reported, nothing stored)."""
    where = f"{door}: mqtt {message.topic} message {message.mid}"
    payload = bytes(message.payload)
    report.bytes += len(payload)
    if message.retain:
        report.refused.append(f"{where}: a retained message, ignored (a door never retains "
                              "review records: this is a stale or planted copy)")
        return
    if message.topic != topic:
        report.refused.append(f"{where}: not this door's review topic; ignored")
        return
    try:
        record, crop = parse_mqtt(payload, door=door, where=where)
        check(record, dims, where)
    except ReviewRecordError as exc:
        report.refused.append(str(exc))
        return
    report.seen += 1
    report.new += store.ingest(door, None, None, [(record, crop)])
