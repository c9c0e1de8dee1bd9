"""A camera's picture as every consumer expects it, the interface every camera has, and the
check that a driver's buffer is a usable picture before anything looks at its pixels.

Every camera turns its device's pictures into the same ``Frame`` (uint8 RGB, oriented as
configured, numbered and time-stamped) behind a four-member interface (``name``, ``open``,
``read``, ``close``). Faults are ``CameraError``; ``read()`` returns ``None`` only when a finite
source (a video, a folder) has ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..faces.types import Face

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
