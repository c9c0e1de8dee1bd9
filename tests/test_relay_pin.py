"""The relay's pin through gpiozero's real lgpio pin code: off at every claim, never let float.

No GPIO chip exists on a test machine, so lgpio itself is replaced by :class:`FakeLgpio`, a model
of one gpiochip as the kernel presents it to lgpio: claims, writes, the SoC's pull register, and a
release that turns the line into an input at its pull (an upstream kernel; Raspberry Pi OS keeps
a released output driven instead). gpiozero's own ``gpiozero/pins/lgpio.py`` runs on it
unchanged. The same checks run on a real kernel line in the VM (tests/vm, gpio-sim).
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from twinlock.daemon.cli import main as twinlockd
from twinlock.daemon.door.actions import GpioAction
from twinlock.daemon.door.relay_pin import relay_pin_factory

PIN = 17
PULL_UP, PULL_DOWN, PULL_NONE = 32, 64, 128  # lgpio's SET_PULL_* claim flags
PULL_NAMES = {PULL_UP: "up", PULL_DOWN: "down", PULL_NONE: "none"}


@dataclass
class Line:
    """One line: who holds it, as what, at which level, pulled where (the SoC's register)."""

    claimed_by: int | None = None
    mode: str = "input"
    level: int | None = 0  # None: an input with no pull, floating
    pull: str = "down"  # GPIO17's pull at power-on


@dataclass
class FakeLgpio:
    """lgpio's calls that gpiozero's lgpio pin makes, on one modelled chip."""

    lines: dict[int, Line] = field(default_factory=dict)
    #: every claim and release: (what, gpio, mode, level, pull) after it
    claims: list[tuple[str, int, str, int | None, str]] = field(default_factory=list)
    #: every level the line showed: (gpio, level) when it changed
    levels: list[tuple[int, int | None]] = field(default_factory=list)
    open_handles: set[int] = field(default_factory=set)
    handles: Iterator[int] = field(default_factory=lambda: itertools.count(100))

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("lgpio")
        mod.SET_PULL_UP, mod.SET_PULL_DOWN, mod.SET_PULL_NONE = PULL_UP, PULL_DOWN, PULL_NONE
        mod.SET_ACTIVE_LOW, mod.SET_OPEN_DRAIN, mod.SET_OPEN_SOURCE = 4, 8, 16
        mod.RISING_EDGE, mod.FALLING_EDGE, mod.BOTH_EDGES = 1, 2, 3
        mod.error = RuntimeError
        for name in ("gpiochip_open", "gpiochip_close", "gpio_claim_input", "gpio_claim_output",
                     "gpio_free", "gpio_write", "gpio_read", "gpio_get_mode"):
            setattr(mod, name, getattr(self, name))
        return mod

    def line(self, gpio: int) -> Line:
        return self.lines.setdefault(gpio, Line())

    def _show(self, gpio: int, level: int | None) -> None:
        if [lv for g, lv in self.levels if g == gpio][-1:] != [level]:
            self.levels.append((gpio, level))

    def _claim(self, what: str, handle: int, gpio: int, mode: str, level: int | None,
               flags: int) -> int:
        assert handle in self.open_handles, "a claim on a closed chip handle"
        line = self.line(gpio)
        line.claimed_by, line.mode = handle, mode
        for flag, name in PULL_NAMES.items():
            if flags & flag:
                line.pull = name
        if mode == "input":
            level = {"up": 1, "down": 0}.get(line.pull)
        line.level = level
        self._show(gpio, level)
        self.claims.append((what, gpio, mode, level, line.pull))
        return 0

    def _release(self, gpio: int) -> None:
        """What an upstream kernel does with a released line: an input, at its pull."""
        line = self.line(gpio)
        line.claimed_by, line.mode = None, "input"
        line.level = {"up": 1, "down": 0}.get(line.pull)
        self._show(gpio, line.level)
        self.claims.append(("released", gpio, line.mode, line.level, line.pull))

    def gpiochip_open(self, chip: int) -> int:
        handle = next(self.handles)
        self.open_handles.add(handle)
        return handle

    def gpiochip_close(self, handle: int) -> None:
        self.open_handles.discard(handle)
        for gpio, line in self.lines.items():
            if line.claimed_by == handle:
                self._release(gpio)

    def gpio_claim_input(self, handle: int, gpio: int, lFlags: int = 0) -> int:
        return self._claim("input", handle, gpio, "input", None, lFlags)

    def gpio_claim_output(self, handle: int, gpio: int, level: int = 0,  # lgpio's defaults
                          lFlags: int = 0) -> int:
        return self._claim("output", handle, gpio, "output", int(bool(level)), lFlags)

    def gpio_free(self, handle: int, gpio: int) -> int:
        self._release(gpio)
        return 0

    def gpio_write(self, handle: int, gpio: int, level: int) -> int:
        line = self.line(gpio)
        assert line.claimed_by == handle and line.mode == "output", "a write to an unclaimed line"
        line.level = int(bool(level))
        self._show(gpio, line.level)
        return 0

    def gpio_read(self, handle: int, gpio: int) -> int:
        return int(bool(self.line(gpio).level))

    def gpio_get_mode(self, handle: int, gpio: int) -> int:
        line = self.line(gpio)
        return (2 if line.mode == "output" else 0) | {"up": 32, "down": 64}.get(line.pull, 128)


@pytest.fixture()
def chip(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLgpio]:
    """The fake chip installed as ``lgpio``, on a Pi 4's revision, with no factory chosen yet."""
    from gpiozero import Device
    from gpiozero.pins import local

    fake = FakeLgpio()
    monkeypatch.setitem(sys.modules, "lgpio", fake.module())
    monkeypatch.delitem(sys.modules, "gpiozero.pins.lgpio", raising=False)  # import it on the fake
    monkeypatch.setattr(local, "get_pi_revision", lambda: 0xC03111)  # a Raspberry Pi 4 B
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(Device, "pin_factory", None)
    yield fake
    local.LocalPiFactory.pins.clear()  # gpiozero shares made pins among all its local factories
    local.LocalPiFactory._reservations.clear()


def wait_until(condition: object, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("active_high", [True, False], ids=["active-high", "active-low"])
def test_the_relay_is_claimed_off_pulses_once_and_is_held_off_when_let_go(
        chip: FakeLgpio, active_high: bool) -> None:
    off, on = (0, 1) if active_high else (1, 0)
    pull_off = "down" if active_high else "up"
    relay = GpioAction(PIN, active_high=active_high, pulse_seconds=0.05)
    try:
        # claimed straight at the off level (gpiozero's own pin claims output low first: a blip
        # of "on" for an active-low relay), with the SoC's pull towards off
        assert chip.claims[-1] == ("output", PIN, "output", off, pull_off), chip.claims
        assert on not in [level for _, level in chip.levels], chip.levels
        relay.unlock("alice")
        assert wait_until(lambda: not relay.busy)
        assert [level for _, level in chip.levels][-2:] == [on, off], chip.levels
    finally:
        relay.close()
    # let go as an output at off, never re-claimed as an input without pull; the kernel has it
    # now (this chip: an input at its pull, which is towards off)
    assert [c[0] for c in chip.claims[-2:]] == ["output", "released"], chip.claims
    first_output = [c[0] for c in chip.claims].index("output")
    assert "input" not in [c[0] for c in chip.claims[first_output:]], chip.claims
    assert chip.lines[PIN] == Line(None, "input", off, pull_off)
    assert not chip.open_handles, "the relay's chip handle outlived it"
    assert [level for _, level in chip.levels].count(on) == 1, chip.levels


def test_relay_off_after_a_crash_in_a_pulse_leaves_the_line_held_off(
        chip: FakeLgpio, tmp_path: Path) -> None:
    """``twinlockd relay-off`` (ExecStopPost=) on a line a dead daemon left on, as a Pi's kernel
    keeps a released output: off, pulled off, let go as an output."""
    chip.lines[PIN] = Line(None, "output", 0, "up")  # an active-low relay, left on
    config = tmp_path / "config.yaml"
    config.write_text(f"action:\n  type: gpio\n  pin: {PIN}\n  active_high: false\n")
    assert twinlockd(["relay-off", "--config", str(config)]) == 0
    assert [c[0] for c in chip.claims] == ["input", "output", "released"], chip.claims
    assert chip.claims[1] == ("output", PIN, "output", 1, "up")
    assert chip.lines[PIN] == Line(None, "input", 1, "up")
    assert not chip.open_handles


def test_a_relay_rebuilt_on_reload_claims_the_line_again(chip: FakeLgpio) -> None:
    """The daemon closes the old relay, then makes the new one (service.py's reload)."""
    first = GpioAction(PIN, active_high=True, pulse_seconds=0.05)
    first.close()
    second = GpioAction(PIN, active_high=True, pulse_seconds=0.05)
    try:
        second.unlock("bob")
        assert wait_until(lambda: not second.busy)
    finally:
        second.close()
    assert [c[0] for c in chip.claims] == ["input", "output", "released"] * 2, chip.claims
    assert not chip.open_handles


def test_gpiozero_chooses_where_another_factory_is_set_or_lgpio_cannot_serve(
        chip: FakeLgpio, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from gpiozero import Device
    from gpiozero.exc import PinUnknownPi
    from gpiozero.pins import local
    from gpiozero.pins.mock import MockFactory

    with monkeypatch.context() as m:
        m.setenv("GPIOZERO_PIN_FACTORY", "mock")  # the tests' factory
        assert relay_pin_factory() is None
    with monkeypatch.context() as m:
        m.setattr(Device, "pin_factory", MockFactory())  # set by the program itself
        assert relay_pin_factory() is None
    caplog.set_level(logging.WARNING, "twinlock.daemon.door.relay_pin")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "lgpio", None)  # not installed
        m.delitem(sys.modules, "gpiozero.pins.lgpio", raising=False)
        assert relay_pin_factory() is None
    assert "lgpio is not installed" in caplog.text
    with monkeypatch.context() as m:
        def not_a_pi() -> int:
            raise PinUnknownPi("unable to locate Pi revision")
        m.setattr(local, "get_pi_revision", not_a_pi)
        assert relay_pin_factory() is None
    assert "PinUnknownPi" in caplog.text and not chip.open_handles
    factory = relay_pin_factory()  # and on a Pi with lgpio, its own
    try:
        assert type(factory).__name__ == "HeldLGPIOFactory"
    finally:
        factory.close()
