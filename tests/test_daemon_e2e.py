"""The door end to end: enrol the clip's performer, replay the real video through the daemon with
a gpiozero MockFactory relay, and check the pin's recorded states and times against the frames."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import (
    CLIP,
    MIRANDA_FRAMES,
    enrol_miranda,
    liveness_off,
    scaled,
    write_config,
)
from gpiozero.pins.mock import MockFactory

from twinlock.daemon.camera.frame import Frame
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.recognition.analyser import Observation
from twinlock.daemon.storage.audit import AuditLog

pytestmark = [pytest.mark.data, pytest.mark.slow]


class RecordingDaemon(Daemon):
    """The real daemon, noting when each frame was handled (test instrumentation only)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.seen: list[tuple[int, float]] = []
        super().__init__(*args, **kwargs)

    def process(self, frame: Frame) -> tuple[Observation, ...]:
        self.seen.append((frame.source_index, time.monotonic()))
        return super().process(frame)


def pin_changes(pin: object) -> list[tuple[float, bool]]:
    """Absolute monotonic times of a MockPin's changes (gpiozero stores deltas)."""
    states = list(pin.states)  # type: ignore[attr-defined]
    t = pin._last_change  # type: ignore[attr-defined]  # monotonic time of the last change
    out = []
    for delta, state in reversed(states):
        out.append((t, bool(state)))
        t -= delta
    return list(reversed(out))


def pulses(pin: object) -> list[tuple[float, float]]:
    """(on, off) times of every high period of the pin."""
    result, on = [], None
    for t, state in pin_changes(pin)[1:]:
        if state and on is None:
            on = t
        elif not state and on is not None:
            result.append((on, t))
            on = None
    if on is not None:
        result.append((on, float("inf")))
    return result


@pytest.fixture()
def door(tmp_path: Path, door_model: Path, examples_dir: Path) -> Path:
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    # the relay and signal tests replay the clip in real time: under emulation only a few
    # frames a second are processed, too few for the head-turn liveness check (tested on the
    # clip in tests/test_liveness.py), so these test recognition, relay and timing alone
    return write_config(tmp_path / "config.yaml", tmp_path / "state", door_model,
                        tmp_path / "gallery.json", str(examples_dir / CLIP), **liveness_off())


def test_relay_pulses_only_while_the_enrolled_person_is_on_screen(
        door: Path, mock_pins: MockFactory, tmp_path: Path) -> None:
    daemon = RecordingDaemon(door)
    assert daemon.run() == 0
    pin = mock_pins.pin(17)
    assert pin.state is False  # relay off after the run
    assert pin_changes(pin)[0][1] is False  # and off from the start: never high at start-up
    seen = dict(daemon.seen)
    assert min(seen) <= 5 and max(seen) >= 270, "the whole clip was played"
    first = min(t for i, t in seen.items() if i >= min(MIRANDA_FRAMES))
    last = max(t for i, t in seen.items() if i <= max(MIRANDA_FRAMES))
    highs = pulses(pin)
    assert highs, "the door never opened for the enrolled person"
    for on, off in highs:
        assert first <= on <= last + 0.2, (on - first, last - on)
        assert 0.4 <= off - on <= 1.5  # the configured 0.5 s pulse
    with AuditLog(tmp_path / "state" / "audit.db") as audit:
        unlocks = audit.query(event="unlock")
        assert len(unlocks) == len(highs)
        assert all(r.user == "lin" and r.frame in MIRANDA_FRAMES for r in unlocks)
        events = [r.event for r in audit.query()]
    assert events[0] == "start" and events[-1] == "stop"


def test_sigterm_during_a_pulse_leaves_the_relay_off(
        door: Path, mock_pins: MockFactory, tmp_path: Path) -> None:
    write_config(door, tmp_path / "state", *_paths(tmp_path, door),
                 action={"pulse_seconds": 5.0, "cooldown_seconds": 10.0}, **liveness_off())
    daemon = Daemon(door)
    daemon.install_signal_handlers()
    pin = mock_pins.pin(17)
    sent: list[float] = []

    def kill_when_high() -> None:
        deadline = time.monotonic() + scaled(60)  # at this machine's speed (emulated: slow)
        while time.monotonic() < deadline and not pin.state:
            time.sleep(0.01)
        if pin.state:
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=kill_when_high, daemon=True)
    watcher.start()
    try:
        assert daemon.run() == 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    watcher.join(5)
    assert sent, "the relay never switched on"
    assert pin.state is False
    (on, off), = pulses(pin)
    assert off - on < 2.0  # cut short: the configured pulse was 5 s


def _paths(tmp_path: Path, config: Path) -> tuple[Path, Path, str]:
    import yaml

    cfg = yaml.safe_load(config.read_text())
    return Path(cfg["model"]["dir"]), Path(cfg["model"]["gallery"]), cfg["camera"]["source"]


#: the issue's target: the door opens within 0.5 s of the enrolled person's face first appearing
#: (frame 82 at 29.97 fps), recognition alone (liveness adds its own, separately measured delay)
OPEN_WITHIN_S = 0.5
CLIP_FPS = 29.97


def _shipped_run(door: Path, tmp_path: Path, mock_pins: MockFactory) -> tuple[RecordingDaemon, list]:
    """config.yaml's own verification section (threshold and fusion from model.json), every
    frame of the clip seen (no real-time pacing, so a slow or emulated machine drops none)."""
    import yaml

    shipped = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    write_config(door, tmp_path / "state", *_paths(tmp_path, door),
                 camera={"realtime": False}, verification=shipped["verification"],
                 **liveness_off())
    daemon = RecordingDaemon(door)
    assert daemon.run() == 0
    assert len(daemon.seen) == 275, "every frame was handled"
    with AuditLog(tmp_path / "state" / "audit.db") as audit:
        unlocks = audit.query(event="unlock")
    pin = mock_pins.pin(17)
    assert pin.state is False
    assert len(unlocks) == len(pulses(pin))
    return daemon, unlocks


def test_the_shipped_decision_never_opens_outside_the_enrolled_persons_frames(
        door: Path, mock_pins: MockFactory, tmp_path: Path) -> None:
    from twinlock.daemon.recognition.fusion import decision_settings
    from twinlock.daemon.recognition.model import read_metadata

    daemon, unlocks = _shipped_run(door, tmp_path, mock_pins)
    meta = read_metadata(Path(daemon.cfg.model.dir))
    assert daemon.matcher is not None
    # the model's own threshold, fitted to this door's one resident (looser than for five)
    fitted, _, _ = decision_settings(meta.thresholds, meta.default_threshold, meta.metrics,
                                     residents=1)
    assert daemon.matcher.verifier.threshold == fitted
    assert fitted < meta.thresholds[meta.default_threshold]
    assert daemon.matcher.verifier.fusion == meta.metrics["door"]["fusion"]
    assert all(r.user == "lin" and r.frame in MIRANDA_FRAMES for r in unlocks), \
        [(r.user, r.frame) for r in unlocks]


def test_the_shipped_decision_opens_for_the_enrolled_person(
        door: Path, mock_pins: MockFactory, tmp_path: Path) -> None:
    _, unlocks = _shipped_run(door, tmp_path, mock_pins)
    assert unlocks, "the door never opened for the enrolled person at the shipped threshold"
    assert all(r.user == "lin" and r.frame in MIRANDA_FRAMES for r in unlocks)
    first = min(r.frame for r in unlocks)
    delay = (first - MIRANDA_FRAMES[0]) / CLIP_FPS
    assert delay <= OPEN_WITHIN_S, f"opened {delay:.2f} s after the face appeared (frame {first})"
