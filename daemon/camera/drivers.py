"""Cameras: where frames come from, and the wrapper that keeps the daemon running when they stop.

Every camera turns its device's pictures into the same ``Frame`` (uint8 RGB, oriented as
configured, numbered and time-stamped) behind a four-member interface (``name``, ``open``,
``read``, ``close``). Faults are ``CameraError``; ``read()`` returns ``None`` only when a finite
source (a video, a folder) has ended. The daemon never talks to a camera directly: it reads
through ``ResilientCamera``, which turns faults into close / back off / reopen, so an unplugged
USB camera or a stalled sensor costs frames, never the service.

Cameras:

- ``OpenCVCamera``: USB/V4L2 webcams through ``cv2.VideoCapture`` (index or device path).
- ``Picamera2Camera``: the Pi camera through picamera2 (imported in ``open()``; Pi only), with a
  full-resolution stream for crops and a small stream for the detector.
- ``ReplayCamera``: a video file, an image folder or a glob, paced like a camera or as fast as
  possible; how tests and the ``replay`` camera type feed real pictures to the daemon.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import cv2
import numpy as np

from ..errors import CameraError, DataError, UsageError
from ..faces.images import load_image, to_rgb
from ..faces.types import Face

logger = logging.getLogger(__name__)

#: file name endings a folder source plays; other files (notes, SOURCE.md) are ignored quietly
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp"}
)

#: reasons ``validate_frame`` gives
EMPTY, ZERO_SIZE, BAD_DTYPE, BAD_SHAPE = "empty", "zero-size", "bad-dtype", "bad-shape"


@dataclass
class Frame:
    """One picture from a camera, in the form every consumer expects."""

    image: np.ndarray  # uint8 RGB, H x W x 3, full resolution: crops come from here
    detect_image: np.ndarray | None = None  # optional smaller RGB for the detector; None: image
    index: int = 0  # frames delivered since the camera was opened
    timestamp: float = field(default_factory=time.monotonic)  # monotonic time at capture
    wall_time: float = field(default_factory=time.time)  # time.time() at capture (audit log)
    source_index: int | None = None  # replay only: frame number in the file / position in list

    @property
    def detect_input(self) -> np.ndarray:
        """The picture to run the detector on."""
        return self.image if self.detect_image is None else self.detect_image

    @property
    def detect_scale(self) -> float:
        """image width / detect_image width: multiply detector coordinates by this."""
        if self.detect_image is None:
            return 1.0
        return self.image.shape[1] / self.detect_image.shape[1]

    def to_image_coords(self, face: Face) -> Face:
        """A face found on ``detect_input`` in ``image`` pixel coordinates (for align/crop).

        Scales x and y separately, so a detect stream of another aspect ratio still maps right.
        """
        if self.detect_image is None:
            return face
        sx = self.image.shape[1] / self.detect_image.shape[1]
        sy = self.image.shape[0] / self.detect_image.shape[0]
        x, y, w, h = face.box
        landmarks = (face.landmarks * np.array([sx, sy], dtype=np.float32)).astype(np.float32)
        return Face((x * sx, y * sy, w * sx, h * sy), landmarks, face.score)


@runtime_checkable
class Camera(Protocol):
    """What the daemon needs from a camera. Failures raise ``CameraError``."""

    name: str

    def open(self) -> None: ...

    def read(self) -> Frame | None:
        """The next frame; ``None`` only when a finite source (video, folder) has ended."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# orientation and frame checks


def check_rotation(rotate: int) -> int:
    """Normalise a clockwise rotation in degrees to 0/90/180/270; UsageError otherwise."""
    if isinstance(rotate, bool) or not isinstance(rotate, int | np.integer) or rotate % 90:
        raise UsageError(f"camera rotation must be 0, 90, 180 or 270 degrees, not {rotate!r}")
    return int(rotate) % 360


_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def apply_orientation(image: np.ndarray, rotate: int = 0, mirror: bool = False) -> np.ndarray:
    """Rotate clockwise by ``rotate`` degrees, then mirror left-right if asked.

    Cameras are mounted sideways or upside down; faces must be upright for the detector and the
    model, so every camera applies this to every picture it delivers.
    """
    rotate = check_rotation(rotate)
    if rotate:
        image = cv2.rotate(image, _ROTATIONS[rotate])
    if mirror:
        image = cv2.flip(image, 1)
    return image


def _image_problem(image: Any) -> str | None:
    if image is None or not isinstance(image, np.ndarray):
        return EMPTY
    if image.size == 0:
        return ZERO_SIZE
    if image.dtype != np.uint8:
        return BAD_DTYPE
    if image.ndim != 3 or image.shape[2] != 3:
        return BAD_SHAPE
    return None


def validate_frame(frame: Frame | None) -> str | None:
    """Why a frame is unusable ("empty", "zero-size", "bad-dtype", "bad-shape"), or None.

    Drivers hand out half-filled or wrongly typed buffers when a device misbehaves; these would
    crash the detector, so they are caught here, before anything looks at the pixels.
    """
    if frame is None:
        return EMPTY
    problem = _image_problem(frame.image)
    if problem is None and frame.detect_image is not None:
        problem = _image_problem(frame.detect_image)
    return problem


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_grey(image: np.ndarray) -> np.ndarray:
    """An RGB frame as grey (BT.601 luma) in all three channels: the tower and the detectors
    read RGB, and an IR camera's frames carry no colour. The accuracy this costs is measured
    by benchmarks/grey_input.py (README "Liveness")."""
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


class _BaseCamera:
    """Orientation, frame numbering and time stamps shared by the concrete cameras."""

    name: str = "camera"

    def __init__(self, rotate: int = 0, mirror: bool = False) -> None:
        self.rotate = check_rotation(rotate)
        self.mirror = bool(mirror)
        #: deliver grey frames (an IR / NoIR camera under IR light): see :func:`to_grey`
        self.grey = False
        self._index = 0
        self._clock: Callable[[], float] = time.monotonic

    def _frame(
        self,
        image: np.ndarray,
        detect_image: np.ndarray | None = None,
        source_index: int | None = None,
    ) -> Frame:
        timestamp, wall_time = self._clock(), time.time()
        image = apply_orientation(image, self.rotate, self.mirror)
        if detect_image is not None:
            detect_image = apply_orientation(detect_image, self.rotate, self.mirror)
        if self.grey:
            image = to_grey(image)
            detect_image = None if detect_image is None else to_grey(detect_image)
        frame = Frame(image, detect_image, self._index, timestamp, wall_time, source_index)
        self._index += 1
        return frame

    def __enter__(self) -> Self:
        self.open()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# --------------------------------------------------------------------------------------------
# OpenCV (USB / V4L2 webcams)


def _backend_id(backend: int | str | None, device: int | str) -> int:
    """cv2.CAP_* id from an int, a name such as "v4l2", or None (V4L2 for /dev paths)."""
    if backend is None:
        if isinstance(device, str) and device.startswith("/dev/") and hasattr(cv2, "CAP_V4L2"):
            return int(cv2.CAP_V4L2)
        return int(cv2.CAP_ANY)
    if isinstance(backend, str):
        value = getattr(cv2, f"CAP_{backend.upper()}", None)
        if value is None:
            raise UsageError(f"unknown OpenCV capture backend {backend!r} (e.g. 'v4l2', 'any')")
        return int(value)
    return int(backend)


class OpenCVCamera(_BaseCamera):
    """A webcam through ``cv2.VideoCapture``: an index (0) or a device path.

    Prefer stable paths such as ``/dev/v4l/by-id/usb-...-video-index0``: indexes move when
    devices are replugged or enumerate in another order after a reboot.
    """

    def __init__(
        self,
        device: int | str = 0,
        width: int | None = 640,
        height: int | None = 480,
        fps: float | None = 15.0,
        backend: int | str | None = None,
        rotate: int = 0,
        mirror: bool = False,
    ) -> None:
        super().__init__(rotate, mirror)
        if isinstance(device, str) and device.strip().isdigit():
            device = int(device)
        self.device = device
        self.width, self.height, self.fps = width, height, fps
        self.backend = backend
        self.name = f"opencv:{device}"
        self._cap: Any = None

    def open(self) -> None:
        self.close()
        device: int | str = self.device
        if isinstance(device, str):
            if not os.path.exists(device):
                raise CameraError(f"camera {device}: no such device (unplugged?)")
            device = os.path.realpath(device)  # by-id symlinks -> /dev/videoN, which V4L2 takes
        api = _backend_id(self.backend, device)
        try:
            cap = cv2.VideoCapture(device, api)
        except cv2.error as exc:
            raise CameraError(f"camera {self.device}: cannot open ({_describe(exc)})") from exc
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"camera {self.device}: cannot open (missing, busy or no access)")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(self.width))
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(self.height))
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, float(self.fps))
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1.0)  # latest picture, not one from seconds ago
        self._cap = cap
        self._index = 0
        logger.info(
            "camera %s open: %dx%d at %.1f fps", self.device,
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            cap.get(cv2.CAP_PROP_FPS),
        )

    def read(self) -> Frame:
        if self._cap is None:
            raise CameraError(f"camera {self.device} is not open")
        try:
            ok, bgr = self._cap.read()
        except cv2.error as exc:
            raise CameraError(f"camera {self.device}: read failed ({_describe(exc)})") from exc
        if not ok or bgr is None:
            raise CameraError(f"camera {self.device}: no frame (unplugged or stalled?)")
        if bgr.ndim == 3 and bgr.shape[2] == 3 and bgr.dtype == np.uint8:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        else:
            rgb = _to_rgb_or_raw(bgr)
        return self._frame(rgb)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            try:
                cap.release()
            except cv2.error as exc:  # closing a dead device must not stop the caller
                logger.warning("camera %s: release failed: %s", self.device, exc)


def _to_rgb_or_raw(bgr: np.ndarray) -> np.ndarray:
    """Grey/BGRA/16-bit -> RGB; anything stranger is passed on for validate_frame to reject."""
    try:
        return to_rgb(bgr, assume_bgr=True)
    except DataError:
        return bgr


# --------------------------------------------------------------------------------------------
# Raspberry Pi camera (picamera2)

PICAMERA2_HINT = (
    "install it with 'sudo apt install python3-picamera2' (it cannot be installed with pip) and "
    "create the virtualenv with --system-site-packages so that it can see it"
)


def yuv420_to_rgb(yuv: np.ndarray, width: int) -> np.ndarray:
    """picamera2's YUV420 array -> uint8 RGB (h, width, 3).

    picamera2 returns a YUV420 (I420: Y plane, then U, then V) stream as a 2-D array of shape
    (height * 3 / 2, stride), padding included; OpenCV converts it as an image ``stride`` pixels
    wide, and the padding columns are cut off afterwards (picamera2's own recommendation).
    """
    if yuv.ndim != 2 or yuv.shape[0] % 3 or yuv.shape[1] % 2 or yuv.shape[1] < width:
        raise CameraError(f"unexpected YUV420 buffer shape {yuv.shape} for width {width}")
    rgb = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)
    return np.ascontiguousarray(rgb[:, :width])


class Picamera2Camera(_BaseCamera):
    """The Pi camera: a main stream for crops and a low-resolution stream for detection.

    One ``capture_request`` gives both streams of the same exposure, so a face found on the
    small picture is at the same place, scaled, on the large one. The ISP scales both from the
    same sensor area: keep the two sizes at the same aspect ratio.
    """

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        detect_width: int = 320,
        detect_height: int = 180,
        fps: float = 15.0,
        rotate: int = 0,
        mirror: bool = False,
        camera_num: int = 0,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(rotate, mirror)
        if detect_width % 2 or detect_height % 2:
            raise UsageError("the detect stream's width and height must be even (YUV420)")
        if detect_width > width or detect_height > height:
            raise UsageError("the detect stream cannot be larger than the main stream")
        self.width, self.height = width, height
        self.detect_width, self.detect_height = detect_width, detect_height
        self.fps, self.camera_num, self.timeout_s = fps, camera_num, timeout_s
        self.name = f"picamera2:{camera_num}"
        self._cam: Any = None

    def open(self) -> None:
        self.close()
        try:
            from picamera2 import Picamera2  # Pi only: apt python3-picamera2
        except ImportError as exc:
            raise CameraError(f"picamera2 is not available ({exc}): {PICAMERA2_HINT}") from exc
        cam = None
        try:
            cam = Picamera2(self.camera_num)
            config = cam.create_video_configuration(
                # "RGB888" is B, G, R in memory (libcamera/DRM naming): converted in read()
                main={"size": (self.width, self.height), "format": "RGB888"},
                # the Pi 4's ISP gives its low-res output only as YUV420
                lores={"size": (self.detect_width, self.detect_height), "format": "YUV420"},
                controls={"FrameRate": float(self.fps)},
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:  # libcamera raises RuntimeError, IndexError, ...
            if cam is not None:
                _close_picamera2(cam)
            raise CameraError(
                f"Pi camera {self.camera_num}: cannot start ({_describe(exc)})"
            ) from exc
        self._cam = cam
        self._index = 0
        logger.info(
            "Pi camera %d open: main %dx%d, detect %dx%d, %.1f fps", self.camera_num,
            self.width, self.height, self.detect_width, self.detect_height, self.fps,
        )

    def read(self) -> Frame:
        if self._cam is None:
            raise CameraError(f"Pi camera {self.camera_num} is not open")
        try:
            request = self._cam.capture_request(wait=self.timeout_s)  # seconds; raises on timeout
        except Exception as exc:  # TimeoutError, RuntimeError from libcamera
            raise CameraError(
                f"Pi camera {self.camera_num}: no frame within {self.timeout_s:g} s "
                f"({_describe(exc)})"
            ) from exc
        try:
            main = request.make_array("main")
            lores = request.make_array("lores")
        except Exception as exc:  # any buffer fault is a camera fault
            raise CameraError(
                f"Pi camera {self.camera_num}: bad buffer ({_describe(exc)})"
            ) from exc
        finally:
            request.release()  # back to the camera, or it runs out of buffers and stalls
        image = cv2.cvtColor(main, cv2.COLOR_BGR2RGB)
        return self._frame(image, yuv420_to_rgb(lores, self.detect_width))

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            _close_picamera2(cam)


def _close_picamera2(cam: Any) -> None:
    for step in ("stop", "close"):
        try:
            getattr(cam, step)()
        except Exception as exc:  # noqa: BLE001 - a dead camera must still let us reopen
            logger.warning("Pi camera %s failed: %s", step, _describe(exc))


# --------------------------------------------------------------------------------------------
# replay (video file, image folder, glob)


def _natural_key(path: str) -> list[object]:
    """frame_2 before frame_10, the way people number pictures."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path)]


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


class ReplayCamera(_BaseCamera):
    """Plays a video file, an image folder or a glob pattern as if it were a camera.

    ``realtime`` paces frames at the video's frame rate (``fps`` for pictures) against the
    monotonic clock: nothing is dropped, a frame is delivered when due, and a consumer slower
    than the source gets frames as fast as it asks (the schedule moves on, no catch-up burst).
    Without it, frames come as fast as they decode. ``loop`` starts again at the end; otherwise
    ``read()`` returns ``None`` at the end, as for a video that ends early. A source that cannot
    be opened at all (missing, not a video, no pictures) raises ``CameraError`` in ``open()``.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        realtime: bool = True,
        loop: bool = False,
        fps: float = 15.0,
        rotate: int = 0,
        mirror: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(rotate, mirror)
        if not fps > 0:
            raise UsageError(f"replay fps must be positive, not {fps!r}")
        self.source = os.fspath(source)
        self.realtime, self.loop, self.fps = realtime, loop, float(fps)
        self.name = f"replay:{self.source}"
        self._clock, self._sleep = clock, sleep
        self.kind: str | None = None  # "video" or "images", known after open()
        self.files: list[str] = []
        self.skipped = 0  # unreadable pictures skipped (each time one is met)
        self._warned: set[str] = set()
        self._cap: Any = None
        self._position = 0  # next frame number in the file / position in the list
        self._frames_this_pass = 0
        self._rate = self.fps
        self._start: float | None = None
        self._due_index = 0
        self._ended = False

    # -- opening -------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        path = Path(self.source)
        if path.is_dir():
            files = [str(p) for p in path.iterdir() if p.is_file()
                     and p.suffix.lower() in IMAGE_SUFFIXES]
            self._open_images(files, f"folder {self.source} has no pictures")
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            self._open_images([str(path)], "")
        elif path.is_file():
            self._open_video()
        elif _has_glob(self.source):
            files = [p for p in glob.glob(self.source) if os.path.isfile(p)]
            self._open_images(files, f"pattern {self.source} matches no files")
        else:
            raise CameraError(f"replay source {self.source}: no such file or folder")
        self._index = 0
        self._start = None
        self._due_index = 0
        self._ended = False

    def _open_images(self, files: list[str], empty_message: str) -> None:
        if not files:
            raise CameraError(empty_message)
        self.kind = "images"
        self.files = sorted(files, key=_natural_key)
        self._rate = self.fps
        self._position = 0
        self._frames_this_pass = 0
        logger.info("replay: %d pictures from %s", len(self.files), self.source)

    def _open_video(self) -> None:
        cap = self._open_capture()
        rate = cap.get(cv2.CAP_PROP_FPS)
        self._rate = float(rate) if 0 < rate <= 1000 else self.fps  # nan/0: container says nothing
        self._cap = cap
        self.kind = "video"
        self._position = 0
        self._frames_this_pass = 0
        logger.info("replay: video %s at %.2f fps", self.source, self._rate)

    def _open_capture(self) -> Any:
        try:
            cap = cv2.VideoCapture(self.source)
        except cv2.error as exc:
            raise CameraError(f"video {self.source}: cannot open ({_describe(exc)})") from exc
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"video {self.source}: cannot open (not a video, or damaged)")
        return cap

    # -- reading -------------------------------------------------------------------------

    def read(self) -> Frame | None:
        if self.kind is None:
            raise CameraError(f"{self.name} is not open")
        if self._ended:
            return None
        picture = self._next_picture()
        if picture is None:
            self._ended = True
            logger.info("replay: %s ended after %d frames", self.source, self._index)
            return None
        image, source_index = picture
        if self.realtime:
            self._wait_until_due()
        return self._frame(image, source_index=source_index)

    def _next_picture(self) -> tuple[np.ndarray, int] | None:
        """(RGB picture, source index) or None at the end; restarts once per end when looping."""
        for _ in range(2):
            picture = self._next_video() if self.kind == "video" else self._next_image()
            if picture is not None:
                self._frames_this_pass += 1
                return picture
            if not self.loop or self._frames_this_pass == 0:
                return None  # the end, or a whole pass without one good picture: stop spinning
            self._restart()
        return None

    def _restart(self) -> None:
        self._position = 0
        self._frames_this_pass = 0
        if self.kind == "video":
            if self._cap is not None:
                self._cap.release()
            self._cap = None
            self._cap = self._open_capture()  # reopening is more reliable than seeking to 0

    def _next_video(self) -> tuple[np.ndarray, int] | None:
        try:
            ok, bgr = self._cap.read()
        except cv2.error as exc:  # a damaged file ends where it breaks
            logger.warning("video %s: decoding stopped at frame %d: %s",
                           self.source, self._position, exc)
            return None
        if not ok or bgr is None:
            return None
        position = self._position
        self._position += 1
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), position

    def _next_image(self) -> tuple[np.ndarray, int] | None:
        while self._position < len(self.files):
            position = self._position
            self._position += 1
            file = self.files[position]
            try:
                return load_image(file), position
            except DataError as exc:
                self.skipped += 1
                if file not in self._warned:  # once per file, not once per loop
                    self._warned.add(file)
                    logger.warning("replay: skipping unreadable picture %s: %s", file, exc)
        return None

    def _wait_until_due(self) -> None:
        now = self._clock()
        interval = 1.0 / self._rate
        if self._start is None:
            self._start = now
        due = self._start + self._due_index * interval
        if due > now:
            self._sleep(due - now)
        elif now - due > interval:
            # behind by more than a frame: restart the schedule here instead of bursting later
            self._start = now - self._due_index * interval
        self._due_index += 1

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
        self.kind = None


# --------------------------------------------------------------------------------------------
# the daemon's camera


class ResilientCamera:
    """The daemon's only camera: faults become close, back off, reopen; ``read()`` never raises.

    A door lock runs for months; cameras get unplugged, stall, or hand out broken buffers. Any
    exception from the factory, ``open()`` or ``read()`` closes the camera, reports
    ``("failed", reason)`` to ``on_state``, waits (``backoff_initial_s``, doubling up to
    ``backoff_max_s``, back to the start after a good frame) and reopens (``"reopened"``).
    Corrupt frames are skipped and counted; ``max_corrupt_in_row`` of them in a row count as a
    fault. ``read()`` returns ``None`` only when a finite source ends, or after ``stop()``.
    ``stats`` counts frames, corrupt frames, failures and reopens. Frame ``index`` is renumbered
    from 0 across reopens.

    Call ``stop()`` from any thread (signal handler, watchdog) to make a read that is backing
    off return ``None`` promptly; call ``close()`` from the reading thread.
    """

    def __init__(
        self,
        factory: Callable[[], Camera],
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[str, str], None] | None = None,
        max_corrupt_in_row: int = 50,
    ) -> None:
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise UsageError("camera backoff needs 0 < backoff_initial_s <= backoff_max_s")
        self._factory = factory
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self._sleep = sleep
        self._clock = clock
        self._on_state = on_state
        self.max_corrupt_in_row = max(1, int(max_corrupt_in_row))
        self.stats: dict[str, int] = {"frames": 0, "corrupt": 0, "failures": 0, "reopens": 0}
        self.last_error: str | None = None
        self._camera: Camera | None = None
        self._camera_name: str | None = None
        self._stop = threading.Event()
        self._delay = self.backoff_initial_s
        self._healthy = False
        self._ever_opened = False
        self._ended = False
        self._corrupt_run = 0
        self._down_since: float | None = None

    @property
    def name(self) -> str:
        return self._camera_name or "camera"

    @property
    def healthy(self) -> bool:
        """True while the camera is open and has not failed since it was (re)opened."""
        return self._healthy

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def open(self) -> None:
        """Try to open now (logs and reports a failure; ``read()`` keeps retrying). Never raises
        for camera faults: the daemon must start even with the camera unplugged."""
        if self._camera is None and not self._stop.is_set():
            self._open_camera()

    def read(self) -> Frame | None:
        while not self._stop.is_set():
            if self._ended:
                return None
            camera = self._camera
            if camera is None:
                if not self._open_camera():
                    self._backoff()
                    continue
                camera = self._camera
                assert camera is not None
            try:
                frame = camera.read()
            except Exception as exc:  # noqa: BLE001 - any fault at all: the daemon keeps running
                self._fail(f"read failed: {_describe(exc)}", exc)
                self._backoff()
                continue
            if frame is None:
                self._ended = True
                self._report("ended", f"{self.name}: source ended")
                return None
            problem = validate_frame(frame)
            if problem is not None:
                self._corrupt(problem)
                continue
            self._corrupt_run = 0
            self._delay = self.backoff_initial_s
            self._down_since = None
            self._healthy = True
            frame = replace(frame, index=self.stats["frames"])
            self.stats["frames"] += 1
            return frame
        return None

    def stop(self) -> None:
        """Make ``read()`` return None as soon as it can (a backoff wait ends at once)."""
        self._stop.set()

    def close(self) -> None:
        self._close_camera()
        self._healthy = False

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _open_camera(self) -> bool:
        camera: Camera | None = None
        try:
            camera = self._factory()
            self._camera_name = getattr(camera, "name", None) or self._camera_name
            camera.open()
        except Exception as exc:  # noqa: BLE001 - as in read(): retry whatever went wrong
            if camera is not None:
                _quiet_close(camera)
            self._fail(f"open failed: {_describe(exc)}", exc)
            return False
        self._camera = camera
        self._healthy = True
        self._corrupt_run = 0
        if self._ever_opened:
            self.stats["reopens"] += 1
            outage = "" if self._down_since is None else (
                f" after {self._clock() - self._down_since:.1f} s")
            self._report("reopened", f"{self.name} reopened{outage}")
        else:
            self._report("opened", f"{self.name} opened")
        self._ever_opened = True
        return True

    def _corrupt(self, problem: str) -> None:
        self.stats["corrupt"] += 1
        self._corrupt_run += 1
        if self._corrupt_run == 1:
            logger.warning("camera %s: skipping a corrupt frame (%s)", self.name, problem)
        if self._corrupt_run >= self.max_corrupt_in_row:
            self._fail(f"{self._corrupt_run} corrupt frames in a row (last: {problem})")
            self._backoff()

    def _fail(self, reason: str, exc: BaseException | None = None) -> None:
        self._close_camera()
        self._healthy = False
        self._corrupt_run = 0
        self.last_error = reason
        self.stats["failures"] += 1
        if self._down_since is None:
            self._down_since = self._clock()
        # CameraError is a known hardware fault; anything else is a bug worth a traceback
        logger.warning("camera %s failed: %s; retrying in %.1f s", self.name, reason, self._delay,
                       exc_info=exc is not None and not isinstance(exc, CameraError))
        self._report("failed", reason)

    def _backoff(self) -> None:
        delay = self._delay
        self._delay = min(self._delay * 2.0, self.backoff_max_s)
        if self._stop.is_set():
            return
        if self._sleep is time.sleep:
            self._stop.wait(delay)  # stop() ends the wait at once
        else:
            self._sleep(delay)

    def _close_camera(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            _quiet_close(camera)

    def _report(self, state: str, reason: str) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(state, reason)
        except Exception:  # a broken listener must not take the camera down with it
            logger.exception("camera state listener failed on %s", state)


def _quiet_close(camera: Camera) -> None:
    try:
        camera.close()
    except Exception as exc:  # noqa: BLE001 - closing a broken camera may fail in any way
        logger.warning("camera %s: close failed: %s", getattr(camera, "name", "?"), _describe(exc))
