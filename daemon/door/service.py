"""``twinlockd run``: camera -> faces -> verify -> relay, for months, failing safe.

One thread reads frames and decides; the relay pulse and command hooks run in the action's own
background thread. Everything that can break at run time (camera, model, a frame, the runtime)
is caught where it happens, written to the audit log, and leaves the door locked while the loop
goes on. SIGTERM stops cleanly with the relay off; SIGHUP reloads config, model and gallery,
keeping the old ones if the new ones do not load.

This module runs the loop and nothing else: what it builds from the config comes from
``assemble.py``, the machine's commands are done by ``carry.py``, every event leaves through the
outbox (``events.py``: audit log, MQTT, systemd), the drop folder is ``bundle/intake.py``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.intake import pick_up_incoming
from ..camera.frame import Frame
from ..camera.registry import camera_factory
from ..camera.resilient import ResilientCamera
from ..config.loader import load_config
from ..config.schema import Config, ReplayCameraConfig
from ..errors import TwinLockError
from ..recognition.analyser import Observation
from ..storage.audit import SnapshotStore
from ..storage.guard import GuardedAudit, open_audit
from ..storage.state_lock import lock_state_dir
from .actions import build_action
from .assemble import Matcher, build_matcher, door_settings, source_stamp
from .carry import carry_out, resume_lockout
from .events import AuditSink, Event, EventKind, EventSink, Outbox, Record, StatusSink
from .machine import Command, DoorMachine
from .mqtt import MqttLink
from .notify import Notifier, watchdog_interval
from .review_sink import ReviewSink

logger = logging.getLogger(__name__)

#: the same fault message is written to the audit log at most once per this many seconds
FAULT_REPEAT_SECONDS = 60.0

#: reloads (SIGHUP) start at most once per this many seconds; one asked for sooner waits, so
#: the last change is still applied, but a storm of them costs the door nothing
RELOAD_MIN_INTERVAL_S = 2.0


def frame_number(frame: Frame) -> int:
    """The number a record gives a frame: its place in the source file when replaying one."""
    return frame.source_index if frame.source_index is not None else frame.index


class Daemon:
    def __init__(self, config_path: Path | None, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.cfg = load_config(config_path)
        self.notifier = notifier or Notifier.from_env()
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self._last_reload = -RELOAD_MIN_INTERVAL_S  # monotonic time the last reload began
        #: source_stamp() of what the running matcher was built from
        self._loaded_stamp: tuple[object, ...] | None = None
        self.matcher: Matcher | None = None
        # Before the relay: a second daemon on this state folder must not touch the pin (its
        # claim would cut the running one's pulse short).
        self._state_lock = lock_state_dir(self.cfg.state_dir)
        # The relay first: claiming the pin drives it inactive, so a relay left on by a crashed
        # run goes off even when what follows (audit DB, camera, model) fails.
        try:
            self.action = build_action(self.cfg, self._action_event)
        except BaseException:
            self._release_state()
            raise
        try:
            self.audit = open_audit(self.cfg.audit.db, self.cfg.audit.retention_days)
            #: every event, to the audit log first, then MQTT and systemd's status line
            self.outbox = Outbox()
            self.records = GuardedAudit(self.audit, self._audit_changed)
            self.status_sink = StatusSink(self.notifier, self._status_line)
            # MQTT: events out (never waited on), remote unlock requests in (_handle_remote)
            self._camera_down = False
            self.mqtt: MqttLink | None = None
            #: review records of ended attempts, after the audit log (None: review is off)
            self.review = self._review_sink(self.cfg)
            self._connect_sinks()  # the audit log and status line hear MQTT's own failure
            self.mqtt = self._start_mqtt(self.cfg)
            self._connect_sinks()
            self.camera = self._camera()
            self.snapshots = self._snapshots()
            self.door = DoorMachine(door_settings(self.cfg))
            #: the last picture that showed a face (snapshots of refused attempts, MQTT)
            self.last_image: np.ndarray | None = None
        except BaseException:
            self.action.close()
            mqtt = getattr(self, "mqtt", None)
            if mqtt is not None:
                mqtt.close()
            self._release_state()
            raise
        self._watchdog_period = watchdog_interval() if self.cfg.service.watchdog else None
        self._last_ping = 0.0
        self._faults: dict[str, tuple[float, int]] = {}
        self._frame_times: deque[float] = deque(maxlen=30)

    # -- construction and reload -----------------------------------------------------------

    def _camera(self) -> ResilientCamera:
        c = self.cfg.camera
        return ResilientCamera(camera_factory(self.cfg), c.reopen_backoff_initial_s,
                               c.reopen_backoff_max_s, sleep=self._wait,
                               on_state=self._camera_state)

    def _start_mqtt(self, cfg: Config) -> MqttLink | None:
        """The MQTT link, or None (off, or its files unusable: the door runs without it)."""
        try:
            return MqttLink.from_config(cfg.mqtt)
        except TwinLockError as exc:
            logger.error("mqtt not started, the door runs without it: %s", exc)
            self.outbox.record("fault", "deny", f"mqtt not started: {exc}")
            return None

    def _connect_sinks(self) -> None:
        """The outbox's sinks, in order (again after a reload replaces the MQTT link)."""
        sinks: list[EventSink] = [AuditSink(self.records)]
        if self.review is not None:  # after the audit sink: it sets the audit id
            sinks.append(self.review)
        if self.mqtt is not None:
            sinks.append(self.mqtt)
        sinks.append(self.status_sink)
        self.outbox.sinks = sinks

    def _review_sink(self, cfg: Config) -> ReviewSink | None:
        """The review store's sink when ``review:`` is on (its folder is made on first use)."""
        return ReviewSink.from_config(cfg.review, self._decided_under, self._publish_review) \
            if cfg.review.enabled else None

    def _publish_review(self, door: str, message: bytes) -> None:
        """``review.mqtt``: a review record to the MQTT link running now (a reload may have
        replaced it; none: the broker's link failed to start, the folder still has it)."""
        if self.mqtt is not None:
            self.mqtt.review(door, message)

    def _decided_under(self) -> tuple[str | None, str | None]:
        """(bundle id, model id) of the running matcher, for the review records."""
        matcher = self.matcher
        if matcher is None:
            return None, None
        return matcher.bundle_id, matcher.embedder.meta.model_id or None

    def _snapshots(self) -> SnapshotStore | None:
        snaps = self.cfg.audit.snapshots
        return (SnapshotStore(snaps.dir, snaps.max_total_mb, snaps.jpeg_quality)
                if snaps.enabled else None)

    def load_matcher(self) -> None:
        """(Re)build the matcher; on failure the old one stays (or the door stays locked)."""
        pick_up_incoming(self.cfg, self.outbox)
        stamp = source_stamp(self.cfg)  # before loading: a change meanwhile reloads next time
        try:
            matcher = build_matcher(self.cfg)
        except TwinLockError as exc:
            self.fault(f"model/gallery not loaded, door stays locked: {exc}", event="fault")
            return
        self.matcher, self._loaded_stamp = matcher, stamp
        logger.info("loaded %s", matcher.describe())

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new_cfg = load_config(self.config_path)
        except TwinLockError as exc:
            self.fault(f"reload refused, keeping the running config: {exc}", event="reload")
            self.notifier.ready()
            return
        old = self.cfg
        self.cfg = new_cfg
        pick_up_incoming(new_cfg, self.outbox)
        stamp = source_stamp(new_cfg)
        if self.matcher is not None and new_cfg == old and stamp == self._loaded_stamp:
            # nothing changed (a repeated SIGHUP): keep everything, cut no visitor's attempt
            logger.info("reload: config, model and gallery unchanged; nothing to do")
            self.notifier.ready()
            return
        try:
            matcher = build_matcher(new_cfg)
        except TwinLockError as exc:
            self.cfg = old
            self.fault(f"reload refused, keeping the running model: {exc}", event="reload")
            self.notifier.ready()
            return
        if new_cfg.action != old.action:
            self.action.close()  # relay off before anything else drives it
            self.action = build_action(new_cfg, self._action_event)
        if new_cfg.camera != old.camera:
            self.camera.stop()
            self.camera.close()
            self.camera = self._camera()
        if new_cfg.mqtt != old.mqtt:
            if self.mqtt is not None:
                self.mqtt.close()
            self.mqtt = self._start_mqtt(new_cfg)
            self._connect_sinks()
        if new_cfg.review != old.review:
            self.review = self._review_sink(new_cfg)
            self._connect_sinks()
        self.matcher, self._loaded_stamp = matcher, stamp
        self.carry_out(self.door.finish("reloaded during the attempt"))  # the old settings
        # a reload must not lift a running lockout
        lockout = self.door.lockout if new_cfg.lockout == old.lockout else None
        self.snapshots = self._snapshots()
        self.door = DoorMachine(door_settings(new_cfg), lockout)
        self.outbox.write(Record("reload", "ignore", f"reloaded: {matcher.describe()}"))
        logger.info("reloaded: %s", matcher.describe())
        self.notifier.ready()

    # -- callbacks -------------------------------------------------------------------------

    def fault(self, message: str, event: str = "fault", **details: Any) -> None:
        """Log and audit a fault. The same message is written at most once a minute (a broken
        runtime fails on every frame; the log should say so once, with a count)."""
        now = time.monotonic()
        last, suppressed = self._faults.get(message, (-1e9, 0))
        if now - last < FAULT_REPEAT_SECONDS:
            self._faults[message] = (last, suppressed + 1)
            logger.debug("%s (repeated)", message)
            return
        self._faults[message] = (now, 0)
        logger.error("%s", message)
        if suppressed:
            details["repeated_since_last_record"] = suppressed
        self.outbox.write(Record(event, "deny" if event == "fault" else "ignore", message,
                                 details=details or None))

    def _audit_changed(self, error: str | None) -> None:
        """A record could not be written (or, with None, can be again): the outbox tells
        systemd (STATUS=) and MQTT now, not at the next status line."""
        self.outbox.send(Event(EventKind.AUDIT_FAILING, reason=error) if error is not None
                         else Event(EventKind.AUDIT_BACK))

    def _camera_state(self, state: str, reason: str) -> None:
        if state == "failed":
            self.fault(f"camera: {reason}")
            if not self._camera_down:
                self.outbox.send(Event(EventKind.CAMERA_LOST, reason=reason))
            self._camera_down = True
        elif state in ("reopened", "opened"):
            logger.info("camera: %s", reason)
            if self._camera_down:
                self.outbox.send(Event(EventKind.CAMERA_BACK, reason=reason))
            self._camera_down = False

    def _action_event(self, kind: str, detail: str) -> None:
        if kind == "hook_failed":
            self.fault(f"unlock hook failed: {detail}")
        else:
            logger.info("action: %s %s", kind, detail)
        outbox = getattr(self, "outbox", None)  # not yet made: pulses start early
        if kind in ("pulse_start", "pulse_end") and outbox is not None:
            outbox.send(Event(EventKind.RELAY_OPEN if kind == "pulse_start"
                              else EventKind.RELAY_CLOSED))

    def _handle_remote(self, final: bool = False) -> None:
        """What came in over MQTT since the last frame: a bounded, rate-limited few refusals to
        record and fresh commands for the door to decide on (a flood is one summary record)."""
        if self.mqtt is None:
            return
        for item in self.mqtt.commands.take(final):
            if isinstance(item, Record):
                self.carry_out([item])
            else:
                self.carry_out(self.door.remote(time.monotonic(), item.source,
                                                self.cfg.mqtt.remote_unlock))

    def _wait(self, seconds: float) -> None:
        """The camera's backoff wait: stays responsive to stop and keeps the watchdog fed
        (the daemon is alive, only the camera is away)."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._ping_watchdog()
            self._handle_remote()
            self.stop_event.wait(min(left, 1.0))

    # -- signals ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def stop(self) -> None:
        self.stop_event.set()
        self.camera.stop()

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        self.outbox.write(Record("start", "ignore", f"twinlockd starting with {self.config_path}"))
        resume_lockout(self.audit, self.door, self.outbox, time.monotonic())
        self.action.safe()
        self.load_matcher()
        self.camera.open()
        self.notifier.ready()
        self._status()
        camera = self.cfg.camera
        # max_fps caps the CPU a live camera costs; an unpaced replay means "every frame, now"
        unpaced = isinstance(camera, ReplayCameraConfig) and not camera.realtime
        min_period = 0.0 if unpaced else 1.0 / self.cfg.service.max_fps
        last_status = last_processed = 0.0
        try:
            while not self.stop_event.is_set():
                if self.reload_requested.is_set() and \
                        time.monotonic() - self._last_reload >= RELOAD_MIN_INTERVAL_S:
                    self.reload_requested.clear()
                    self._last_reload = time.monotonic()
                    self.reload()
                self._handle_remote()
                frame = self.camera.read()
                if frame is None:
                    if not self.stop_event.is_set():
                        logger.info("camera source ended")
                    break
                self._ping_watchdog()
                now = frame.timestamp
                observations: tuple[Observation, ...] = ()
                if now - last_processed >= 0.9 * min_period:  # 0.9: frame timing jitters
                    last_processed = now
                    observations = self.process(frame)
                self.carry_out(self.door.step(now, frame_number(frame), observations))
                if time.monotonic() - last_status >= self.cfg.service.status_interval_s:
                    last_status = time.monotonic()
                    self._status()
        finally:
            self.shutdown()
        return 0

    def process(self, frame: Frame) -> tuple[Observation, ...]:
        """What one frame shows (the frame analyser's observations). Any failure here is a
        fault for this frame only: it shows nothing, and the door stays locked."""
        matcher = self.matcher
        if matcher is None:
            return ()
        self._frame_times.append(time.monotonic())
        try:
            analysis = matcher.analyser.analyse(frame.image, frame.detect_input,
                                                frame.to_image_coords, self.door.needs_liveness,
                                                self.door.tracking_face)
        except TwinLockError as exc:
            self.fault(f"frame skipped: {exc}", frame=frame.index)
            return ()
        except Exception as exc:
            logger.debug("unexpected error on frame %s", frame.index, exc_info=True)
            self.fault(f"frame skipped: {exc.__class__.__name__}: {exc}", frame=frame.index)
            return ()
        if analysis.observations:
            self.last_image = frame.image
        return analysis.observations

    def carry_out(self, commands: list[Command]) -> None:
        carry_out(commands, self.door, self.outbox, self.action, self.snapshots,
                  self.last_image)

    def _ping_watchdog(self) -> None:
        if self._watchdog_period is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self._watchdog_period:
            self._last_ping = now
            self.notifier.watchdog()

    def _fps(self) -> float:
        times = self._frame_times
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and \
            times[-1] > times[0] else 0.0

    def _status_line(self) -> str:
        """systemd's status line (the status sink puts an audit log failure before it)."""
        state = "matching" if self.matcher else "NO MODEL: door stays locked"
        camera = "camera ok" if self.camera.healthy else f"camera down ({self.camera.last_error})"
        return f"{state}; {self._fps():.1f} fps; {camera}; last: {self.door.last_decision}"

    def _status(self) -> None:
        if self.mqtt is not None:
            self.mqtt.status(self._fps(), "ok" if self.camera.healthy else "down")
        self.status_sink.show()

    def shutdown(self) -> None:
        """Relay off first, then everything else."""
        self.notifier.stopping()
        try:
            self.action.close()
        finally:
            self.carry_out(self.door.finish())
            self._handle_remote(final=True)  # refusals and a flood's count, never an unlock
            self.camera.close()
            self.outbox.write(Record("stop", "ignore", "twinlockd stopped"))
            self.audit.close()
            if self.mqtt is not None:
                self.mqtt.close()  # "offline", after the last record was published
            self.notifier.close()
            self._release_state()

    def _release_state(self) -> None:
        """Let another daemon start on this state folder (the last step of a stop)."""
        lock, self._state_lock = self._state_lock, None
        if lock is not None:
            lock.close()
