"""``twinlockd run``: camera -> faces -> verify -> relay, for months, failing safe.

One thread reads frames and decides; the relay pulse and command hooks run in the action's own
background thread. Everything that can break at run time (camera, model, a frame, the runtime)
is caught where it happens, written to the audit log, and leaves the door locked while the loop
goes on. SIGTERM stops cleanly with the relay off; SIGHUP reloads config, model and gallery,
keeping the old ones if the new ones do not load.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..bundle.format import BUNDLE_SUFFIX, MAX_BUNDLE_SIZE
from ..bundle.store import CURRENT_NAME, bundles_dir, current_bundle, install_bundle, unpack_bundle
from ..camera.frame import Frame
from ..camera.registry import camera_factory
from ..camera.resilient import ResilientCamera
from ..config.loader import load_config
from ..config.schema import Config, ReplayCameraConfig
from ..errors import AlreadyRunningError, AuditError, BundleError, ModelError, TwinLockError
from ..faces import quality as q
from ..faces.assets import MESH_ROLE
from ..faces.mesh import IRIS_ROLE, FaceMesh
from ..recognition.analyser import FrameAnalyser, Observation
from ..recognition.fusion import decision_settings
from ..recognition.gallery import load_gallery
from ..recognition.model import FaceEmbedder
from ..recognition.verify import Verifier
from ..storage.audit import SnapshotStore, boot_clock, seconds_since
from ..storage.guard import AuditWriter, GuardedAudit, open_audit
from ..storage.private_db import make_private_dirs
from .actions import Action, build_action
from .events import AuditSink, Event, EventKind, EventSink, Outbox, Record, StatusSink
from .machine import Command, DoorMachine, DoorSettings, Unlock
from .mqtt import MqttLink
from .notify import Notifier, watchdog_interval

logger = logging.getLogger(__name__)

#: the same fault message is written to the audit log at most once per this many seconds
FAULT_REPEAT_SECONDS = 60.0

#: reloads (SIGHUP) start at most once per this many seconds; one asked for sooner waits, so
#: the last change is still applied, but a storm of them costs the door nothing
RELOAD_MIN_INTERVAL_S = 2.0


@dataclass
class Matcher:
    """Everything built from the model and gallery; replaced as a whole on reload."""

    analyser: FrameAnalyser
    users: int
    origin: str

    @property
    def embedder(self) -> FaceEmbedder:
        return self.analyser.embedder

    @property
    def verifier(self) -> Verifier:
        assert self.analyser.verifier is not None  # the door's analyser always has a gallery
        return self.analyser.verifier

    @property
    def mesh(self) -> FaceMesh | None:
        """The face mesh for liveness; None when liveness is off."""
        return self.analyser.mesh

    def describe(self) -> str:
        meta = self.embedder.meta
        return (f"model {meta.model_id} ({meta.architecture}, {meta.quantization}), "
                f"{self.users} user(s), threshold {self.verifier.threshold:.4f}, from "
                f"{self.origin}")


#: the lock file in ``state_dir`` a running daemon holds for its whole life
STATE_LOCK_NAME = "twinlockd.lock"


def lock_state_dir(state_dir: Path) -> IO[bytes] | None:
    """Hold ``state_dir``'s lock for as long as the returned file stays open (the kernel drops
    it when the process ends, however). AlreadyRunningError when another daemon holds it: two
    on one state folder would fight over the relay, the camera, the audit log and the bundles.
    None (with an error logged) when the lock file cannot be made at all: a read-only or full
    card must not become a restart loop; what else fails there keeps the door locked."""
    try:
        make_private_dirs(state_dir, AuditError)
        fd = os.open(state_dir / STATE_LOCK_NAME,
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except (OSError, AuditError) as exc:
        logger.error("state folder %s: cannot make its lock file (%s): not checking for another "
                     "daemon", state_dir, getattr(exc, "strerror", None) or exc)
        return None
    handle = os.fdopen(fd, "r+b")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = handle.read(32).decode("ascii", "replace").strip() or "unknown"
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise AlreadyRunningError(
                f"another twinlockd (pid {holder}) is running on state folder {state_dir}; "
                "not starting a second one (stop the other first: systemctl stop twinlockd)"
            ) from None
        logger.error("state folder %s: cannot lock it (%s): not checking for another daemon",
                     state_dir, exc.strerror or exc)
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle


def pick_up_incoming(cfg: Config, audit: AuditWriter | Outbox | None) -> None:
    """Install the newest bundle that ``twinlock deploy`` dropped into ``model.incoming``.

    Installing verifies it first and keeps the running bundle as ``previous`` (for rollback). A
    bundle that fails verification is moved to incoming/rejected and changes nothing. The drop
    folder is writable by the deploy group, so nothing in it is trusted: only regular files are
    opened (without following a symlink and without blocking on a FIFO), anything else named
    ``*.twinlock`` is quarantined unread, ``rejected`` itself is never followed, and no error
    here stops the door. A bundle holds the residents' anchors, and an upload is the uploader's
    file, readable by the whole deploy group: the door takes it into a file of its own, 0600,
    and deletes the upload before checking it, so what it installs, or keeps in ``rejected/``,
    the group can no longer read.
    """
    incoming = cfg.model.incoming
    if cfg.model.source != "bundle":
        return
    try:
        folder = os.open(incoming, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as exc:
        _drop_problem(audit, f"drop folder {incoming} not used: {exc.strerror or exc} (it must "
                      "be a real folder, not a symbolic link)")
        return
    try:
        _pick_up(cfg, audit, folder)
    except (OSError, TwinLockError) as exc:  # keep running, whatever the folder holds
        _drop_problem(audit, f"drop folder {incoming}: {exc}")
    finally:
        os.close(folder)


def _drop_problem(audit: AuditWriter | Outbox | None, message: str) -> None:
    logger.error("%s", message)
    if audit is not None:
        audit.record("bundle", "deny", message)


#: a bundle's name in the drop folder while the door checks it. One left behind means the door
#: died checking it (a tower that crashes the runtime, the OOM killer): it is quarantined, never
#: retried, so such a bundle cannot become a crash loop.
CHECKING_PREFIX = ".checking-"


def _pick_up(cfg: Config, audit: AuditWriter | Outbox | None, folder: int) -> None:
    incoming = cfg.model.incoming
    regular: list[tuple[float, str]] = []
    with os.scandir(folder) as entries:
        names = [(e.name, e.stat(follow_symlinks=False)) for e in entries
                 if e.name.endswith(BUNDLE_SUFFIX)]
    for name, _ in names:
        if name.startswith(CHECKING_PREFIX):
            _quarantine(audit, folder, incoming, name, "the door stopped while checking it "
                        "(it may crash the door); not tried again",
                        shown=name.removeprefix(CHECKING_PREFIX))
    listed = [(name, st) for name, st in names if not name.startswith(".")]
    for name, st in listed:
        if stat.S_ISREG(st.st_mode):
            regular.append((st.st_mtime, name))
        else:
            _quarantine(audit, folder, incoming, name, "not a regular file (a symbolic link, "
                        "FIFO, folder or device); not read")
    regular.sort()
    for _, name in regular[:-1]:
        logger.info("ignoring older incoming bundle %s", name)
    if not regular:
        return
    newest = regular[-1][1]
    checking = CHECKING_PREFIX + newest
    try:
        _take(folder, newest, checking)
    except BundleError as exc:  # oversized, or no longer a regular file: refused unread
        _quarantine(audit, folder, incoming, newest, str(exc))
        return
    try:
        install_bundle(incoming / checking, cfg.model.public_key, cfg.state_dir,
                       cfg.model.runtimes)
    except TwinLockError as exc:
        _quarantine(audit, folder, incoming, checking, str(exc).replace(checking, newest),
                    shown=newest)
        return
    for name in (checking, *(name for _, name in regular[:-1])):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)
    logger.info("installed bundle %s", newest)
    if audit is not None:
        audit.record("bundle", "ignore", f"bundle {newest} installed")


def _take(folder: int, name: str, private: str) -> None:
    """Copy the upload ``name`` into a new file ``private`` that only the daemon can read (its
    own, 0600: the folder's setgid bit gives it the group, the mode gives the group nothing),
    fsynced, then delete the upload. The daemon cannot chmod the upload (the uploader owns
    it), so a copy is the way. BundleError, with nothing changed, for an upload larger than
    any bundle or one that is no longer a regular file; OSError (a full card) leaves the upload
    where it is for the next pick-up."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        source = os.open(name, flags, dir_fd=folder)
    except OSError as exc:
        raise BundleError(f"{name}: cannot open it ({exc.strerror or exc})") from None
    try:
        st = os.fstat(source)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{name}: not a regular file (changed while being picked up)")
        if st.st_size > MAX_BUNDLE_SIZE:
            raise BundleError(f"{name}: {st.st_size} bytes, larger than any bundle can be "
                              f"({MAX_BUNDLE_SIZE} bytes)")
        os.set_blocking(source, True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(private, dir_fd=folder)  # ours from a pick-up cut short, or planted
        target = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=folder)
        try:
            os.fchmod(target, 0o600)
            copied = 0
            while chunk := os.read(source, 1 << 20):
                copied += len(chunk)
                if copied > MAX_BUNDLE_SIZE:  # grew while being read
                    raise BundleError(f"{name}: grew past {MAX_BUNDLE_SIZE} bytes while being "
                                      "picked up")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(target, view):]
            os.fsync(target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(private, dir_fd=folder)
            raise
        finally:
            os.close(target)
    finally:
        os.close(source)
    os.unlink(name, dir_fd=folder)


def _quarantine(audit: AuditWriter | Outbox | None, folder: int, incoming: Path, name: str,
                reason: str, shown: str | None = None) -> None:
    """Move ``name`` into ``rejected/`` as ``shown`` (made afresh if it is not a real folder), by
    descriptor: no path in the drop folder is ever followed. Failing that, delete it."""
    shown = shown or name
    _drop_problem(audit, f"bundle {shown} refused: {reason}")
    try:
        rejected = _rejected_folder(folder, incoming)
        try:
            os.replace(name, shown, src_dir_fd=folder, dst_dir_fd=rejected)
        finally:
            os.close(rejected)
    except OSError as exc:
        logger.error("cannot move %s to %s/rejected (%s); deleting it", name, incoming, exc)
        try:
            os.unlink(name, dir_fd=folder)
        except OSError as again:
            logger.error("cannot delete %s from %s either: %s", name, incoming, again)


def _rejected_folder(folder: int, incoming: Path) -> int:
    """A descriptor of incoming/rejected: a real folder, never a link to somewhere else."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        os.mkdir("rejected", 0o700, dir_fd=folder)
    except FileExistsError:
        st = os.stat("rejected", dir_fd=folder, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            aside = f"rejected.not-a-folder-{int(time.time())}"
            logger.error("%s/rejected is not a folder; moved it to %s", incoming, aside)
            os.replace("rejected", aside, src_dir_fd=folder, dst_dir_fd=folder)
            os.mkdir("rejected", 0o700, dir_fd=folder)
    return os.open("rejected", flags, dir_fd=folder)


def model_files(cfg: Config) -> tuple[Path, Path, str]:
    """(model folder, gallery file, description) from a verified bundle or, in development,
    from the configured folder. Raises TwinLockError (BundleError for a refused bundle)."""
    if cfg.model.source == "folder":
        logger.warning("model.source is 'folder': loading an UNSIGNED model and gallery")
        return cfg.model.dir, cfg.model.gallery, f"unsigned folder {cfg.model.dir}"
    active = cfg.state_dir / "active"
    verified, root = unpack_bundle(current_bundle(cfg.state_dir), cfg.model.public_key, active)
    for old in active.iterdir():  # one unpacked bundle at a time
        if old.is_dir() and old != root and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return root / "model", root / "gallery.json", f"bundle {verified.bundle_id}"


def source_stamp(cfg: Config) -> tuple[object, ...]:
    """What a config loads the model and gallery from, without reading a byte: the installed
    bundle's (or the model folder's files', the gallery's, the liveness models') inode, size
    and times. A reload finding the same stamp and an equal config has nothing to change."""
    if cfg.model.source == "bundle":
        paths = [bundles_dir(cfg.state_dir) / CURRENT_NAME]
    else:
        folder = Path(cfg.model.dir)
        paths = [Path(cfg.model.gallery), folder,
                 *(sorted(folder.iterdir()) if folder.is_dir() else [])]
    paths += [Path(p) for p in (cfg.liveness.mesh_model_path, cfg.liveness.iris_model_path)
              if p is not None]
    stamp: list[object] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            stamp.append((str(path), None))
            continue
        stamp.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamp)


def build_matcher(cfg: Config) -> Matcher:
    """Load model + gallery and check they belong together. Raises TwinLockError."""
    model_dir, gallery_path, origin = model_files(cfg)
    embedder = FaceEmbedder(model_dir, cfg.model.num_threads, tuple(cfg.model.runtimes))
    meta = embedder.meta
    gallery = load_gallery(gallery_path)
    if gallery.model_id != meta.model_id:
        raise ModelError(f"gallery {gallery_path} was made with model {gallery.model_id}, "
                         f"not {meta.model_id}: re-enrol (twinlock enroll) for this model")
    if gallery.embedding_dim not in (None, meta.embedding_dim):
        raise ModelError(f"gallery anchors are {gallery.embedding_dim}-d, the model makes "
                         f"{meta.embedding_dim}-d embeddings")
    v = cfg.verification
    threshold, threshold_from, fusion = decision_settings(
        meta.thresholds, meta.default_threshold, meta.metrics, v.threshold, v.threshold_name,
        v.fusion, residents=len(gallery.users))
    logger.info("decision: fusion %s, threshold %.4f (%s)", fusion, threshold, threshold_from)
    detector = cfg.detector.to_spec(meta.detector).build(cfg.model.num_threads)
    pipeline = meta.face_pipeline(detector)
    verifier = Verifier(gallery, meta.head_weights, meta.head_bias, threshold,
                        v.verification_threshold, fusion)
    qc = cfg.quality
    thresholds = q.QualityThresholds(qc.min_face_px, qc.min_brightness, qc.max_brightness,
                                     qc.min_sharpness)
    mesh = None
    if cfg.liveness.mode != "off":
        # the model folder's (signed, checked) copy unless the config names another file
        mesh_file = cfg.liveness.mesh_model_path or meta.asset_path(MESH_ROLE)
        mesh = FaceMesh(mesh_file, cfg.model.num_threads,
                        eyes=cfg.liveness.settings().needs_blink,
                        iris_model_path=cfg.liveness.iris_model_path or meta.asset_path(IRIS_ROLE))
        logger.info("liveness: %s (face mesh %s)", cfg.liveness.mode, mesh.model_path)
    else:
        logger.warning("liveness is off: a photo of a resident can open the door")
    analyser = FrameAnalyser(pipeline, embedder, thresholds, verifier, cfg.quality.multiple_faces,
                             mesh)
    return Matcher(analyser, len(gallery.users), origin)


def frame_number(frame: Frame) -> int:
    """The number a record gives a frame: its place in the source file when replaying one."""
    return frame.source_index if frame.source_index is not None else frame.index


def carry_out(commands: list[Command], door: DoorMachine, outbox: Outbox, action: Action,
              snapshots: SnapshotStore | None = None, image: np.ndarray | None = None) -> None:
    """Do what the door decided, in order. An unlock happens only once its record is committed;
    if it cannot be, the door stays shut and the machine is told. ``image``: the last picture
    with a face (for a snapshot of a refused attempt)."""
    for command in commands:
        if isinstance(command, Record):
            if command.event == "lockout":  # timed by the boot clock too (resume_lockout)
                command = replace(command, details=(command.details or {}) | boot_clock())
            outbox.write(command, image)
        elif isinstance(command, Unlock):
            if outbox.write(command.record, image):
                action.unlock(command.user)
                door.last_decision += f" at {time.strftime('%H:%M:%S')}"
                logger.info("door opened for %s", command.user)
            else:
                door.unlock_not_recorded(command.user)
        elif snapshots is not None and image is not None:
            try:
                snapshots.save(image, time.time(), command.kind)
            except (OSError, TwinLockError) as exc:
                logger.warning("snapshot not saved: %s", exc)


def resume_lockout(log: AuditWriter, door: DoorMachine, outbox: Outbox, now: float) -> float:
    """Carry a lockout over a restart: a crash, an OOM kill or a flood that forces restarts must
    not lift it. The last ``lockout`` record says how long it was to last; how long ago it began
    is measured by the boot clock when it is from this boot (a wall clock set since changes
    nothing), else by the wall clock, with no time passed if that went back. The rest is resumed
    on the door's clock (``now``, the frames' monotonic time) and recorded, so the next restart
    measures from there. Returns the seconds resumed (0: none)."""
    if not door.lockout.enabled:
        return 0.0
    try:
        last = log.last("lockout")
    except AuditError as exc:
        logger.error("cannot look for a lockout to resume: %s", exc)
        return 0.0
    seconds = (last.details or {}).get("lockout_seconds") if last is not None else None
    if last is None or not isinstance(seconds, (int, float)):
        return 0.0
    length = min(float(seconds), door.settings.lockout_seconds)
    left = length - seconds_since(last)
    if left <= 0:
        return 0.0
    door.lockout.resume(now + left, last.reason)
    logger.warning("lockout resumed after a restart: %.0f s left (%s)", left, last.reason)
    outbox.write(Record("lockout", "deny", last.reason,
                        details={"lockout_seconds": round(left, 3), "resumed": True}
                        | boot_clock()))
    return left


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
            self._connect_sinks()  # the audit log and status line hear MQTT's own failure
            self.mqtt = self._start_mqtt(self.cfg)
            self._connect_sinks()
            self.camera = self._camera()
            self.snapshots = self._snapshots()
            self.door = DoorMachine(DoorSettings.from_config(self.cfg))
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
        if self.mqtt is not None:
            sinks.append(self.mqtt)
        sinks.append(self.status_sink)
        self.outbox.sinks = sinks

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
        self.matcher, self._loaded_stamp = matcher, stamp
        self.carry_out(self.door.finish("reloaded during the attempt"))  # the old settings
        # a reload must not lift a running lockout
        lockout = self.door.lockout if new_cfg.lockout == old.lockout else None
        self.snapshots = self._snapshots()
        self.door = DoorMachine(DoorSettings.from_config(new_cfg), lockout)
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
