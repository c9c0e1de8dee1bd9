"""Tests for twinlock.daemon.camera: replay on real files, faults, backoff and orientation.

The replay camera plays the real example clip and real picture files; faults come from small
fake cameras with real behaviour (numbered frames, scripted failures), never from Mock().
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from twinlock.daemon.camera.base import apply_orientation
from twinlock.daemon.camera.frame import Camera, Frame, validate_frame
from twinlock.daemon.camera.opencv import OpenCVCamera
from twinlock.daemon.camera.pi_camera import Picamera2Camera, yuv420_to_rgb
from twinlock.daemon.camera.replay import ReplayCamera
from twinlock.daemon.camera.resilient import ResilientCamera
from twinlock.daemon.errors import CameraError, TwinLockError, UsageError
from twinlock.daemon.faces.types import Face

CLIP = "short_hamilton_clip.mp4"
CLIP_FRAMES = 275
CLIP_FPS = 29.97


@pytest.fixture(scope="module")
def clip(examples_dir: Path) -> Path:
    return examples_dir / CLIP


def read_all(camera: Camera, limit: int = 10_000) -> list[Frame]:
    frames = []
    for _ in range(limit):
        frame = camera.read()
        if frame is None:
            return frames
        frames.append(frame)
    raise AssertionError(f"camera did not end within {limit} frames")


# --------------------------------------------------------------------------------------------
# replay: the real clip


def test_replay_plays_the_whole_clip_as_rgb_then_ends(clip: Path) -> None:
    camera = ReplayCamera(clip, realtime=False)
    camera.open()
    try:
        frames = read_all(camera)
        assert camera.read() is None  # stays ended
    finally:
        camera.close()
    assert len(frames) == CLIP_FRAMES
    assert [f.source_index for f in frames] == list(range(CLIP_FRAMES))
    assert [f.index for f in frames] == list(range(CLIP_FRAMES))
    assert all(f.image.shape == (360, 640, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(validate_frame(f) is None for f in frames)
    assert all(b.timestamp >= a.timestamp for a, b in itertools.pairwise(frames))
    # RGB, not OpenCV's BGR: compare with a plain decode of the first frame
    cap = cv2.VideoCapture(str(clip))
    ok, bgr = cap.read()
    cap.release()
    assert ok
    np.testing.assert_array_equal(frames[0].image, bgr[:, :, ::-1])


def test_replay_paces_frames_at_the_videos_rate(clip: Path) -> None:
    camera = ReplayCamera(clip, realtime=True)
    camera.open()
    try:
        start = time.monotonic()
        frames = [camera.read() for _ in range(10)]
        elapsed = time.monotonic() - start
    finally:
        camera.close()
    assert all(f is not None for f in frames)
    nominal = 9 / CLIP_FPS  # the first frame is due at once, then one every 1/29.97 s
    assert elapsed >= 0.8 * nominal, f"10 frames in {elapsed:.3f} s, nominal {nominal:.3f} s"


class FakeClock:
    """A monotonic clock that only moves when slept on (or when a test moves it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def test_replay_pacing_sleeps_until_due_and_does_not_burst_after_a_slow_consumer(
    tmp_path: Path,
) -> None:
    folder = write_pictures(tmp_path, 6)
    clock = FakeClock()
    camera = ReplayCamera(folder, realtime=True, fps=10, clock=clock, sleep=clock.sleep)
    camera.open()
    stamps = [camera.read().timestamp for _ in range(3)]  # type: ignore[union-attr]
    assert stamps == pytest.approx([100.0, 100.1, 100.2])
    clock.now += 2.0  # the consumer took 2 s over one frame: the next is overdue, no sleep
    late = camera.read()
    assert late is not None and late.timestamp == pytest.approx(102.2)
    assert camera.read().timestamp == pytest.approx(102.3)  # type: ignore[union-attr]
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])  # no catch-up burst, nothing dropped
    assert late.source_index == 3


def test_replay_loop_restarts_a_video(clip: Path) -> None:
    camera = ReplayCamera(clip, realtime=False, loop=True)
    camera.open()
    try:
        frames = [camera.read() for _ in range(CLIP_FRAMES + 5)]
    finally:
        camera.close()
    sources = [f.source_index for f in frames]  # type: ignore[union-attr]
    assert sources[CLIP_FRAMES - 1:] == [CLIP_FRAMES - 1, 0, 1, 2, 3, 4]
    assert frames[-1].index == CLIP_FRAMES + 4  # type: ignore[union-attr]
    first, again = frames[0], frames[CLIP_FRAMES]
    assert first is not None and again is not None
    np.testing.assert_array_equal(first.image, again.image)


def test_replay_of_a_missing_source_raises_camera_error(tmp_path: Path) -> None:
    for source in (tmp_path / "nothing.mp4", tmp_path / "none-*.png"):
        with pytest.raises(CameraError):
            ReplayCamera(source, realtime=False).open()
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    with pytest.raises(CameraError, match="cannot open"):
        ReplayCamera(not_video, realtime=False).open()
    assert issubclass(CameraError, TwinLockError) and issubclass(CameraError, OSError)


# --------------------------------------------------------------------------------------------
# replay: pictures

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50), (10, 20, 30), (90, 90, 90)]


def write_pictures(folder: Path, count: int, corrupt: bool = False) -> Path:
    """frame_1.png ... frame_N.png, each one RGB colour (natural order: 2 before 10)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rgb = np.zeros((24, 32, 3), np.uint8)
        rgb[:] = COLOURS[i % len(COLOURS)]
        assert cv2.imwrite(str(folder / f"frame_{i + 1}.png"), rgb[:, :, ::-1])
    if corrupt:
        (folder / "frame_2b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")
    (folder / "SOURCE.md").write_text("not a picture: ignored quietly")
    return folder


def test_replay_folder_plays_pictures_in_order_and_skips_a_corrupt_one(tmp_path: Path) -> None:
    folder = write_pictures(tmp_path / "pics", 3, corrupt=True)
    camera = ReplayCamera(folder, realtime=False)
    camera.open()
    frames = read_all(camera)
    assert [tuple(f.image[0, 0]) for f in frames] == COLOURS[:3]  # RGB order kept
    assert [Path(p).name for p in camera.files] == [
        "frame_1.png", "frame_2.png", "frame_2b.jpg", "frame_3.png"
    ]
    assert [f.source_index for f in frames] == [0, 1, 3]  # position in the list: gap at the bad one
    assert camera.skipped == 1


def test_replay_folder_loop_restarts(tmp_path: Path) -> None:
    camera = ReplayCamera(write_pictures(tmp_path / "pics", 3, corrupt=True), realtime=False,
                          loop=True)
    camera.open()
    frames = [camera.read() for _ in range(7)]
    assert [f.source_index for f in frames] == [0, 1, 3, 0, 1, 3, 0]  # type: ignore[union-attr]
    assert camera.skipped == 2  # met once per pass


def test_replay_folder_of_only_unreadable_pictures_ends_even_when_looping(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"junk")
    camera = ReplayCamera(tmp_path, realtime=False, loop=True)
    camera.open()
    assert camera.read() is None
    assert camera.skipped == 1


def test_replay_glob_pattern(tmp_path: Path) -> None:
    write_pictures(tmp_path, 4)
    (tmp_path / "frame_9.jpg").write_bytes(b"not matched by the pattern")
    camera = ReplayCamera(str(tmp_path / "frame_*.png"), realtime=False)
    camera.open()
    frames = read_all(camera)
    assert [tuple(f.image[0, 0]) for f in frames] == COLOURS[:4]
    assert camera.skipped == 0


# --------------------------------------------------------------------------------------------
# replay: damaged videos, in a child process so a hang or a crash cannot take pytest down

DAMAGED_CHILD = textwrap.dedent("""
    import json, sys
    from twinlock.daemon.camera.replay import ReplayCamera
    from twinlock.daemon.errors import CameraError
    results = {}
    for path in sys.argv[1:]:
        camera = ReplayCamera(path, realtime=False)
        try:
            camera.open()
        except CameraError as exc:
            results[path] = ["open-error", str(exc)]
            continue
        count = 0
        while camera.read() is not None:
            count += 1
        results[path] = ["ended", count]
        camera.close()
    print(json.dumps(results))
""")


def write_mjpeg_avi(path: Path, frames: int) -> bool:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    if not writer.isOpened():
        return False
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 5 % 256, np.uint8))
    writer.release()
    return path.stat().st_size > 0


def test_replay_of_truncated_videos_fails_cleanly(clip: Path, tmp_path: Path) -> None:
    """A cut-off mp4 (moov atom at the end, so 40 % of it has no index) cannot be opened:
    CameraError at open. A cut-off AVI (index-free header first) plays what it has and ends
    early with None. Neither hangs nor crashes the process."""
    data = clip.read_bytes()
    truncated_mp4 = tmp_path / "truncated.mp4"
    truncated_mp4.write_bytes(data[: len(data) * 40 // 100])
    avi = tmp_path / "whole.avi"
    assert write_mjpeg_avi(avi, 40), "OpenCV could not write an MJPG AVI"
    truncated_avi = tmp_path / "truncated.avi"
    truncated_avi.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])
    paths = [str(truncated_mp4), str(avi), str(truncated_avi)]
    result = subprocess.run(
        [sys.executable, "-c", DAMAGED_CHILD, *paths],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome[str(truncated_mp4)][0] == "open-error"
    assert "cannot open" in outcome[str(truncated_mp4)][1]
    assert outcome[str(avi)] == ["ended", 40]
    state, count = outcome[str(truncated_avi)]
    assert state == "ended" and 0 < count < 40


# --------------------------------------------------------------------------------------------
# frames: validation, orientation, detect stream


def good_image(value: int = 7) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (None, "empty"),
        (np.zeros((0, 0, 3), np.uint8), "zero-size"),
        (np.zeros((4, 6, 3), np.float32), "bad-dtype"),
        (np.zeros((4, 6), np.uint8), "bad-shape"),
        (np.zeros((4, 6, 4), np.uint8), "bad-shape"),
        (good_image(), None),
    ],
)
def test_validate_frame_names_the_problem(image: np.ndarray | None, reason: str | None) -> None:
    assert validate_frame(Frame(image)) == reason  # type: ignore[arg-type]


def test_validate_frame_checks_the_detect_image_and_none() -> None:
    assert validate_frame(None) == "empty"
    assert validate_frame(Frame(good_image(), np.zeros((2, 3), np.uint8))) == "bad-shape"
    assert validate_frame(Frame(good_image(), good_image())) is None


def test_apply_orientation_rotates_clockwise_then_mirrors() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(apply_orientation(image, 0, False), image)
    np.testing.assert_array_equal(apply_orientation(image, 90), np.rot90(image, k=-1))
    np.testing.assert_array_equal(apply_orientation(image, 180), image[::-1, ::-1])
    np.testing.assert_array_equal(apply_orientation(image, 270), np.rot90(image, k=1))
    np.testing.assert_array_equal(apply_orientation(image, 0, True), image[:, ::-1])
    rotated_mirrored = np.rot90(image, k=-1)[:, ::-1]
    np.testing.assert_array_equal(apply_orientation(image, 90, True), rotated_mirrored)
    np.testing.assert_array_equal(apply_orientation(image, -90), np.rot90(image, k=1))
    for bad in (45, 1, True):
        with pytest.raises(UsageError):
            apply_orientation(image, bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        ReplayCamera("x.mp4", rotate=30)


def test_replay_applies_rotation_and_mirror(tmp_path: Path) -> None:
    folder = tmp_path / "pic"
    folder.mkdir()
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)  # a red pixel in the top-left corner
    cv2.imwrite(str(folder / "a.png"), rgb[:, :, ::-1])
    camera = ReplayCamera(folder, realtime=False, rotate=90, mirror=True)
    camera.open()
    frame = camera.read()
    assert frame is not None and frame.image.shape == (30, 20, 3)
    # rotated clockwise the corner goes to the top right; the mirror brings it back to the left
    assert tuple(frame.image[0, 0]) == (255, 0, 0)


def test_frame_maps_faces_from_the_detect_image() -> None:
    frame = Frame(np.zeros((720, 1280, 3), np.uint8), np.zeros((180, 320, 3), np.uint8))
    assert frame.detect_scale == 4.0
    assert frame.detect_input is frame.detect_image
    landmarks = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.float32)
    face = Face((10.0, 20.0, 30.0, 40.0), landmarks, 0.9)
    mapped = frame.to_image_coords(face)
    assert mapped.box == (40.0, 80.0, 120.0, 160.0)
    np.testing.assert_allclose(mapped.landmarks, face.landmarks * 4)
    plain = Frame(np.zeros((10, 10, 3), np.uint8))
    assert plain.detect_scale == 1.0 and plain.to_image_coords(face) is face


# --------------------------------------------------------------------------------------------
# device cameras (no hardware here: only their failure paths)


def test_opencv_camera_on_a_missing_device_raises_camera_error() -> None:
    with pytest.raises(CameraError, match="no such device"):
        OpenCVCamera("/dev/v4l/by-id/usb-TwinLock_No_Such_Camera-video-index0").open()
    camera = OpenCVCamera(97)  # an index no machine running the tests has
    # the error OpenCV keeps to itself is named (under a unit's DevicePolicy=: EPERM)
    with pytest.raises(CameraError, match="cannot open .*/dev/video97: No such file"):
        camera.open()
    with pytest.raises(CameraError, match="not open"):
        camera.read()
    camera.close()  # closing a camera that never opened is fine


def test_picamera2_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    camera = Picamera2Camera(640, 480, 320, 240, 15)
    with pytest.raises(CameraError) as info:
        camera.open()
    message = str(info.value)
    assert "python3-picamera2" in message
    assert "--system-site-packages" in message


def test_yuv420_with_stride_padding_converts_like_unpadded() -> None:
    """picamera2 returns lores YUV420 as (h*3/2, stride) with padding at the right of every
    plane row; converting at the stride width and cropping must give the unpadded result."""
    h, w, stride = 48, 64, 80
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=2).astype(np.uint8)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # (72, 64): Y, then U, then V
    flat = i420.reshape(-1)
    y = flat[: h * w].reshape(h, w)
    u = flat[h * w: h * w * 5 // 4].reshape(h // 2, w // 2)
    v = flat[h * w * 5 // 4:].reshape(h // 2, w // 2)

    def pad(plane: np.ndarray, width: int) -> np.ndarray:
        return np.pad(plane, ((0, 0), (0, width - plane.shape[1])), constant_values=77)

    padded = np.concatenate(
        [pad(y, stride).ravel(), pad(u, stride // 2).ravel(), pad(v, stride // 2).ravel()]
    ).reshape(h * 3 // 2, stride)
    expected = cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)
    converted = yuv420_to_rgb(padded, w)
    assert converted.shape == (h, w, 3) and converted.flags.c_contiguous
    np.testing.assert_array_equal(converted, expected)
    with pytest.raises(CameraError):
        yuv420_to_rgb(np.zeros((10, 64), np.uint8), 64)


# --------------------------------------------------------------------------------------------
# ResilientCamera with fake cameras


class ScriptedCamera:
    """A fake camera with real behaviour: numbered frames, a scripted fault, an optional end.

    Each frame's pixels hold (session, frame number) so a test can tell where it came from.
    """

    def __init__(
        self,
        session: int,
        fail_open: bool = False,
        fail_after: int | None = None,
        end_after: int | None = None,
        images: list[np.ndarray | None] | None = None,
    ) -> None:
        self.name = f"fake-{session}"
        self.session = session
        self.fail_open, self.fail_after, self.end_after = fail_open, fail_after, end_after
        self.images = images
        self.opened = self.closed = False
        self.count = 0

    def open(self) -> None:
        if self.fail_open:
            raise CameraError(f"{self.name}: no such device")
        self.opened = True

    def read(self) -> Frame | None:
        assert self.opened and not self.closed, "read on a camera that is not open"
        if self.fail_after is not None and self.count >= self.fail_after:
            raise CameraError(f"{self.name}: read failed")
        if self.images is not None:
            if self.count >= len(self.images):
                return None
            image = self.images[self.count]
        elif self.end_after is not None and self.count >= self.end_after:
            return None
        else:
            image = np.full((4, 6, 3), 0, np.uint8)
            image[..., 0], image[..., 1] = self.session, self.count
        self.count += 1
        return Frame(image, index=self.count - 1)  # type: ignore[arg-type]

    def close(self) -> None:
        self.closed = True


def scripted_factory(*scripts: dict[str, object]) -> tuple[Callable[[], ScriptedCamera],
                                                          list[ScriptedCamera]]:
    """A factory making one ScriptedCamera per call from ``scripts`` (the last one repeats)."""
    made: list[ScriptedCamera] = []

    def factory() -> ScriptedCamera:
        script = scripts[min(len(made), len(scripts) - 1)]
        made.append(ScriptedCamera(len(made), **script))  # type: ignore[arg-type]
        return made[-1]

    return factory, made


def test_resilient_camera_reopens_with_doubling_capped_backoff() -> None:
    factory, made = scripted_factory(
        {"fail_after": 5},  # session 0: 5 frames, then reads fail
        {"fail_open": True}, {"fail_open": True}, {"fail_open": True},  # unplugged for a while
        {"fail_after": 3},  # session 4: 3 frames, then fails again
        {"end_after": 4},  # session 5: 4 frames, then the (finite) source ends
    )
    sleeps: list[float] = []
    states: list[tuple[str, str]] = []
    camera = ResilientCamera(factory, backoff_initial_s=0.5, backoff_max_s=2.0, sleep=sleeps.append,
                             on_state=lambda state, reason: states.append((state, reason)))
    camera.open()
    frames = read_all(camera)
    assert camera.read() is None
    origin = [(int(f.image[0, 0, 0]), int(f.image[0, 0, 1])) for f in frames]
    expected = [(0, i) for i in range(5)] + [(4, i) for i in range(3)] + [(5, i) for i in range(4)]
    assert origin == expected  # (session, frame): sessions 1-3 never opened
    assert [f.index for f in frames] == list(range(12))  # renumbered across reopens
    # 0.5 doubling to the 2.0 cap while it stays down; back to 0.5 after good frames
    assert sleeps == [0.5, 1.0, 2.0, 2.0, 0.5]
    assert camera.stats == {"frames": 12, "corrupt": 0, "failures": 5, "reopens": 2}
    assert [s for s, _ in states] == ["opened", "failed", "failed", "failed", "failed",
                                      "reopened", "failed", "reopened", "ended"]
    assert "read failed" in states[1][1] and "open failed" in states[2][1]
    assert camera.last_error is not None and "fake-4: read failed" in camera.last_error
    assert all(cam.closed for cam in made[:-1])  # every failed camera was closed
    assert len(made) == 6 and not made[-1].closed  # an ended source stays open until close()
    camera.close()
    assert made[-1].closed and not camera.healthy


def test_resilient_camera_backoff_stays_at_the_cap_and_health_follows() -> None:
    factory, made = scripted_factory({"fail_open": True})
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 8:
            camera.stop()

    camera = ResilientCamera(factory, backoff_initial_s=1.0, backoff_max_s=5.0, sleep=sleep)
    assert camera.read() is None  # returns only because stop() was called
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    assert not camera.healthy and camera.stats["failures"] == 8
    assert len(made) == 8 and all(cam.closed for cam in made)  # failed opens are closed too
    assert "open failed" in (camera.last_error or "")


def test_resilient_camera_skips_and_counts_corrupt_frames() -> None:
    images: list[np.ndarray | None] = [
        good_image(1), None, np.zeros((0, 6, 3), np.uint8), np.zeros((4, 6, 3), np.float64),
        np.zeros((4, 6), np.uint8), good_image(2),
    ]
    factory, _ = scripted_factory({"images": images})
    camera = ResilientCamera(factory, sleep=lambda s: None)
    first, second = camera.read(), camera.read()
    assert first is not None and second is not None
    assert (int(first.image[0, 0, 0]), int(second.image[0, 0, 0])) == (1, 2)
    assert camera.read() is None  # the list ended
    assert camera.stats == {"frames": 2, "corrupt": 4, "failures": 0, "reopens": 0}
    assert camera.healthy


def test_resilient_camera_treats_endless_corrupt_frames_as_a_fault() -> None:
    factory, made = scripted_factory({"images": [None] * 100}, {"end_after": 2})
    sleeps: list[float] = []
    camera = ResilientCamera(factory, sleep=sleeps.append, max_corrupt_in_row=3)
    frames = read_all(camera)
    assert len(frames) == 2 and sleeps == [0.5]
    assert camera.stats["corrupt"] == 3 and camera.stats["reopens"] == 1
    assert "corrupt frames in a row" in (camera.last_error or "")
    assert made[0].closed


def test_resilient_camera_survives_any_exception_and_a_broken_listener() -> None:
    class Exploding(ScriptedCamera):
        def read(self) -> Frame | None:
            raise ZeroDivisionError("a driver bug, not a CameraError")

    made: list[ScriptedCamera] = []

    def factory() -> ScriptedCamera:
        made.append(Exploding(0) if not made else ScriptedCamera(1, end_after=1))
        return made[-1]

    def listener(state: str, reason: str) -> None:
        raise RuntimeError("listener bug")

    camera = ResilientCamera(factory, sleep=lambda s: None, on_state=listener)
    frame = camera.read()
    assert frame is not None and int(frame.image[0, 0, 0]) == 1
    assert "ZeroDivisionError" in (camera.last_error or "")


def test_resilient_camera_stop_interrupts_a_backoff_wait_promptly() -> None:
    factory, _ = scripted_factory({"fail_open": True})
    camera = ResilientCamera(factory, backoff_initial_s=30.0, backoff_max_s=60.0)  # real waits
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(camera.read()), daemon=True)
    start = time.monotonic()
    reader.start()
    time.sleep(0.2)
    assert reader.is_alive()  # waiting out the 30 s backoff
    camera.stop()
    reader.join(timeout=5.0)
    assert not reader.is_alive(), "stop() did not end the backoff wait"
    assert result == [None]
    assert time.monotonic() - start < 5.0
    assert camera.stopped and camera.read() is None


def test_resilient_camera_over_a_real_replay_with_a_fault_in_the_middle(clip: Path) -> None:
    """The real clip through ResilientCamera, with the file taken away mid-stream and back."""
    broken = {"now": False}

    class Unpluggable(ReplayCamera):
        def read(self) -> Frame | None:
            if broken["now"]:
                raise CameraError("unplugged")
            return super().read()

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        broken["now"] = len(sleeps) < 3  # back after the third wait

    camera = ResilientCamera(lambda: Unpluggable(clip, realtime=False), sleep=sleep)
    frames = [camera.read() for _ in range(20)]
    broken["now"] = True
    frames += [camera.read() for _ in range(5)]
    healthy = camera.healthy
    camera.close()
    assert all(f is not None for f in frames)
    sources = [f.source_index for f in frames]  # type: ignore[union-attr]
    assert sources == list(range(20)) + list(range(5))  # reopened from the start of the file
    assert sleeps == [0.5, 1.0, 2.0]  # no good frame in between: the wait keeps doubling
    # each reopen succeeded, then the first read failed again, until the third wait was over
    assert camera.stats["failures"] == 3 and camera.stats["reopens"] == 3 and healthy


# --------------------------------------------------------------------------------------------
# frame size: a 4K camera is shrunk at capture (issue 20, item 7)


def _upscale_to_4k(clip: Path, out: Path, frames: range) -> Path:
    """The real clip's ``frames`` upscaled to 3840x2160, as a 4K camera would deliver them."""
    capture = cv2.VideoCapture(str(clip))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"),
                             capture.get(cv2.CAP_PROP_FPS), (3840, 2160))
    for index in range(frames.stop):
        ok, bgr = capture.read()
        assert ok, f"the clip ended at frame {index}"
        if index in frames:
            writer.write(cv2.resize(bgr, (3840, 2160), interpolation=cv2.INTER_CUBIC))
    capture.release()
    writer.release()
    return out


def test_frames_are_shrunk_to_max_side_at_capture(tmp_path: Path, examples_dir: Path) -> None:
    from twinlock.daemon.camera.base import DEFAULT_MAX_SIDE
    from twinlock.daemon.config.schema import Config

    assert Config().camera.max_side == DEFAULT_MAX_SIDE  # the schema's default is the driver's
    portrait = cv2.imread(str(examples_dir / "obama.jpg"))
    big = tmp_path / "big.png"  # 4:3, long side 4000: larger than any default lets through
    cv2.imwrite(str(big), cv2.resize(portrait, (4000, 3000), interpolation=cv2.INTER_CUBIC))
    for max_side, expected in ((None, (3000, 4000, 3)), (1920, (1440, 1920, 3)),
                               (640, (480, 640, 3))):
        camera = ReplayCamera(big, realtime=False, rotate=90)
        camera.max_side = max_side
        camera.open()
        frame = camera.read()
        camera.close()
        assert frame is not None
        assert frame.image.shape == (expected[1], expected[0], 3)  # rotated after shrinking
    small = ReplayCamera(examples_dir / "obama.jpg", realtime=False)  # already small: untouched
    small.open()
    frame = small.read()
    small.close()
    assert frame is not None and frame.image.shape == portrait.shape
    np.testing.assert_array_equal(frame.image, portrait[:, :, ::-1])
    # the Pi camera's ISP shrinks both streams (no CPU): never a detect stream above the main
    pi = Picamera2Camera(3840, 2160, 3840, 2160, 15)
    assert pi.stream_sizes() == ((1920, 1080), (1920, 1080))
    pi = Picamera2Camera(4056, 3040, 320, 240, 15)
    assert pi.stream_sizes() == ((1920, 1440), (320, 240))  # even sizes (YUV)


@pytest.mark.slow
def test_a_4k_camera_is_shrunk_at_capture_and_the_door_still_opens(
        tmp_path: Path, door_model: Path, examples_dir: Path, clip: Path,
        mock_pins: object) -> None:
    """The performer's frames of the real clip at 4K through the real daemon: every frame it
    analyses is at most 1920 px wide (a 4K frame took it past MemoryMax=300M), and the door
    opens for him all the same (default liveness included)."""
    from daemon_helpers import MIRANDA_FRAMES, enrol_miranda, write_config

    from twinlock.daemon.door.service import Daemon
    from twinlock.daemon.storage.audit import AuditLog

    clip4k = _upscale_to_4k(clip, tmp_path / "clip4k.mp4", range(MIRANDA_FRAMES.start, 180))
    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    config = write_config(tmp_path / "config.yaml", tmp_path / "state", door_model, gallery,
                          str(clip4k), camera={"realtime": False},
                          service={"max_fps": 120, "status_interval_s": 0.5})
    sizes: list[tuple[int, ...]] = []

    class Watched(Daemon):
        def process(self, frame: Frame) -> tuple[object, ...]:
            sizes.append(frame.image.shape)
            return super().process(frame)

    assert Watched(config).run() == 0  # the replay ends; the daemon stops cleanly
    assert sizes and set(sizes) == {(1080, 1920, 3)}
    with AuditLog(tmp_path / "state" / "audit.db") as audit:
        unlocks = audit.query(event="unlock")
    assert unlocks and {u.user for u in unlocks} == {"lin"}
