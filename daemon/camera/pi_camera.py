"""The Raspberry Pi camera through picamera2 (imported in ``open()``; Pi only), with a
full-resolution stream for crops and a small stream for the detector."""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from ..errors import CameraError, UsageError
from .base import BaseCamera, describe_error, fitted_size
from .frame import Frame

logger = logging.getLogger(__name__)

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


class Picamera2Camera(BaseCamera):
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
        main_size, lores_size = self.stream_sizes()
        try:
            cam = Picamera2(self.camera_num)
            config = cam.create_video_configuration(
                # "RGB888" is B, G, R in memory (libcamera/DRM naming): converted in read()
                main={"size": main_size, "format": "RGB888"},
                # the Pi 4's ISP gives its low-res output only as YUV420
                lores={"size": lores_size, "format": "YUV420"},
                controls={"FrameRate": float(self.fps)},
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:  # libcamera raises RuntimeError, IndexError, ...
            if cam is not None:
                _close_picamera2(cam)
            raise CameraError(
                f"Pi camera {self.camera_num}: cannot start ({describe_error(exc)})"
            ) from exc
        self._cam = cam
        self._index = 0
        logger.info(
            "Pi camera %d open: main %dx%d, detect %dx%d, %.1f fps", self.camera_num,
            *main_size, *lores_size, self.fps,
        )

    def stream_sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The main and detect streams' sizes as configured, shrunk to ``max_side`` by the ISP
        (free; base.fit_to_side), the detect stream never larger than the main one."""
        main = fitted_size(self.width, self.height, self.max_side)
        return main, fitted_size(self.detect_width, self.detect_height, max(main))

    def read(self) -> Frame:
        if self._cam is None:
            raise CameraError(f"Pi camera {self.camera_num} is not open")
        try:
            request = self._cam.capture_request(wait=self.timeout_s)  # seconds; raises on timeout
        except Exception as exc:  # TimeoutError, RuntimeError from libcamera
            raise CameraError(
                f"Pi camera {self.camera_num}: no frame within {self.timeout_s:g} s "
                f"({describe_error(exc)})"
            ) from exc
        try:
            main = request.make_array("main")
            lores = request.make_array("lores")
        except Exception as exc:  # any buffer fault is a camera fault
            raise CameraError(
                f"Pi camera {self.camera_num}: bad buffer ({describe_error(exc)})"
            ) from exc
        finally:
            request.release()  # back to the camera, or it runs out of buffers and stalls
        image = cv2.cvtColor(main, cv2.COLOR_BGR2RGB)
        return self._frame(image, yuv420_to_rgb(lores, self.stream_sizes()[1][0]))

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            _close_picamera2(cam)


def _close_picamera2(cam: Any) -> None:
    for step in ("stop", "close"):
        try:
            getattr(cam, step)()
        except Exception as exc:  # noqa: BLE001 - a dead camera must still let us reopen
            logger.warning("Pi camera %s failed: %s", step, describe_error(exc))
