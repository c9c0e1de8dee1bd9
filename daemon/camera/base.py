"""What the concrete cameras share: orientation, grey frames, numbering and time stamps.

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


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for a log line or a CameraError (the type alone when it says nothing)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_grey(image: np.ndarray) -> np.ndarray:
    """An RGB frame as grey (BT.601 luma) in all three channels: the tower and the detectors
    read RGB, and an IR camera's frames carry no colour. The accuracy this costs is measured
    by benchmarks/grey_input.py (README "Liveness")."""
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


class BaseCamera:
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
