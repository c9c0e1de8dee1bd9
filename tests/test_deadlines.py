"""Tests that wait on a daemon: deadlines follow the machine's measured speed, and at a deadline
the process is killed and the test fails saying what did not happen (never a hang)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from daemon_helpers import DaemonProcess, scaled, slowdown

SLEEPER = [sys.executable, "-c",
           "import sys, time; print('up', file=sys.stderr, flush=True); time.sleep(600)"]


def test_deadlines_scale_with_the_measured_speed() -> None:
    assert 1.0 <= slowdown() <= 50.0
    assert scaled(10) == pytest.approx(10 * slowdown())


def test_a_daemon_that_never_says_it_is_killed_at_the_deadline() -> None:
    daemon = DaemonProcess(subprocess.Popen(SLEEPER, stderr=subprocess.PIPE, text=True),
                           0.5 / slowdown(), "the line 'door opened'")
    seen: list[str] = []
    with pytest.raises(pytest.fail.Exception, match="the line 'door opened': deadline passed"):
        seen.extend(daemon.lines())
    assert seen == ["up\n"]
    assert daemon.proc.returncode == -9, "the process was killed, not left running"


def test_a_daemon_that_does_not_exit_is_killed_and_the_test_fails() -> None:
    daemon = DaemonProcess(subprocess.Popen(SLEEPER, stderr=subprocess.PIPE, text=True),
                           5, "exit after SIGTERM")
    with pytest.raises(pytest.fail.Exception, match="exit after SIGTERM: did not exit within"):
        daemon.wait(0.3 / slowdown())
    assert daemon.proc.returncode == -9
