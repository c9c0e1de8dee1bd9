"""USB/V4L2 webcams through ``cv2.VideoCapture`` (an index or a device path)."""

from __future__ import annotations

import logging
import os
from typing import Any

import cv2
import numpy as np

from ..errors import CameraError, DataError, UsageError
from ..faces.images import to_rgb
from .base import BaseCamera, describe_error, fit_to_side
from .frame import Frame

logger = logging.getLogger(__name__)


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


class OpenCVCamera(BaseCamera):
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
            raise CameraError(f"camera {self.device}: cannot open ({describe_error(exc)})") from exc
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"camera {self.device}: cannot open ({_why_not_open(device)})")
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
            raise CameraError(f"camera {self.device}: read failed ({describe_error(exc)})") from exc
        if not ok or bgr is None:
            raise CameraError(f"camera {self.device}: no frame (unplugged or stalled?)")
        if bgr.ndim == 3 and bgr.shape[2] == 3 and bgr.dtype == np.uint8:
            # shrunk before the colour conversion: one full-size copy fewer (base.fit_to_side)
            rgb = cv2.cvtColor(fit_to_side(bgr, self.max_side), cv2.COLOR_BGR2RGB)
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


def _why_not_open(device: int | str) -> str:
    """The reason OpenCV keeps to itself: open the node as its V4L2 backend does and name the
    error (EPERM from a unit's DevicePolicy=, EACCES without the video group, EBUSY)."""
    path = f"/dev/video{device}" if isinstance(device, int) else device
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    os.close(fd)
    return "missing, busy or not a camera"


def _to_rgb_or_raw(bgr: np.ndarray) -> np.ndarray:
    """Grey/BGRA/16-bit -> RGB; anything stranger is passed on for validate_frame to reject."""
    try:
        return to_rgb(bgr, assume_bgr=True)
    except DataError:
        return bgr
