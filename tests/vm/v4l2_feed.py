"""Feeds the real clip to a v4l2loopback device, as a USB webcam delivers frames (tests/vm).

Run in the guest by root, outside the door's unit, with the door's own venv Python (cv2, numpy):

    /opt/twinlock/venv/bin/python v4l2_feed.py --device /dev/video0 --clip CLIP \\
        --step 2 --hold 1.0 --fps 5 --progress feed/progress.json --log feed/shown.jsonl

The clip is decoded with cv2, every ``step``-th frame is converted to YUYV (packed 4:2:2, what a
USB webcam sends and what OpenCV's V4L2 backend converts with ``COLOR_YUV2BGR_YUYV``) and written
to the device with write(2) ``fps`` times a second for ``hold`` seconds, in a loop. The emulated
guest judges about 1.5 frames a second, so a frame held for a second is seen at least once, and
the writes keep coming faster than the camera's read timeout (camera.read_timeout_s). Each frame
shown is logged with its wall-clock time, so a test can tell which frame of the clip the door
was looking at when it decided.

The format is set with VIDIOC_S_FMT on the OUTPUT side before the first write; with
``exclusive_caps=1`` the device announces V4L2_CAP_VIDEO_CAPTURE (which OpenCV requires) only once
a writer has written, so the feeder must run before the camera is opened.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# ---- ioctl numbers: include/uapi/asm-generic/ioctl.h (x86 and arm use the generic layout) ----
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)``: the request number of an ioctl."""
    return ((direction << _IOC_DIRSHIFT) | (ord(kind) << _IOC_TYPESHIFT)
            | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


# ---- structures: include/uapi/linux/videodev2.h --------------------------------------------
class V4l2Capability(ctypes.Structure):
    """``struct v4l2_capability`` (104 bytes)."""

    _fields_ = [("driver", ctypes.c_char * 16), ("card", ctypes.c_char * 32),
                ("bus_info", ctypes.c_char * 32), ("version", ctypes.c_uint32),
                ("capabilities", ctypes.c_uint32), ("device_caps", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32 * 3)]


class V4l2PixFormat(ctypes.Structure):
    """``struct v4l2_pix_format`` (12 x __u32; ``ycbcr_enc`` shares its place with ``hsv_enc``)."""

    _fields_ = [(name, ctypes.c_uint32) for name in (
        "width", "height", "pixelformat", "field", "bytesperline", "sizeimage", "colorspace",
        "priv", "flags", "ycbcr_enc", "quantization", "xfer_func")]


class _V4l2FormatUnion(ctypes.Union):
    """``v4l2_format.fmt``: 200 raw bytes, aligned as its ``struct v4l2_window`` member, which
    holds pointers (``clips``, ``bitmap``): 8 bytes on a 64-bit kernel, so ``fmt`` starts at
    offset 8 and the whole struct is 208 bytes there (204 on 32-bit ARM)."""

    _fields_ = [("pix", V4l2PixFormat), ("raw_data", ctypes.c_uint8 * 200),
                ("_window_alignment", ctypes.c_void_p)]


class V4l2Format(ctypes.Structure):
    """``struct v4l2_format``: ``__u32 type`` and the union."""

    _fields_ = [("type", ctypes.c_uint32), ("fmt", _V4l2FormatUnion)]


#: ``_IOR('V', 0, struct v4l2_capability)``, ``_IOWR('V', 4/5, struct v4l2_format)``
VIDIOC_QUERYCAP = _ioc(_IOC_READ, "V", 0, ctypes.sizeof(V4l2Capability))
VIDIOC_G_FMT = _ioc(_IOC_READ | _IOC_WRITE, "V", 4, ctypes.sizeof(V4l2Format))
VIDIOC_S_FMT = _ioc(_IOC_READ | _IOC_WRITE, "V", 5, ctypes.sizeof(V4l2Format))

V4L2_BUF_TYPE_VIDEO_OUTPUT = 2  # enum v4l2_buf_type
V4L2_FIELD_NONE = 1  # enum v4l2_field: progressive
V4L2_COLORSPACE_SRGB = 8  # enum v4l2_colorspace
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_VIDEO_OUTPUT = 0x00000002


def fourcc(code: str) -> int:
    """``v4l2_fourcc(a, b, c, d)``: the four characters, least significant byte first."""
    a, b, c, d = (ord(ch) for ch in code)
    return a | (b << 8) | (c << 16) | (d << 24)


#: name -> (V4L2 pixel format, bytes per pixel); both are in v4l2loopback's format list and in
#: OpenCV's (cap_v4l.cpp tries BGR24 first, YUYV later, and takes what the device answers)
FORMATS: dict[str, tuple[int, int]] = {
    "yuyv": (fourcc("YUYV"), 2),  # V4L2_PIX_FMT_YUYV
    "bgr24": (fourcc("BGR3"), 3),  # V4L2_PIX_FMT_BGR24
}


def to_pixels(bgr: np.ndarray, fmt: str) -> bytes:
    """One decoded BGR frame as the device's bytes (YUYV: OpenCV's BT.601 conversion, the
    inverse of what its V4L2 backend applies to a YUYV camera)."""
    if bgr.shape[1] % 2:  # YUYV carries two pixels per 4 bytes
        bgr = bgr[:, :-1]
    if fmt == "yuyv":
        return bytes(cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YUV_YUYV))
    if fmt == "bgr24":
        return bytes(np.ascontiguousarray(bgr))
    raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def output_format(width: int, height: int, fmt: str) -> V4l2Format:
    """The VIDIOC_S_FMT argument for the OUTPUT side (the writer's): size and pixel format."""
    pixelformat, depth = FORMATS[fmt]
    f = V4l2Format()
    f.type = V4L2_BUF_TYPE_VIDEO_OUTPUT
    pix = f.fmt.pix
    pix.width, pix.height, pix.pixelformat = width, height, pixelformat
    pix.field = V4L2_FIELD_NONE
    pix.bytesperline = width * depth
    pix.sizeimage = width * height * depth
    pix.colorspace = V4L2_COLORSPACE_SRGB
    return f


def open_output(device: str, width: int, height: int, fmt: str) -> int:
    """Open ``device`` as the writer and set its format; fails unless the device took it as
    asked (v4l2loopback falls back to another format or keeps a running reader's silently)."""
    fd = os.open(device, os.O_RDWR)
    try:
        cap = V4l2Capability()
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, cap, True)
        if cap.driver != b"v4l2 loopback":
            raise OSError(f"{device} is {cap.driver!r}, not a v4l2loopback device")
        want = output_format(width, height, fmt)
        got = output_format(width, height, fmt)
        fcntl.ioctl(fd, VIDIOC_S_FMT, got, True)
        w, g = want.fmt.pix, got.fmt.pix
        if (g.width, g.height, g.pixelformat, g.bytesperline) != \
                (w.width, w.height, w.pixelformat, w.bytesperline) or g.sizeimage < w.sizeimage:
            raise OSError(f"{device} took {g.width}x{g.height} fourcc {g.pixelformat:#x} "
                          f"bytesperline {g.bytesperline} sizeimage {g.sizeimage}, not "
                          f"{w.width}x{w.height} {fmt}")
        return fd
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class Shown:
    """A frame of the clip on the device from ``t`` (wall clock, as the audit log's ``ts``)."""

    frame: int
    pass_no: int
    t: float


def frames(clip: Path, step: int) -> Iterator[tuple[int, np.ndarray]]:
    """Every ``step``-th frame of the clip with its index (the others are skipped undecoded)."""
    cap = cv2.VideoCapture(str(clip))
    if not cap.isOpened():
        raise OSError(f"cannot open the clip {clip}")
    try:
        index = 0
        while True:
            if index % step == 0:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    return
                yield index, bgr
            elif not cap.grab():
                return
            index += 1
    finally:
        cap.release()


class Progress:
    """Where the feed is: ``progress`` (JSON, replaced atomically: the frame shown now) and
    ``log`` (one JSON line per frame shown, appended)."""

    def __init__(self, progress: Path | None, log: Path | None) -> None:
        self.progress, self.log = progress, log

    def shown(self, shown: Shown) -> None:
        line = json.dumps({"frame": shown.frame, "pass": shown.pass_no, "t": shown.t,
                           "pid": os.getpid()})
        if self.log is not None:
            with self.log.open("a") as out:
                out.write(line + "\n")
        if self.progress is not None:
            tmp = self.progress.with_name(self.progress.name + ".tmp")
            tmp.write_text(line + "\n")
            os.replace(tmp, self.progress)


def feed(clip: Path, write: Callable[[bytes], object], *, fmt: str = "yuyv", step: int = 2,
         hold_s: float = 1.0, fps: float = 5.0, passes: int = 0,
         progress: Progress | None = None, clock: Callable[[], float] = time.time,
         monotonic: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> list[Shown]:
    """Show the clip ``passes`` times (0: until killed); returns what was shown (kept only for
    a finite run)."""
    if step < 1 or hold_s <= 0 or fps <= 0:
        raise ValueError("step must be >= 1, hold and fps > 0")
    writes = max(1, round(hold_s * fps))
    period = 1.0 / fps
    shown: list[Shown] = []
    pass_no = 0
    next_write = monotonic()
    while passes == 0 or pass_no < passes:
        pass_no += 1
        count = 0
        for index, bgr in frames(clip, step):
            data = to_pixels(bgr, fmt)
            for k in range(writes):
                delay = next_write - monotonic()
                if delay > 0:
                    sleep(delay)
                # after a stall (a busy emulated CPU), pace from now instead of catching up
                next_write = max(next_write + period, monotonic())
                write(data)
                if k == 0:
                    now = Shown(index, pass_no, clock())
                    if progress is not None:
                        progress.shown(now)
                    if passes:
                        shown.append(now)
            count += 1
        if count == 0:
            raise OSError(f"no frame decoded from {clip}")
    return shown


def _clip_size(clip: Path) -> tuple[int, int]:
    _, bgr = next(frames(clip, 1))
    return bgr.shape[1] - bgr.shape[1] % 2, bgr.shape[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", default="/dev/video0")
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--format", choices=sorted(FORMATS), default="yuyv")
    parser.add_argument("--step", type=int, default=2, help="show every STEP-th frame")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds each frame is shown")
    parser.add_argument("--fps", type=float, default=5.0, help="writes a second")
    parser.add_argument("--passes", type=int, default=0, help="0: loop until killed")
    parser.add_argument("--progress", type=Path, help="JSON file: the frame shown now")
    parser.add_argument("--log", type=Path, help="JSON lines: every frame shown, with its time")
    args = parser.parse_args(argv)
    width, height = _clip_size(args.clip)
    fd = open_output(args.device, width, height, args.format)
    print(f"v4l2_feed: {args.device} {width}x{height} {args.format}: frames 0, {args.step}, "
          f"{2 * args.step}, ... each for {args.hold} s at {args.fps} writes/s", flush=True)

    def write(data: bytes) -> None:
        done = os.write(fd, data)
        if done != len(data):
            raise OSError(f"short write to {args.device}: {done} of {len(data)} bytes")

    try:
        feed(args.clip, write, fmt=args.format, step=args.step, hold_s=args.hold, fps=args.fps,
             passes=args.passes, progress=Progress(args.progress, args.log))
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
