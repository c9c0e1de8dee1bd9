"""Reading images the same way everywhere: uint8 RGB, height x width x 3.

OpenCV decodes BGR and keeps grey images single-channel; every consumer in TwinLock (detector,
aligner, model) expects RGB, so the conversion lives here once.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError, DataNotFoundError

logger = logging.getLogger(__name__)

#: the most pixels an image may have; checked from its header before it is decoded, so a small
#: file claiming 20000x20000 (1.2 GB once decoded) is skipped with a reason. 50 Mpix covers
#: today's phone cameras; a door camera's frames are far smaller.
MAX_IMAGE_PIXELS = 50_000_000
#: the largest image file read at all (checked before reading)
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: formats whose header gives the size; anything else is refused before decoding
KNOWN_FORMATS = "PNG, JPEG, BMP, TIFF, WebP, GIF or PNM"


def image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header, without decoding; None when the bytes
    are not one of KNOWN_FORMATS or the header is damaged."""
    head = data[:1 << 16] if isinstance(data, bytes) else data.reshape(-1)[:1 << 16].tobytes()
    try:
        for sniff in (_png, _jpeg, _gif, _bmp, _webp, _tiff, _pnm):
            size = sniff(head)
            if size is not None:
                return size
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _png(h: bytes) -> tuple[int, int] | None:
    if h[:8] != b"\x89PNG\r\n\x1a\n" or h[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", h[16:24])


def _jpeg(h: bytes) -> tuple[int, int] | None:
    if h[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(h):
        if h[i] != 0xFF:
            return None
        marker = h[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            i += 2
            continue
        length = struct.unpack(">H", h[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            height, width = struct.unpack(">HH", h[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def _gif(h: bytes) -> tuple[int, int] | None:
    if h[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    return struct.unpack("<HH", h[6:10])


def _bmp(h: bytes) -> tuple[int, int] | None:
    if h[:2] != b"BM":
        return None
    if struct.unpack("<I", h[14:18])[0] == 12:  # OS/2 core header
        return struct.unpack("<HH", h[18:22])
    width, height = struct.unpack("<ii", h[18:26])
    return abs(width), abs(height)


def _webp(h: bytes) -> tuple[int, int] | None:
    if h[:4] != b"RIFF" or h[8:12] != b"WEBP":
        return None
    chunk = h[12:16]
    if chunk == b"VP8X":
        return (int.from_bytes(h[24:27], "little") + 1, int.from_bytes(h[27:30], "little") + 1)
    if chunk == b"VP8L":
        bits = int.from_bytes(h[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", h[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff(h: bytes) -> tuple[int, int] | None:
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(h[:4])
    if order is None:
        return None
    offset = struct.unpack(order + "I", h[4:8])[0]
    count = struct.unpack(order + "H", h[offset:offset + 2])[0]
    found: dict[int, int] = {}
    for k in range(count):
        entry = h[offset + 2 + 12 * k:offset + 14 + 12 * k]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"),
                                       entry[8:10] if kind == 3 else entry[8:12])[0]
    return (found[256], found[257]) if len(found) == 2 else None


_PNM = re.compile(rb"P[1-6](?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)")


def _pnm(h: bytes) -> tuple[int, int] | None:
    match = _PNM.match(h)
    return (int(match.group(1)), int(match.group(2))) if match else None


def decode_image(data: bytes | np.ndarray, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, PGM, ...) to uint8 RGB; DataError if not an image."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if buf.size == 0:
        raise DataError(f"{name}: empty file")
    size = image_size(buf)
    if size is None or min(size) <= 0:
        raise DataError(f"{name}: not a readable image (no valid {KNOWN_FORMATS} header)")
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DataError(f"{name}: {size[0]}x{size[1]} pixels, over the {MAX_IMAGE_PIXELS} pixel "
                        "cap (checked before decoding); skipped")
    # ANYDEPTH|ANYCOLOR keeps 16-bit and grey like IMREAD_UNCHANGED does, but unlike it applies
    # the EXIF orientation (phone photos are stored sideways); alpha is dropped here, not in to_rgb
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error as exc:  # OpenCV's own limits, a decoder's failure
        raise DataError(f"{name}: not a readable image ({str(exc).strip().splitlines()[-1]})"
                        ) from None
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
        # O_NONBLOCK: a FIFO among the pictures must not hang a replay or an enrolment
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb", buffering=0) as handle:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DataError(f"{path}: cannot read (not a regular file)")
            if st.st_size > MAX_IMAGE_BYTES:
                raise DataError(f"{path}: {st.st_size} bytes, over the {MAX_IMAGE_BYTES} byte "
                                "cap for an image file; skipped")
            os.set_blocking(fd, True)
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(path))
