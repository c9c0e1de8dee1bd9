"""Races on the door's state: two ``twinlockd install-bundle`` at once, two daemons on one folder.

Real processes on real files: the installs are the command itself (``twinlockd install-bundle``,
the shipped model checked by LiteRT) in processes started together (from a forkserver with the
daemon's modules loaded: never a fork of this threaded test process); the daemons are
``python -m twinlock.daemon.cli run`` subprocesses.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from daemon_helpers import DaemonProcess, liveness_off
from test_bundle import Door

from twinlock.daemon.bundle import store
from twinlock.daemon.cli import main as twinlockd
from twinlock.daemon.errors import AlreadyRunningError
from twinlock.daemon.storage.state_lock import STATE_LOCK_NAME
from twinlock.trainer.household import signing

ROUNDS = 20


def _processes() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["twinlock.daemon.cli", "twinlock.daemon.bundle.store",
                                    "twinlock.daemon.recognition.model"])
    return context


def _install(barrier: object, bundle: str, config: str, log: str) -> None:
    """A forked child: wait for its rival, then run ``twinlockd install-bundle``; its exit code
    and stderr are the command's."""
    import contextlib

    sys.stdout = sys.stderr = open(log, "w")  # noqa: SIM115 - the child's own streams
    barrier.wait()  # type: ignore[attr-defined]
    code = 1
    with contextlib.suppress(BaseException):
        code = twinlockd(["install-bundle", bundle, "-c", config])
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


def _hold(state: Path, held: object, release: object) -> None:
    with store.bundles_lock(store.bundles_dir(state)):
        held.set()  # type: ignore[attr-defined]
        release.wait(60)  # type: ignore[attr-defined]


def _rollback(state: Path, pub: Path) -> None:
    store.rollback(state, pub)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Door, dict[int, Path]]:
    """The shipped model with sequences 100 (installed first), 101 and 102 (the rivals)."""
    root = tmp_path_factory.mktemp("race")
    door = Door(root)
    bundles = {}
    for sequence in (100, 101, 102):
        bundles[sequence] = root / f"seq{sequence}.twinlock"
        signing.write_bundle(door.model_dir, door.gallery_path, door.key, bundles[sequence],
                             sequence=sequence)
    return door, bundles


@pytest.mark.slow
def test_two_newer_bundles_installed_at_once_leave_the_newest_current(
        signed: tuple[Door, dict[int, Path]], tmp_path: Path) -> None:
    """20 races of ``install-bundle seq 101`` against ``install-bundle seq 102`` over seq 100,
    started together. Without the bundles lock both checked the sequence against 100 and the
    slower won: 101 ended current in some rounds, and both commands said "installed". With it
    102 is always current, and 101 either went first (then 102 replaced it: it is previous) or
    was refused as older."""
    door, bundles = signed
    fork = _processes()
    outcomes = []
    both_installed_over_100: list[int] = []
    for round_ in range(ROUNDS):
        state = tmp_path / f"r{round_}" / "state"
        config = tmp_path / f"r{round_}" / "config.yaml"
        state.parent.mkdir()
        config.write_text(yaml.safe_dump({"state_dir": str(state),
                                          "model": {"public_key": str(door.pub)}}))
        store.install_bundle(bundles[100], door.pub, state)
        barrier = fork.Barrier(2)
        logs = {seq: tmp_path / f"r{round_}" / f"{seq}.log" for seq in (101, 102)}
        # in turn which one is started first
        order = (101, 102) if round_ % 2 else (102, 101)
        children = {seq: fork.Process(target=_install, args=(barrier, str(bundles[seq]),
                                                             str(config), str(logs[seq])))
                    for seq in order}
        for child in children.values():
            child.start()
        for child in children.values():
            child.join(300)
            assert child.exitcode is not None, "an install hung"
        current = store.verify_bundle(store.current_bundle(state), door.pub).sequence
        previous_path = store.bundles_dir(state) / store.PREVIOUS_NAME
        previous = store.verify_bundle(previous_path, door.pub).sequence
        codes = {seq: children[seq].exitcode for seq in (101, 102)}
        said = {seq: logs[seq].read_text() for seq in (101, 102)}
        outcomes.append((round_, current, previous, codes))
        assert codes[102] == 0, said[102]
        if codes[101] == 0:  # 101 went first and 102 replaced it: 101 must be previous
            assert "installed" in said[101]
            if previous != 101:
                both_installed_over_100.append(round_)
        else:
            assert codes[101] == 2 and "older than the installed bundle (sequence 101" in \
                said[101], said[101]
            assert previous == 100
    wrong = [o for o in outcomes if o[1] != 102]
    assert not wrong and not both_installed_over_100, (
        f"the older bundle ended current in {len(wrong)} of {ROUNDS} races; both installed "
        f"over sequence 100 in {len(both_installed_over_100)}: {outcomes}")
    lock = store.bundles_dir(tmp_path / "r0" / "state") / store.LOCK_NAME
    assert lock.is_file() and lock.stat().st_mode & 0o077 == 0


def test_a_rollback_waits_for_an_install_in_progress(
        signed: tuple[Door, dict[int, Path]], tmp_path: Path) -> None:
    """The bundles lock is one lock: while it is held (as an install holds it), a rollback
    waits, then works on what the install left."""
    door, bundles = signed
    state = tmp_path / "state"
    store.install_bundle(bundles[100], door.pub, state)
    store.install_bundle(bundles[101], door.pub, state)
    fork = _processes()
    held, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold, args=(state, held, release))
    holder.start()
    assert held.wait(60)
    rolled = fork.Process(target=_rollback, args=(state, door.pub))
    rolled.start()
    rolled.join(1.0)  # not a deadline: only a look while the lock is held
    assert rolled.exitcode is None, "rollback ran while the bundles folder was locked"
    assert store.verify_bundle(store.current_bundle(state), door.pub).sequence == 101
    release.set()
    holder.join(60)
    rolled.join(120)
    assert rolled.exitcode == 0
    assert store.verify_bundle(store.current_bundle(state), door.pub).sequence == 100


# -- two daemons on one state folder ----------------------------------------------------------

def _daemon_config(tmp_path: Path, name: str, state: Path) -> Path:
    """A daemon that runs until stopped: the shipped model, random anchors, a looping replay of
    one grey picture, the log action."""
    from twinlock.daemon.recognition.gallery import Gallery
    from twinlock.daemon.recognition.model import read_metadata

    model = Path(__file__).resolve().parents[1] / "models" / "default"
    gallery = tmp_path / "gallery.json"
    if not gallery.exists():
        meta = read_metadata(model)
        g = Gallery(meta.model_id)
        g.add("alice", np.random.default_rng(0).normal(size=(2, meta.embedding_dim))
              .astype(np.float32))
        g.save(gallery)
        frames = tmp_path / "frames"
        frames.mkdir()
        import cv2

        cv2.imwrite(str(frames / "0.png"), np.full((120, 160, 3), 90, np.uint8))
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(state),
        "model": {"source": "folder", "dir": str(model), "gallery": str(gallery)},
        "camera": {"type": "replay", "source": str(tmp_path / "frames"), "loop": True,
                   "fps": 5},
        "action": {"type": "log"},
        "audit": {"db": str(state / f"{name}.db")},
        **liveness_off()}))
    return config


def _start(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "twinlock.daemon.cli", "run", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"GPIOZERO_PIN_FACTORY": "mock"})


@pytest.mark.slow
def test_a_second_daemon_on_the_same_state_folder_refuses_to_start(tmp_path: Path) -> None:
    """The first daemon runs; a second on the same state_dir exits at once with code 3 and says
    who holds it, writing nothing (its audit log is never made); the first keeps running. Once
    the first stops, a daemon starts again on that folder. Without the lock both ran."""
    state = tmp_path / "state"
    first = DaemonProcess(_start(_daemon_config(tmp_path, "first", state)), 60,
                          "the first daemon starts")
    try:
        for line in first.lines():
            if "loaded model" in line:
                break
        else:
            first.fail("ended before loading its model")
        second = DaemonProcess(_start(_daemon_config(tmp_path, "second", state)), 60,
                               "the second daemon refuses")
        for line in second.lines():
            if "loaded model" in line:
                second.fail("the second daemon started beside the first")
        assert second.wait(60) == AlreadyRunningError.exit_code, "".join(second.tail)
        said = "".join(second.tail)
        assert f"another twinlockd (pid {first.proc.pid}) is running on state folder" in said
        assert not (state / "second.db").exists(), "the second daemon began its audit log"
        assert first.proc.poll() is None, "the first daemon stopped"
        first.proc.terminate()
        assert first.wait(30) == 0
    finally:
        first.kill()
    third = DaemonProcess(_start(_daemon_config(tmp_path, "third", state)), 60,
                          "a daemon starts again once the first stopped")
    try:
        for line in third.lines():
            if "loaded model" in line:
                break
        else:
            third.fail("ended before loading its model")
    finally:
        third.proc.terminate()
        third.wait(30)
    assert (state / STATE_LOCK_NAME).stat().st_mode & 0o077 == 0
