"""Unlock actions on real (mock-factory) pins and real hook processes.

gpiozero's ``MockPin.states`` is a list of ``PinState(timestamp, state)`` where, in gpiozero 2,
``timestamp`` is the time since the *previous* change (the first entry is ``(0.0, initial)``,
reset by ``clear_states()``), so a pulse's length is the timestamp of the entry that ends it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from twinlock.daemon.door.actions import Action, CommandAction, GpioAction, LogAction
from twinlock.daemon.errors import ActionError, TwinLockError, UsageError

PULSE = 0.2
#: generous bounds for a 0.2 s pulse on a loaded machine
PULSE_MIN, PULSE_MAX = 0.15, 1.0


class Events:
    """Collects on_event callbacks (a real callable, thread-safe)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, kind: str, detail: str) -> None:
        with self._lock:
            self.items.append((kind, detail))

    def kinds(self) -> list[str]:
        with self._lock:
            return [kind for kind, _ in self.items]


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def levels(pin: MockPin) -> list[bool]:
    return [bool(s.state) for s in pin.states]


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    mock = MockFactory()
    yield mock
    mock.reset()


# -- GPIO -----------------------------------------------------------------------------------------


def test_relay_is_off_at_construction_even_if_the_line_floated_active(
    factory: MockFactory,
) -> None:
    pin = factory.pin(17)
    pin.drive_high()  # an input pulled high before we claim it
    pin.clear_states()
    action = GpioAction(17, active_high=True, pulse_seconds=PULSE, pin_factory=factory)
    try:
        assert pin.function == "output"
        assert pin.state is False or pin.state == 0
        assert levels(pin) == [True, False]  # driven low at once, never left high
        assert pin.states[1].timestamp < 0.1
        assert not action.busy
        assert isinstance(action, Action)
    finally:
        action.close()


def test_a_pulse_goes_high_then_low_after_pulse_seconds(factory: MockFactory) -> None:
    events = Events()
    action = GpioAction(17, active_high=True, pulse_seconds=PULSE, pin_factory=factory,
                        on_event=events)
    pin = factory.pin(17)
    pin.clear_states()
    try:
        started = time.monotonic()
        action.unlock("alice")
        returned = time.monotonic() - started
        assert returned < 0.1  # unlock does not wait for the pulse
        assert pin.state and action.busy
        assert wait_until(lambda: not action.busy)
        assert levels(pin) == [False, True, False]
        assert pin.states[1].timestamp < 0.1  # on right after unlock
        assert PULSE_MIN <= pin.states[2].timestamp <= PULSE_MAX  # held for pulse_seconds
        assert wait_until(lambda: len(events.items) == 2)
        assert events.kinds() == ["pulse_start", "pulse_end"]
        assert events.items[0][1] == "alice"
        assert events.items[1][1].startswith("alice after") and "timer" in events.items[1][1]
        # a second pulse later works the same
        action.unlock("bob")
        assert wait_until(lambda: not action.busy)
        assert levels(pin) == [False, True, False, True, False]
        assert PULSE_MIN <= pin.states[4].timestamp <= PULSE_MAX
    finally:
        action.close()


def test_active_low_inverts_the_physical_levels(factory: MockFactory) -> None:
    pin = factory.pin(27)
    pin.drive_high()  # an active-low relay board pulls its input high: relay off
    pin.clear_states()
    action = GpioAction(27, active_high=False, pulse_seconds=PULSE, pin_factory=factory)
    try:
        assert levels(pin) == [True]  # claimed without ever pulling low
        action.unlock("alice")
        assert pin.state is False or pin.state == 0  # on = low
        assert wait_until(lambda: not action.busy)
        assert levels(pin) == [True, False, True]
        assert PULSE_MIN <= pin.states[2].timestamp <= PULSE_MAX
    finally:
        action.close()
    assert pin.state  # closed with the relay off (line high)


def test_close_mid_pulse_switches_off_at_once(factory: MockFactory) -> None:
    events = Events()
    pulse = 0.5  # long enough that only close() can have ended it early
    action = GpioAction(17, active_high=True, pulse_seconds=pulse, pin_factory=factory,
                        on_event=events)
    pin = factory.pin(17)
    pin.clear_states()
    action.unlock("alice")
    time.sleep(0.05)
    action.close()
    assert not pin.state
    assert levels(pin) == [False, True, False]
    assert pin.states[2].timestamp < pulse - 0.1  # cut short, not held for the pulse
    time.sleep(pulse + 0.1)  # the cancelled timer must not touch the pin again
    assert levels(pin) == [False, True, False]
    assert pin.function == "input"  # released
    assert events.kinds() == ["pulse_start", "pulse_end"]
    assert "(safe)" in events.items[1][1]
    action.close()  # idempotent
    action.unlock("bob")  # ignored after close, never raises, never drives the pin
    assert levels(pin) == [False, True, False]


def test_safe_mid_pulse_then_unlock_again(factory: MockFactory) -> None:
    pulse = 0.4
    action = GpioAction(17, active_high=True, pulse_seconds=pulse, pin_factory=factory)
    pin = factory.pin(17)
    pin.clear_states()
    try:
        action.unlock("alice")
        time.sleep(0.3)
        action.safe()
        assert not pin.state and not action.busy
        action.unlock("alice")
        assert pin.state
        assert wait_until(lambda: not action.busy)
        time.sleep(0.1)
        assert levels(pin) == [False, True, False, True, False]
        # the first pulse's timer (due ~0.1 s into the second pulse) was cancelled: the second
        # pulse lasted its full length
        assert pulse - 0.05 <= pin.states[4].timestamp <= pulse + 0.8
    finally:
        action.close()


def test_second_unlock_during_a_pulse_is_ignored(
    factory: MockFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="twinlock.daemon.door.actions")
    events = Events()
    pulse = 0.5  # a wide margin between "ignored" and "extended" on a loaded machine
    action = GpioAction(17, active_high=True, pulse_seconds=pulse, pin_factory=factory,
                        on_event=events)
    pin = factory.pin(17)
    pin.clear_states()
    try:
        on_at = time.monotonic()
        action.unlock("alice")
        time.sleep(0.4)
        second_at = time.monotonic() - on_at
        action.unlock("bob")
        assert wait_until(lambda: not action.busy)
        time.sleep(0.1)
        assert levels(pin) == [False, True, False]
        # extended or restarted, the relay would have stayed on until second_at + pulse
        assert pulse - 0.05 <= pin.states[2].timestamp < second_at + pulse - 0.02
        assert events.kinds() == ["pulse_start", "pulse_end"]
        assert events.items[0][1] == "alice"
        assert any("ignored" in r.getMessage() and "bob" in r.getMessage()
                   for r in caplog.records)
    finally:
        action.close()


def test_a_broken_event_callback_does_not_keep_the_relay_on(factory: MockFactory) -> None:
    def explode(kind: str, detail: str) -> None:
        raise RuntimeError("audit is down")

    action = GpioAction(17, active_high=True, pulse_seconds=PULSE, pin_factory=factory,
                        on_event=explode)
    pin = factory.pin(17)
    try:
        action.unlock("alice")
        assert wait_until(lambda: not action.busy)
        assert not pin.state
    finally:
        action.close()


def test_construction_errors_become_action_errors_with_a_hint(factory: MockFactory) -> None:
    first = GpioAction(17, active_high=True, pulse_seconds=PULSE, pin_factory=factory)
    try:
        with pytest.raises(ActionError, match="GPIOZERO_PIN_FACTORY=mock") as info:
            GpioAction(17, active_high=True, pulse_seconds=PULSE, pin_factory=factory)
        assert "GPIO pin 17" in str(info.value) and "'log' action" in str(info.value)
        assert isinstance(info.value, TwinLockError)
        with pytest.raises(ActionError):
            GpioAction(999, active_high=True, pulse_seconds=PULSE, pin_factory=factory)
    finally:
        first.close()
    with pytest.raises(UsageError):
        GpioAction(17, active_high=True, pulse_seconds=0, pin_factory=factory)


# -- command hook ---------------------------------------------------------------------------------

DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


def test_command_hook_sees_the_user(tmp_path: Path) -> None:
    events = Events()
    out = tmp_path / "env.json"
    action = CommandAction([sys.executable, "-c", DUMP_ENV, str(out)], timeout_s=10,
                           on_event=events)
    try:
        assert isinstance(action, Action)
        action.unlock("alice")
        assert wait_until(lambda: not action.busy, timeout=10)
        env = json.loads(out.read_text())
        assert env["TWINLOCK_USER"] == "alice"
        assert env["TWINLOCK_EVENT"] == "unlock"
        assert env.get("PATH") == os.environ.get("PATH")  # the service's environment is kept
        assert wait_until(lambda: len(events.items) == 1)
        assert events.kinds() == ["hook_ok"]
        assert events.items[0][1].startswith("alice: exit 0")
    finally:
        action.close()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_hook_that_times_out_is_killed_with_its_children(tmp_path: Path) -> None:
    events = Events()
    pids = tmp_path / "pids"
    script = f'sleep 30 & echo "$$ $!" > {pids}; wait'
    action = CommandAction(["/bin/sh", "-c", script], timeout_s=0.3, on_event=events)
    try:
        started = time.monotonic()
        action.unlock("alice")
        assert action.busy
        assert wait_until(lambda: not action.busy, timeout=8)
        assert time.monotonic() - started < 5
        shell, sleeper = (int(p) for p in pids.read_text().split())
        assert wait_until(lambda: not _alive(shell) and not _alive(sleeper), timeout=3)
        assert wait_until(lambda: len(events.items) == 1)
        assert events.kinds() == ["hook_failed"]
        assert "timed out" in events.items[0][1] and "killed" in events.items[0][1]
    finally:
        action.close()


def test_failed_and_missing_hooks_are_reported_not_raised(tmp_path: Path) -> None:
    events = Events()
    action = CommandAction([sys.executable, "-c", "raise SystemExit(3)"], timeout_s=10,
                           on_event=events)
    action.unlock("alice")
    assert wait_until(lambda: len(events.items) == 1, timeout=10)
    assert events.items == [("hook_failed", events.items[0][1])]
    assert "exit 3" in events.items[0][1]
    action.close()

    missing = CommandAction([str(tmp_path / "no-such-hook")], timeout_s=10, on_event=events)
    missing.unlock("bob")
    assert wait_until(lambda: len(events.items) == 2)
    assert events.items[1][0] == "hook_failed" and "could not start" in events.items[1][1]
    missing.close()


def test_one_hook_at_a_time(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code = "import sys, time; open(sys.argv[1], 'a').write('run\\n'); time.sleep(0.4)"
    action = CommandAction([sys.executable, "-c", code, str(runs)], timeout_s=10)
    try:
        action.unlock("alice")
        action.unlock("bob")  # ignored: the first hook is still running
        assert wait_until(lambda: not action.busy, timeout=10)
        assert runs.read_text().splitlines() == ["run"]
        action.unlock("carol")
        assert wait_until(lambda: not action.busy, timeout=10)
        assert runs.read_text().splitlines() == ["run", "run"]
    finally:
        action.close()


def test_close_kills_a_running_hook(tmp_path: Path) -> None:
    events = Events()
    action = CommandAction(["/bin/sleep", "30"], timeout_s=60, on_event=events)
    action.unlock("alice")
    time.sleep(0.1)
    started = time.monotonic()
    action.close()
    assert time.monotonic() - started < 3
    assert not action.busy
    assert events.kinds() == ["hook_failed"]
    assert "stopped by signal 9" in events.items[0][1]
    action.unlock("bob")  # ignored after close
    assert not action.busy


def test_command_argv_is_checked() -> None:
    with pytest.raises(UsageError):
        CommandAction([], timeout_s=1)
    with pytest.raises(UsageError):
        CommandAction("/usr/bin/open-door", timeout_s=1)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        CommandAction(["/bin/true"], timeout_s=0)


# -- log ------------------------------------------------------------------------------------------


def test_log_action_records_calls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="twinlock.daemon.door.actions")
    events = Events()
    action = LogAction(on_event=events)
    assert isinstance(action, Action)
    before = time.monotonic()
    action.unlock("alice")
    action.unlock("bob")
    after = time.monotonic()
    assert [user for _, user in action.calls] == ["alice", "bob"]
    assert before <= action.calls[0][0] <= action.calls[1][0] <= after
    assert not action.busy
    assert "door would open for alice" in caplog.text
    assert events.kinds() == ["pulse_start", "pulse_end", "pulse_start", "pulse_end"]
    action.safe()
    action.close()
    action.unlock("carol")
    assert len(action.calls) == 2


# -- the registry: action.type -> the action -------------------------------------------------


def test_each_action_type_builds_its_action_from_its_section(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import typing

    import yaml

    from twinlock.daemon.config.loader import parse_config
    from twinlock.daemon.config.schema import ActionConfig
    from twinlock.daemon.door.actions import ACTIONS, build_action

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    sections = {"gpio": {"pin": 22, "active_high": False, "pulse_seconds": 0.5},
                "command": {"argv": ["/bin/true", "x"], "timeout_s": 4.0},
                "log": {}}
    members = typing.get_args(typing.get_args(ActionConfig)[0])
    assert {m.model_fields["type"].default for m in members} == set(ACTIONS) == set(sections)
    events = Events()
    built = {kind: build_action(parse_config(yaml.safe_dump(
        {"action": {"type": kind, **section}})), events) for kind, section in sections.items()}
    try:
        gpio, command, log = built["gpio"], built["command"], built["log"]
        assert isinstance(gpio, GpioAction) and (gpio.pin, gpio.active_high,
                                                 gpio.pulse_seconds) == (22, False, 0.5)
        assert isinstance(command, CommandAction) and command.argv == ["/bin/true", "x"]
        assert command.timeout_s == 4.0
        assert isinstance(log, LogAction)
        log.unlock("ann")
        assert events.kinds() == ["pulse_start", "pulse_end"]  # the callback was wired in
    finally:
        for action in built.values():
            action.close()
