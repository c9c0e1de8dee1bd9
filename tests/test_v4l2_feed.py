"""tests/vm/v4l2_feed.py on the host: the V4L2 structures and ioctl numbers it hands the kernel,
and the frames it writes (this host has no v4l2loopback; the VM test drives a real one)."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import struct
import sys
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

VM_TESTS = Path(__file__).parent / "vm"


def _load(name: str) -> ModuleType:
    """A module of tests/vm/ (collected only with a VM, so not on the import path here)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, VM_TESTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def feed_mod() -> ModuleType:
    return _load("v4l2_feed")


def test_structures_and_ioctl_numbers_match_the_kernel_headers(feed_mod: ModuleType) -> None:
    assert ctypes.sizeof(feed_mod.V4l2Capability) == 104
    assert ctypes.sizeof(feed_mod.V4l2PixFormat) == 48
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        # the numbers strace prints for these calls on x86-64 and arm64
        assert ctypes.sizeof(feed_mod.V4l2Format) == 208
        assert feed_mod.V4l2Format.fmt.offset == 8
        assert feed_mod.VIDIOC_S_FMT == 0xC0D05605
        assert feed_mod.VIDIOC_G_FMT == 0xC0D05604
    assert feed_mod.VIDIOC_QUERYCAP == 0x80685600
    assert feed_mod.fourcc("YUYV") == 0x56595559  # V4L2_PIX_FMT_YUYV
    assert feed_mod.fourcc("BGR3") == 0x33524742  # V4L2_PIX_FMT_BGR24


def test_the_output_format_is_packed_as_struct_v4l2_format(feed_mod: ModuleType) -> None:
    """The S_FMT argument, byte for byte, against struct's own packing of the header's layout:
    type, the union's padding to its 8-byte alignment, v4l2_pix_format's twelve __u32."""
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("the layout below is LP64's")
    yuyv = 0x56595559
    expected = struct.pack("=I4x12I", 2, 640, 360, yuyv, 1, 1280, 640 * 360 * 2, 8, 0, 0, 0, 0, 0)
    expected += bytes(208 - len(expected))
    assert bytes(feed_mod.output_format(640, 360, "yuyv")) == expected


def test_open_output_refuses_a_device_that_is_no_v4l2_loopback(feed_mod: ModuleType) -> None:
    with pytest.raises(OSError):  # ENOTTY: /dev/null knows no VIDIOC_QUERYCAP
        feed_mod.open_output("/dev/null", 640, 360, "yuyv")


@pytest.mark.data
def test_the_frames_written_decode_to_the_clip_as_opencv_reads_a_yuyv_camera(
        feed_mod: ModuleType, examples_dir: Path, tmp_path: Path) -> None:
    """One pass at step 3: every third frame, each written hold*fps times, YUYV that OpenCV's
    V4L2 backend's conversion (COLOR_YUV2BGR_YUYV) turns back into the clip's frame; the log
    names each frame with the time it was first written."""
    vm_guest = _load("vm_guest")
    clip = examples_dir / vm_guest.CLIP
    writes: list[bytes] = []
    now = [1000.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    progress = feed_mod.Progress(tmp_path / "progress.json", tmp_path / "shown.jsonl")
    shown = feed_mod.feed(clip, writes.append, step=3, hold_s=1.0, fps=4.0, passes=1,
                          progress=progress, clock=lambda: now[0] + 5e8,
                          monotonic=lambda: now[0], sleep=sleep)
    originals = {}
    cap = cv2.VideoCapture(str(clip))
    index = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if index % 3 == 0:
            originals[index] = bgr
        index += 1
    cap.release()
    assert [s.frame for s in shown] == sorted(originals) == list(range(0, index, 3))
    assert len(writes) == 4 * len(shown)
    times = [s.t for s in shown]
    assert times == sorted(times) and times[1] - times[0] == pytest.approx(1.0)
    height, width = originals[0].shape[:2]
    for s, data in zip(shown, writes[::4], strict=True):
        assert len(data) == width * height * 2
        back = cv2.cvtColor(np.frombuffer(data, np.uint8).reshape(height, width, 2),
                            cv2.COLOR_YUV2BGR_YUYV)
        error = np.abs(back.astype(int) - originals[s.frame]).mean()
        assert error < 2.0, (s.frame, error)  # chroma shared by pixel pairs, nothing else lost
    # the same frame is written again while it is held
    assert writes[0] == writes[3] and writes[0] != writes[4]
    log = [json.loads(line) for line in (tmp_path / "shown.jsonl").read_text().splitlines()]
    assert [(r["frame"], r["t"]) for r in log] == [(s.frame, s.t) for s in shown]
    assert json.loads((tmp_path / "progress.json").read_text())["frame"] == shown[-1].frame
    # both performers are shown, each for a while (what the VM test relates decisions to)
    assert sum(s.frame in vm_guest.MIRANDA_FRAMES for s in shown) > 30
    assert sum(s.frame in vm_guest.LACAMOIRE_FRAMES for s in shown) > 15
