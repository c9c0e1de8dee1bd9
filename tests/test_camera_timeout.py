"""``camera.read_timeout_s``: a read that hangs in the driver is a fault, and the camera reopens.

The fake driver really hangs: its ``read()`` blocks on an Event, as a V4L2 read on a stalled
sensor blocks in the kernel. Reads run in a helper thread so that a regression fails the test
at a (machine-scaled) deadline instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from daemon_helpers import scaled

from twinlock.daemon.camera.frame import Frame
from twinlock.daemon.camera.read_timeout import TimedCamera, with_read_timeout
from twinlock.daemon.camera.registry import camera_factory
from twinlock.daemon.camera.resilient import ResilientCamera
from twinlock.daemon.config.loader import parse_config

TIMEOUT_S = 0.3


class HangingCamera:
    """Delivers ``frames`` numbered frames, then its next read blocks until ``release`` is set."""

    def __init__(self, session: int, frames: int | None, release: threading.Event) -> None:
        self.name = f"hanging-{session}"
        self.session, self.frames, self.release = session, frames, release
        self.count = 0
        self.opened = False
        self.reading = False
        self.closed = False
        self.closed_during_read = False

    def open(self) -> None:
        self.opened, self.closed = True, False

    def read(self) -> Frame:
        self.reading = True
        try:
            if self.frames is not None and self.count >= self.frames:
                self.release.wait()  # hung in the driver; nothing in Python can interrupt it
            image = np.full((4, 6, 3), self.session, np.uint8)
            self.count += 1
            return Frame(image)
        finally:
            self.reading = False

    def close(self) -> None:
        self.closed_during_read = self.closed_during_read or self.reading
        self.closed = True


def hanging_factory(scripts: list[int | None], release: threading.Event
                    ) -> tuple[Callable[[], HangingCamera], list[HangingCamera]]:
    made: list[HangingCamera] = []

    def factory() -> HangingCamera:
        made.append(HangingCamera(len(made), scripts[min(len(made), len(scripts) - 1)], release))
        return made[-1]

    return factory, made


def camera_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("twinlock-camera-")]


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_hung_read_is_a_fault_the_camera_reopens_and_frames_flow_again() -> None:
    release = threading.Event()
    factory, made = hanging_factory([3, None], release)  # session 0 hangs after 3 frames
    states: list[tuple[str, str, float]] = []
    camera = ResilientCamera(with_read_timeout(factory, TIMEOUT_S), 0.01, 0.05,
                             on_state=lambda s, r: states.append((s, r, time.monotonic())))
    sessions: list[int] = []
    last_good = [0.0]

    def reader() -> None:
        while len(sessions) < 3 + 10:
            frame = camera.read()
            if frame is None:
                return
            sessions.append(int(frame.image[0, 0, 0]))
            if sessions[-1] == 0:
                last_good[0] = time.monotonic()

    thread = threading.Thread(target=reader, daemon=True)
    try:
        camera.open()
        thread.start()
        thread.join(scaled(TIMEOUT_S + 5.0))
        assert not thread.is_alive(), (f"frames stopped at {sessions} (states {states}): "
                                       "a hung read was never timed out")
        assert sessions == [0, 0, 0] + [1] * 10  # frames flow again from the reopened camera
        failed = [(r, t) for s, r, t in states if s == "failed"]
        assert len(failed) == 1 and "no frame within 0.3 s" in failed[0][0]
        assert TIMEOUT_S * 0.9 <= failed[0][1] - last_good[0] <= scaled(TIMEOUT_S + 2.0)
        assert [s for s, _, _ in states] == ["opened", "failed", "reopened"]
        assert camera.stats["reopens"] == 1
        # the stuck driver was not closed under its read; its thread is still inside it
        assert not made[0].closed and made[0].reading
        assert len(camera_threads()) == 2  # the stuck reader and the live one
    finally:
        release.set()
        camera.stop()
        camera.close()
    # once the driver call returns, the abandoned thread closes its driver and ends
    assert wait_for(lambda: made[0].closed and not camera_threads(), scaled(2.0)), \
        camera_threads()
    assert not any(cam.closed_during_read for cam in made)


def test_a_driver_that_never_returns_cannot_pile_up_threads() -> None:
    release = threading.Event()
    factory, made = hanging_factory([0], release)  # every session hangs on its first read
    reasons: list[str] = []
    camera = ResilientCamera(with_read_timeout(factory, 0.05, max_stuck=2), 0.01, 0.02,
                             on_state=lambda s, r: reasons.append(r) if s == "failed" else None)
    most = [0]

    def watch() -> None:
        while not camera.stopped:
            most[0] = max(most[0], len(camera_threads()))
            time.sleep(0.005)

    reader = threading.Thread(target=camera.read, daemon=True)
    watcher = threading.Thread(target=watch, daemon=True)
    try:
        reader.start()
        watcher.start()
        assert wait_for(lambda: sum("still stuck" in r for r in reasons) >= 5, scaled(5.0)), \
            reasons
        assert most[0] <= 2 and sum(c.opened for c in made) == 2  # then opening is refused
    finally:
        camera.stop()
        release.set()
    reader.join(scaled(2.0))
    assert not reader.is_alive()  # stop() ends the read
    assert wait_for(lambda: not camera_threads(), scaled(2.0)), camera_threads()
    camera.close()


def test_the_config_read_timeout_reaches_every_camera_the_daemon_makes(examples_dir: Path
                                                                       ) -> None:
    cfg = parse_config(yaml.safe_dump({"camera": {
        "type": "replay", "source": str(examples_dir / "lin-manuel-miranda.png"),
        "realtime": False, "read_timeout_s": 0.75}}))
    camera = camera_factory(cfg)()
    assert isinstance(camera, TimedCamera) and camera.timeout_s == 0.75
    camera.open()
    try:
        frame = camera.read()
        assert frame is not None and frame.image.ndim == 3
    finally:
        camera.close()
    assert wait_for(lambda: not camera_threads(), scaled(2.0))


@pytest.mark.parametrize("kind", ["opencv", "picamera2", "replay"])
def test_each_camera_type_builds_its_own_driver(kind: str, tmp_path: Path) -> None:
    section: dict[str, object] = {"type": kind, "read_timeout_s": 2.5, "rotate": 90}
    if kind == "replay":
        (tmp_path / "a.png").write_bytes(b"")
        section["source"] = str(tmp_path / "a.png")
    camera = camera_factory(parse_config(yaml.safe_dump({"camera": section})))()
    assert isinstance(camera, TimedCamera)
    driver = camera.camera
    assert type(driver).__name__ == {"opencv": "OpenCVCamera", "picamera2": "Picamera2Camera",
                                     "replay": "ReplayCamera"}[kind]
    assert driver.rotate == 90  # type: ignore[attr-defined]
    if kind == "picamera2":  # its own capture timeout is the configured one too
        assert driver.timeout_s == 2.5  # type: ignore[attr-defined]


def test_the_read_timeout_stays_below_the_units_watchdog() -> None:
    """A read may block the loop (and its watchdog pings) for read_timeout_s: above the unit's
    WatchdogSec systemd would restart the daemon before the camera fault is seen."""
    import re

    from twinlock.daemon.config.loader import parse_config
    from twinlock.daemon.errors import ConfigError

    unit = (Path(__file__).resolve().parents[1] / "deploy" / "twinlockd.service").read_text()
    found = re.search(r"^WatchdogSec=(\d+)", unit, re.MULTILINE)
    assert found, "the unit has a watchdog"
    watchdog = float(found.group(1))
    assert parse_config("camera:\n  read_timeout_s: 20\n").camera.read_timeout_s < watchdog
    with pytest.raises(ConfigError, match="read_timeout_s"):
        parse_config(f"camera:\n  read_timeout_s: {watchdog:g}\n")
