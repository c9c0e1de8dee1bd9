"""A SIGHUP storm (the deploy group may reload the door) neither cuts a visitor's attempt nor
keeps the resident out, while a real change is still applied.

The real daemon replays the clip's resident with real SIGHUPs sent to this process from another
thread, the way ``systemctl reload`` in a loop would deliver them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from daemon_helpers import CLIP, enrol_miranda, liveness_off, scaled, write_config

from twinlock.daemon.door.service import RELOAD_MIN_INTERVAL_S, Daemon
from twinlock.daemon.storage.audit import AuditLog

pytestmark = [pytest.mark.data, pytest.mark.slow]


@pytest.fixture()
def storm() -> Iterator[threading.Event]:
    """An event that stops the test's SIGHUP sender; the signal handlers the daemon installs
    are put back afterwards (pytest's own SIGINT handler among them)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    stop = threading.Event()
    yield stop
    stop.set()
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_a_sighup_storm_with_nothing_changed_cuts_no_attempt(
        tmp_path: Path, door_model: Path, examples_dir: Path,
        storm: threading.Event) -> None:
    """Thousands of SIGHUPs while the resident stands at the door (the clip in real time): no
    attempt is cut ("reloaded during the attempt"), and the resident gets in. Without the fix
    every reload rebuilt the model and ended the attempt, and the resident never got in; with
    the rate limit alone, one reload every RELOAD_MIN_INTERVAL_S still cut attempts."""
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    config = write_config(tmp_path / "config.yaml", tmp_path / "state", door_model,
                          tmp_path / "gallery.json", str(examples_dir / CLIP),
                          action={"type": "log"}, **liveness_off())  # real time: 9 s
    daemon = Daemon(config)
    daemon.install_signal_handlers()
    hups = 0
    original = signal.getsignal(signal.SIGHUP)

    def counted(*args: object) -> None:
        nonlocal hups
        hups += 1
        original(*args)  # type: ignore[operator]

    signal.signal(signal.SIGHUP, counted)
    blower = threading.Thread(target=lambda: [os.kill(os.getpid(), signal.SIGHUP)
                                              for _ in iter(lambda: storm.wait(0.002), True)],
                              daemon=True)
    blower.start()
    try:
        assert daemon.run() == 0
    finally:
        storm.set()
        blower.join(5)
    with AuditLog(tmp_path / "state" / "audit.db") as audit:
        cut = [r for r in audit.query(event="deny") if "reloaded during the attempt" in r.reason]
        unlocks = [r.user for r in audit.query(event="unlock")]
    assert hups > 50, f"only {hups} SIGHUPs arrived: no storm"
    assert not cut, f"{len(cut)} attempt(s) cut by reloads that changed nothing"
    assert unlocks[:1] == ["lin"], unlocks


def test_a_reload_asked_for_too_soon_waits_and_is_then_applied(
        tmp_path: Path, door_model: Path, examples_dir: Path) -> None:
    """A reload asked for within RELOAD_MIN_INTERVAL_S of the last one waits instead of being
    dropped: the changed config comes into force once the interval has passed."""
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    config = write_config(tmp_path / "config.yaml", tmp_path / "state", door_model,
                          tmp_path / "gallery.json", str(examples_dir / CLIP),
                          camera={"realtime": True, "loop": True}, action={"type": "log"},
                          **liveness_off())
    daemon = Daemon(config)
    changed = yaml.safe_load(config.read_text())
    changed["verification"]["frames_required"] = 4
    config.write_text(yaml.safe_dump(changed))
    daemon._last_reload = time.monotonic() - RELOAD_MIN_INTERVAL_S + 0.5  # one just ran
    daemon.reload_requested.set()

    def watch() -> None:  # stop the daemon once the change is in force (or at a deadline)
        deadline = time.monotonic() + scaled(60)
        while time.monotonic() < deadline and daemon.cfg.verification.frames_required != 4:
            time.sleep(0.05)
        daemon.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert daemon.run() == 0
    watcher.join(5)
    assert daemon.cfg.verification.frames_required == 4
    assert daemon.door.window.frames_required == 4
    with AuditLog(tmp_path / "state" / "audit.db") as audit:
        assert len(audit.query(event="reload")) == 1
