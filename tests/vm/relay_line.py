"""The relay's GPIO line in the guest, watched from outside the daemon (tests/vm/relay_watch.py).

What gpio-sim shows, and what it cannot: gpio-sim sets a line that nobody holds to its pull
(``gpio_sim_free()`` in drivers/gpio/gpio-sim.c, 6.1 and 6.12; the image's chip is pulled down,
and a claim's bias flag moves that pull), as an upstream kernel turns a released output into an
input at the SoC's pull. So when the daemon dies the kernel releases its claim and the line falls
to its pull at once, with or without the unit's ExecStopPost. Raspberry Pi OS's kernel instead
keeps a released output driven (its pin controller's ``persist_gpio_outputs``): there a relay the dead
daemon left on stays on until ExecStopPost's ``twinlockd relay-off`` claims the pin and drives it
off. So on this line ExecStopPost is seen as a *claim*: relay-off requesting the pin as an output
at the off level, pulled towards off, and releasing it, after the dead daemon's claim ended and
before systemd schedules the restart (the watcher gets claims as kernel line-info events, not
samples). Its journal line is checked too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from vm_guest import GUEST_GPIO_SIM, RELAY_PIN, Door, Guest

WATCH_LOG = "/root/relay-line.log"
WATCH_UNIT = "twinlock-vm-relay-watch"
VALUE = f"{GUEST_GPIO_SIM}/sim_gpio{RELAY_PIN}/value"
#: the line's pull in gpio-sim: where it falls when nobody holds it ("pull-down" or "pull-up")
PULL = f"{GUEST_GPIO_SIM}/sim_gpio{RELAY_PIN}/pull"
#: what kills the daemon mid-pulse: waits (in the guest, no ssh round trip; 900 s at most) for
#: the line high, then SIGKILLs the unit's main pid; prints that pid and the time just before
KILL_MID_PULSE = f"""
import os, subprocess, sys, time
deadline = time.monotonic() + 900
while open({VALUE!r}).read().strip() != "1":
    if time.monotonic() > deadline:
        sys.exit("the relay line did not go high within 900 s")
    time.sleep(0.01)
pid = int(subprocess.check_output(["systemctl", "show", "-p", "MainPID", "--value", "twinlockd"]))
at = time.time()
os.kill(pid, 9)
print(pid, at)
"""


@dataclass
class RelayLine:
    """The watcher's log: ``(time, what)``, what being ``value 0|1``, ``requested|reconfigured
    output|input BIAS CONSUMER`` or ``released`` (guest wall clock, as the audit log's ``ts``)."""

    guest: Guest
    started: float

    def events(self) -> tuple[list[tuple[float, str]], float]:
        """The log so far, and the guest's clock when it was read."""
        out = self.guest.run(f"date +%s.%N; cat {WATCH_LOG}").stdout.splitlines()
        events = []
        for line in out[1:]:
            when, _, what = line.partition(" ")
            events.append((float(when), what))
        return events, float(out[0])

    def value(self) -> str:
        return self.guest.run(f"cat {VALUE}").stdout.strip()

    @staticmethod
    def pulses(events: list[tuple[float, str]]) -> list[tuple[float, float | None]]:
        """(rise, fall) of each time the line was high; fall None while it still is."""
        found: list[tuple[float, float | None]] = []
        for when, what in events:
            if what == "value 1":
                found.append((when, None))
            elif what == "value 0" and found and found[-1][1] is None:
                found[-1] = (found[-1][0], when)
        return found

    @staticmethod
    def claims_between(events: list[tuple[float, str]], start: float,
                       end: float) -> list[str]:
        """The claims (and their changes) and releases of the pin in (start, end)."""
        return [what for when, what in events if start < when < end
                and (what.startswith(("requested", "reconfigured")) or what == "released")]

    @staticmethod
    def stop_post_output_at(events: list[tuple[float, str]], died: float) -> float | None:
        """When, after the daemon's claim ended (its first release after ``died``), the pin was
        next claimed as an output: relay-off driving it off, the end of a pulse on a kernel that
        keeps a dead process's output (Raspberry Pi OS)."""
        released = False
        for when, what in events:
            if when <= died:
                continue
            if what == "released":
                released = True
            elif released and re.match(r"(requested|reconfigured) output", what):
                return when
        return None


def restart_scheduled_at(guest: Guest, since: str) -> float:
    """When systemd scheduled the unit's restart (after ExecStopPost), the guest's clock."""
    out = guest.wait_until(
        f"journalctl -u twinlockd --since '{since}' -o short-unix --no-pager "
        "| grep -m 1 'Scheduled restart job'", 300, "systemd's restart of twinlockd")
    return float(out.split()[0])


def let_go_held_off(claims: list[str], off_pull: str) -> bool:
    """The pin was let go last as an output pulled towards the relay's off level
    (daemon/door/relay_pin.py), not as gpiozero's own pin leaves it: an input without bias."""
    held = [c for c in claims if c != "released"]
    return claims[-1:] == ["released"] and bool(held) \
        and re.match(rf"(requested|reconfigured) output {off_pull} ", held[-1]) is not None


def stop_post_claimed(claims: list[str], off_pull: str = "pull-down") -> bool:
    """The daemon's claim ended, then the pin was requested as an output and released again,
    held off (relay-off, the unit's ExecStopPost): the first release is the dead daemon's.
    ``off_pull``: the relay's off level as a pull (the VM's relay is active-high: pull-down)."""
    rest = claims[claims.index("released") + 1:] if "released" in claims else []
    return any(re.match(r"requested output", c) for c in rest) and let_go_held_off(rest, off_pull)


@pytest.fixture(scope="module")
def relay(door: Door) -> RelayLine:
    """The watcher, started once (a transient unit of its own, as root, outside twinlockd)."""
    guest = door.guest
    guest.put(Path(__file__).with_name("relay_watch.py"), "/root/relay_watch.py")
    guest.run(f"systemctl stop {WATCH_UNIT} 2>/dev/null; rm -f {WATCH_LOG}; "
              f"systemd-run --quiet --unit={WATCH_UNIT} --collect python3 /root/relay_watch.py "
              f"/dev/gpiochip0 {VALUE} {RELAY_PIN} {WATCH_LOG}")
    out = guest.wait_until(f"grep -m 1 ' value ' {WATCH_LOG}", 60, "the relay watcher's first line")
    return RelayLine(guest, float(out.split()[0]))
