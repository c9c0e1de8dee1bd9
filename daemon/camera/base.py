"""What the concrete cameras share: size, orientation, grey frames, numbering and time stamps.

Cameras are mounted sideways or upside down, and an IR camera's frames carry no colour; every
driver applies the same fixes to every picture it delivers, here, so no consumer has to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Self

import cv2
import numpy as np

from ..errors import UsageError
from .frame import Frame


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


#: the long side of delivered frames when ``camera.max_side`` is not set (see fit_to_side)
DEFAULT_MAX_SIDE = 1920


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled down, aspect kept, so the long side is at most ``max_side``
    (even sizes, as YUV streams need); unchanged when it already fits or ``max_side`` is None."""
    long_side = max(width, height)
    if max_side is None or long_side <= max_side:
        return width, height
    scale = max_side / long_side
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def fit_to_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` shrunk (area interpolation) to :func:`fitted_size`, or itself when it fits.

    Why: a 4K camera's frame is 25 MB of RGB, and the frame path copies it several times; the
    daemon peaked at 401 MB with one, past the unit's ``MemoryHigh=320M``. Detection runs on a
    128 px input and the crop needs no more pixels than a face at the door brings at 1920 px
    (docs/guide/at-the-door.md, camera), so frames are shrunk once, as they are captured, before
    anything else
    copies them.
    """
    height, width = image.shape[:2]
    size = fitted_size(width, height, max_side)
    if size == (width, height):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for a log line or a CameraError (the type alone when it says nothing)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_grey(image: np.ndarray) -> np.ndarray:
    """An RGB frame as grey (BT.601 luma) in all three channels: the tower and the detectors
    read RGB, and an IR camera's frames carry no colour. The accuracy this costs is measured
    by benchmarks/grey_input.py (docs/how-it-works/liveness.md)."""
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


class BaseCamera:
    """Orientation, frame numbering and time stamps shared by the concrete cameras."""

    name: str = "camera"

    def __init__(self, rotate: int = 0, mirror: bool = False) -> None:
        self.rotate = check_rotation(rotate)
        self.mirror = bool(mirror)
        #: deliver grey frames (an IR / NoIR camera under IR light): see :func:`to_grey`
        self.grey = False
        #: the long side of delivered frames (``camera.max_side``): see :func:`fit_to_side`
        self.max_side: int | None = DEFAULT_MAX_SIDE
        self._index = 0
        self._clock: Callable[[], float] = time.monotonic

    def _frame(
        self,
        image: np.ndarray,
        detect_image: np.ndarray | None = None,
        source_index: int | None = None,
    ) -> Frame:
        timestamp, wall_time = self._clock(), time.time()
        image = apply_orientation(fit_to_side(image, self.max_side), self.rotate, self.mirror)
        if detect_image is not None:
            detect_image = apply_orientation(fit_to_side(detect_image, self.max_side),
                                             self.rotate, self.mirror)
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
