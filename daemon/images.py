"""Reading images the same way everywhere: uint8 RGB, height x width x 3.

OpenCV decodes BGR and keeps grey images single-channel; every consumer in TwinLock (detector,
aligner, model) expects RGB, so the conversion lives here once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError, DataNotFoundError

logger = logging.getLogger(__name__)


def decode_image(data: bytes | np.ndarray, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, PGM, ...) to uint8 RGB; DataError if not an image."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if buf.size == 0:
        raise DataError(f"{name}: empty file")
    # ANYDEPTH|ANYCOLOR keeps 16-bit and grey like IMREAD_UNCHANGED does, but unlike it applies
    # the EXIF orientation (phone photos are stored sideways); alpha is dropped here, not in to_rgb
    image = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None:
        raise DataError(f"{name}: not a readable image")
    return to_rgb(image, assume_bgr=True)


def to_rgb(image: np.ndarray, assume_bgr: bool = False) -> np.ndarray:
    """Any 2-D grey, 3-channel or 4-channel array -> contiguous uint8 RGB."""
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        else:
            raise DataError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise DataError(f"unsupported image shape {image.shape}")
    if image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if image.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB if assume_bgr else cv2.COLOR_RGBA2RGB
        return cv2.cvtColor(image, code)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if assume_bgr else np.ascontiguousarray(image)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB. DataNotFoundError / DataError name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(path))
