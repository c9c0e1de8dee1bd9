"""A flood of MQTT commands on the lock's command topic against the real daemon and mosquitto.

Why: the door must never wait for its broker, nor let whoever can publish to ``…/lock/set``
fill its audit log, stall its frame loop (and with it systemd's watchdog) or pulse the relay
over and over. This starts a real mosquitto on 127.0.0.1 (tests/test_mqtt.py's broker, with a
password file; TLS for ``--remote on``), runs the real ``Daemon`` on the replayed clip (looped,
real time, liveness off as in tests/test_mqtt.py, gpiozero's MockFactory for the relay) with
``NOTIFY_SOCKET``/``WATCHDOG_USEC`` pointing at a socket read here, waits until the door is
online, then publishes ``--count`` commands as fast as paho goes (QoS 0) and measures:

- the audit records the flood made (``remote`` and ``unlock`` rows) and the relay's pulses;
- when the resident first opens the door (seconds after the flood began, and after start);
- the longest gap between two frames the loop handled, and between two watchdog pings, from the
  flood's start until the daemon is stopped (once the resident is in, or after ``--limit``).

``--payload plain`` sends ``UNLOCK`` (what an attacker or an old automation sends);
``--payload fresh`` sends the JSON command with the current time and a new nonce each time
(every one of them a valid command: the worst case for ``--remote on``).

Usage::

    .venv/bin/python benchmarks/mqtt_flood.py [--count 100000] [--remote off|on]
                                              [--payload plain|fresh] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common as common
from daemon_helpers import CLIP, enrol_miranda, write_config
from test_mqtt import (
    HA_PASSWORD,
    HA_USER,
    NO_LIVENESS,
    PREFIX,
    Broker,
    free_port,
    make_certs,
    mqtt_section,
)

from twinlock.daemon.errors import TwinLockError
from twinlock.daemon.storage.audit import AuditLog


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = common.make_parser(__doc__ or "")
    parser.add_argument("--count", type=int, default=100_000, help="commands to publish")
    parser.add_argument("--remote", choices=("off", "on"), default="off",
                        help="mqtt.remote_unlock (on: with TLS and a password, as required)")
    parser.add_argument("--payload", choices=("plain", "fresh"), default="plain")
    parser.add_argument("--limit", type=float, default=120.0,
                        help="seconds to wait for the resident's unlock after the flood began")
    parser.add_argument("--model", type=Path, default=common.DEFAULT_MODEL)
    common.add_json_option(parser)
    return parser.parse_args(argv)


def payload(kind: str) -> bytes:
    if kind == "plain":
        return b"UNLOCK"
    return json.dumps({"command": "UNLOCK", "time": time.time(),
                       "nonce": uuid.uuid4().hex}).encode()


def flood(port: int, certs: Any, count: int, kind: str) -> float:
    """Publish ``count`` commands as Home Assistant's user, QoS 0; seconds it took."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{os.getpid()}")
    client.username_pw_set(HA_USER, HA_PASSWORD)
    if certs is not None:
        client.tls_set(ca_certs=str(certs.ca), certfile=str(certs.client_cert),
                       keyfile=str(certs.client_key))
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    start = time.monotonic()
    for _ in range(count):
        while client.publish(f"{PREFIX}/lock/set", payload(kind), qos=0).rc != 0:
            time.sleep(0.001)
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()
    return time.monotonic() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from twinlock.daemon.door.service import Daemon

    data = common.data_root(args.data)
    examples = data / "face_recognition_examples"
    Device.pin_factory = MockFactory()
    with tempfile.TemporaryDirectory(prefix="twinlock-flood-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        certs = make_certs(tmp / "certs") if args.remote == "on" else None
        broker = Broker(tmp / "broker", port, certs).start()
        gallery = tmp / "gallery.json"
        enrol_miranda(args.model, examples, gallery)
        mqtt = mqtt_section(port, tmp, certs, remote_unlock=args.remote == "on")
        config = write_config(tmp / "config.yaml", tmp / "state", args.model, gallery,
                              str(examples / CLIP), camera={"loop": True}, mqtt=mqtt,
                              service={"watchdog": True, "status_interval_s": 1.0},
                              **NO_LIVENESS)
        sock_path = tmp / "notify.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(sock_path))
        listener.settimeout(0.5)
        pings: list[float] = []
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                try:
                    if b"WATCHDOG=1" in listener.recv(4096):
                        pings.append(time.monotonic())
                except TimeoutError:
                    continue

        threading.Thread(target=listen, daemon=True).start()
        os.environ |= {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
        os.environ.pop("WATCHDOG_PID", None)
        seen: list[float] = []

        class Timed(Daemon):
            def process(self, frame: Any) -> Any:
                seen.append(time.monotonic())
                return super().process(frame)

        daemon = Timed(config)
        started = time.monotonic()
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        while daemon.mqtt is None or not daemon.mqtt.connected.is_set():
            time.sleep(0.05)
        time.sleep(1.0)  # the subscription (if any) is in place
        flood_start = time.monotonic()
        sent_s = flood(port, certs, args.count, args.payload) if args.count else 0.0
        db = load_db(config)
        resident_at = None
        while time.monotonic() - flood_start < args.limit and resident_at is None:
            time.sleep(0.25)
            resident_at = first_resident_unlock(db, started)
        stopped = time.monotonic()
        daemon.stop()
        thread.join(120)
        stop.set()
        broker.stop()
        pins = Device.pin_factory.pin(17).states
        with AuditLog(db) as log:
            rows = [r.to_dict() for r in log.query()]
    # gaps from the flood's start to the stop, both ends included (a loop stuck from the start
    # on shows as one long gap, not as none)
    window = [t for t in seen if flood_start <= t <= stopped]
    gaps = [b - a for a, b in itertools.pairwise([flood_start, *window, stopped])]
    ping_window = [t for t in pings if flood_start <= t <= stopped]
    ping_gaps = [b - a for a, b in itertools.pairwise([flood_start, *ping_window, stopped])]
    remote_rows = [r for r in rows if r["event"] == "remote"]
    unlocks = [r for r in rows if r["event"] == "unlock"]
    return common.report_header("mqtt_flood", data) | {
        "count": args.count, "remote_unlock": args.remote, "payload": args.payload,
        "flood_sent_s": round(sent_s, 2),
        "audit_rows": len(rows), "remote_rows": len(remote_rows),
        "remote_reasons": sorted({r["reason"][:80] for r in remote_rows})[:10],
        "unlock_rows": len(unlocks),
        "remote_unlock_rows": sum(1 for r in unlocks if r["reason"] == "remote unlock"),
        "relay_pulses": sum(1 for _, state in pins if state),
        "last_remote_record_after_start_s": round(remote_rows[-1]["ts"] - rows[0]["ts"], 2)
        if remote_rows else None,
        "flood_start_after_start_s": round(flood_start - started, 2),
        "resident_unlock_after_flood_start_s": None if resident_at is None
        else round(resident_at - (flood_start - started), 2),
        "resident_unlock_after_start_s": None if resident_at is None else round(resident_at, 2),
        "measured_s": round(stopped - flood_start, 2),
        "frames_after_flood_start": len(window),
        "max_frame_gap_s": round(max(gaps), 2) if gaps else None,
        "watchdog_pings_after_flood_start": len(ping_window),
        "max_watchdog_gap_s": round(max(ping_gaps), 2) if ping_gaps else None,
        "environment": common.environment(),
    }


def load_db(config: Path) -> Path:
    from twinlock.daemon.config.loader import load_config

    return load_config(config).audit.db


def first_resident_unlock(db: Path, started: float) -> float | None:
    """Seconds from the daemon's start record to the first unlock for the resident, if any."""
    try:
        with AuditLog(db) as log:
            start = log.query(event="start")
            unlocks = log.query(event="unlock", user="lin")
    except TwinLockError:  # the daemon is still creating the file
        return None
    if not start or not unlocks:
        return None
    return unlocks[0].ts - start[0].ts


if __name__ == "__main__":
    raise SystemExit(common.main(parse_args, run))
