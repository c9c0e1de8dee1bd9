"""Helpers for the training tests: reading checkpoints independently of Keras, run-folder state."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np


def epochs_done(run_dir: Path) -> int:
    """Epochs a (possibly running) training run has finished, from its state.json."""
    try:
        return json.loads((run_dir / "state.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def h5_arrays(path: Path) -> list[np.ndarray]:
    """Every model array in a Keras weights file (not the optimizer's copy Keras also writes
    there), read with h5py, not through Keras's loader."""
    arrays: list[np.ndarray] = []
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: arrays.append(obj[()])
                          if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer")
                          else None)
    return arrays


def fingerprints(arrays: list[np.ndarray]) -> list[tuple[tuple[int, ...], bytes]]:
    """Order-free identity of a set of arrays (shape and exact bytes of each)."""
    return sorted((a.shape, np.ascontiguousarray(a, np.float32).tobytes()) for a in arrays)


def check_restore(loop, run_dir: Path, epochs_done: int) -> None:
    """``loop._restore()`` puts back exactly the saved weights and optimizer variables, and the
    freshly built loop did not already hold them (so the comparison can fail)."""
    saved = fingerprints(h5_arrays(run_dir / "checkpoints" / "last.weights.h5"))
    assert fingerprints(loop.model.get_weights()) != saved
    state = loop._restore()
    assert state["epoch"] == epochs_done
    assert fingerprints(loop.model.get_weights()) == saved
    with np.load(run_dir / "checkpoints" / "optimizer.npz") as npz:
        expected = [npz[f"v{i}"] for i in range(len(npz.files))]
    restored = [np.asarray(v) for v in loop.optimizer.variables]
    assert len(restored) == len(expected) > 2
    for got, want in zip(restored, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # the step counter is the killed process's own: every step of every finished epoch
    assert int(loop.optimizer.iterations.numpy()) == epochs_done * loop.cfg.steps_per_epoch
    moments = [v for v in restored if v.ndim > 1]
    assert moments and any(np.abs(m).max() > 0 for m in moments)


def kill_after_first_epoch(argv: list[str], run_dir: Path, cache: Path,
                           timeout_s: float) -> tuple[int, str, list[dict[str, str]]]:
    """Start ``twinlock <argv>`` as a process, SIGKILL it once an epoch is saved; returns
    (epochs done, its stderr, the history rows written before the kill).

    "Saved" means state.json and history.csv both have the epoch: the trainer writes history.csv
    right after state.json, so a kill between the two left an empty ``before`` to compare with
    (resume then rewrites history.csv from state.json; seen once on a busy machine)."""
    proc = subprocess.Popen([sys.executable, "-m", "twinlock.trainer.cli", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=os.environ | {"TWINLOCK_CACHE": str(cache)})
    history = run_dir / "history.csv"

    def rows() -> list[dict[str, str]]:
        try:
            return list(csv.DictReader(history.read_text().splitlines()))
        except FileNotFoundError:
            return []

    deadline = time.monotonic() + timeout_s
    while not 1 <= epochs_done(run_dir) <= len(rows()) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate()[1].decode()
    return epochs_done(run_dir), stderr, rows()
