"""The relay is off after the daemon dies hard, and off first at every start.

A real GPIO line keeps its level when the process driving it dies, so these tests use
``file_pins.FilePin``: a gpiozero mock pin whose level lives in a file and so outlives the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from daemon_helpers import CLIP, enrol_miranda, liveness_off, scaled, write_config
from file_pins import ENV, read_level, write_level

from twinlock.daemon.cli import main as twinlockd
from twinlock.daemon.config.loader import load_action_config, load_config
from twinlock.daemon.errors import ConfigError, TwinLockError

FILE_PINS = Path(__file__).with_name("file_pins.py")
PIN = 17


@pytest.fixture()
def pin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder for file-backed pins, installed as gpiozero's pin factory in this process too."""
    from file_pins import factory
    from gpiozero import Device

    folder = tmp_path / "pins"
    folder.mkdir()
    monkeypatch.setenv(ENV, str(folder))
    previous = Device.pin_factory
    Device.pin_factory = factory()
    yield folder
    Device.pin_factory.reset()
    Device.pin_factory = previous


def file_pins(*argv: str | Path, pin_dir: Path, **popen: object) -> subprocess.Popen[str]:
    """``twinlockd ARGV`` in its own process, on the file-backed pins."""
    return subprocess.Popen([sys.executable, str(FILE_PINS), *map(str, argv)],
                            env=os.environ | {ENV: str(pin_dir)}, text=True, **popen)


def test_relay_off_needs_only_the_action_section(tmp_path: Path, pin_dir: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("camera:\n  type: opencv\n  fps: -3\nmodel:\n  nonsense: 1\n"
                      "action:\n  type: gpio\n  pin: 22\n  active_high: false\n")
    assert twinlockd(["check-config", str(config)]) == 2  # the file is broken ...
    with pytest.raises(ConfigError):
        load_config(config)
    action = load_action_config(config)  # ... but its action section is fine
    assert (action.pin, action.active_high) == (22, False)
    write_level(pin_dir, 22, False)  # active low: low is "on"
    assert twinlockd(["relay-off", "--config", str(config)]) == 0
    assert read_level(pin_dir, 22) is True  # inactive for an active-low board


def test_a_broken_action_section_is_one_clear_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("action:\n  type: gpio\n  pin: 99\n")
    assert twinlockd(["relay-off", "--config", str(config)]) == 2
    assert "config.yaml:3: action.pin" in capsys.readouterr().err


def test_the_relay_goes_off_before_the_audit_db_is_opened(tmp_path: Path, pin_dir: Path) -> None:
    """A relay left on by a crashed run, then a start whose audit DB cannot be opened."""
    from twinlock.daemon.door.service import Daemon
    from twinlock.daemon.storage.guard import UnavailableAudit

    config = tmp_path / "config.yaml"
    (tmp_path / "audit-is-a-folder.db").mkdir()
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "model": {"source": "folder", "dir": str(tmp_path), "gallery": str(tmp_path / "g.json")},
        "camera": {"type": "replay", "source": str(tmp_path / "none.mp4")},
        "action": {"type": "gpio", "pin": PIN},
        "audit": {"db": str(tmp_path / "audit-is-a-folder.db")}}))
    write_level(pin_dir, PIN, True)
    daemon = Daemon(config)  # keeps running, locked, without an audit log (test_audit_failure)
    try:
        assert read_level(pin_dir, PIN) is False
        assert isinstance(daemon.audit, UnavailableAudit)
    finally:
        daemon.shutdown()


@pytest.mark.data
@pytest.mark.slow
def test_kill_9_during_a_pulse_then_relay_off_leaves_the_pin_off(
        tmp_path: Path, pin_dir: Path, door_model: Path, examples_dir: Path) -> None:
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    config = write_config(tmp_path / "config.yaml", tmp_path / "state", door_model,
                          tmp_path / "gallery.json", str(examples_dir / CLIP),
                          camera={"realtime": False},
                          action={"pin": PIN, "pulse_seconds": 60.0, "cooldown_seconds": 60.0},
                          **liveness_off())
    proc = file_pins("run", "--config", config, pin_dir=pin_dir, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + scaled(60)  # the whole clip once, at this machine's speed
    try:
        while read_level(pin_dir, PIN) is not True and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        if read_level(pin_dir, PIN) is not True:
            pytest.fail(f"the relay never switched on (daemon exit {proc.poll()}, "
                        f"{time.monotonic() > deadline and 'deadline passed' or 'in time'})")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(scaled(30)) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert read_level(pin_dir, PIN) is True, "the line keeps its level when the process dies"

    # ExecStopPost= runs relay-off, here with a config broken everywhere but its action section
    cfg = yaml.safe_load(config.read_text())
    cfg["camera"]["fps"] = -3
    cfg["model"]["dir"] = ""
    config.write_text(yaml.safe_dump(cfg))
    off = file_pins("relay-off", "--config", config, pin_dir=pin_dir,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = off.communicate(timeout=scaled(30))
    except subprocess.TimeoutExpired:
        off.kill()
        off.wait()
        pytest.fail(f"relay-off did not finish within {scaled(30):.0f} s")
    assert off.returncode == 0, err
    assert f"GPIO{PIN} driven inactive" in out
    assert read_level(pin_dir, PIN) is False


def test_the_relay_goes_off_before_a_start_that_fails(tmp_path: Path, pin_dir: Path) -> None:
    """The snapshot folder is a file: the start fails, and the stuck relay went off before."""
    from twinlock.daemon.door.service import Daemon

    (tmp_path / "snapshots-is-a-file").write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "model": {"source": "folder", "dir": str(tmp_path), "gallery": str(tmp_path / "g.json")},
        "camera": {"type": "replay", "source": str(tmp_path / "none.mp4")},
        "action": {"type": "gpio", "pin": PIN},
        "audit": {"db": str(tmp_path / "state" / "audit.db"),
                  "snapshots": {"enabled": True, "dir": str(tmp_path / "snapshots-is-a-file")}}}))
    write_level(pin_dir, PIN, True)
    with pytest.raises(TwinLockError):
        Daemon(config)
    assert read_level(pin_dir, PIN) is False
