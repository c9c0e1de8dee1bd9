"""A training run killed mid-way resumes from its last checkpoint (under tf.distribute): the
weights and the optimizer's state (step count, Adam moments) come back as they were saved."""

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
import pytest

from twinlock.trainer.cli import main

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _epochs_done(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "state.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _h5_arrays(path: Path) -> list[np.ndarray]:
    """Every model array in a Keras weights file (not the optimizer's copy Keras also writes
    there), read with h5py, not through Keras's loader."""
    arrays: list[np.ndarray] = []
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: arrays.append(obj[()])
                          if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer")
                          else None)
    return arrays


def _fingerprints(arrays: list[np.ndarray]) -> list[tuple[tuple[int, ...], bytes]]:
    return sorted((a.shape, np.ascontiguousarray(a, np.float32).tobytes()) for a in arrays)


def _check_restore(run_dir: Path, epochs_done: int) -> None:
    """The loop's own restore puts back exactly the saved weights and optimizer variables, and a
    fresh model does not already hold them (so the comparison can fail)."""
    from twinlock.trainer.training.prepare import prepare_data
    from twinlock.trainer.training.runs import load_run_config
    from twinlock.trainer.training.trainloop import TrainLoop

    cfg = load_run_config(run_dir)
    loop = TrainLoop(cfg, prepare_data(cfg, progress=False), run_dir, progress=False)
    saved = _fingerprints(_h5_arrays(run_dir / "checkpoints" / "last.weights.h5"))
    assert _fingerprints(loop.model.get_weights()) != saved
    state = loop._restore()
    assert state["epoch"] == epochs_done
    assert _fingerprints(loop.model.get_weights()) == saved
    with np.load(run_dir / "checkpoints" / "optimizer.npz") as npz:
        expected = [npz[f"v{i}"] for i in range(len(npz.files))]
    restored = [np.asarray(v) for v in loop.optimizer.variables]
    assert len(restored) == len(expected) > 2
    for got, want in zip(restored, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # the step counter is the killed process's own: every step of every finished epoch
    assert int(loop.optimizer.iterations.numpy()) == epochs_done * cfg.steps_per_epoch
    moments = [v for v in restored if v.ndim > 1]
    assert moments and any(np.abs(m).max() > 0 for m in moments)


def test_kill_then_resume_with_mirrored_strategy(tmp_path: Path, orl_dir: Path,
                                                 crop_cache: Path) -> None:
    run_dir = tmp_path / "run"
    argv = ["train", "--data", str(orl_dir), "--out", str(run_dir), "--epochs", "3",
            "--steps-per-epoch", "40", "--batch-size", "16", "--val-fraction", "0.25",
            "--strategy", "mirrored", "--seed", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "twinlock.trainer.cli", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=os.environ | {"TWINLOCK_CACHE": str(crop_cache)})
    deadline = time.monotonic() + 240
    while _epochs_done(run_dir) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate()[1].decode()
    done = _epochs_done(run_dir)
    assert 1 <= done < 3, stderr[-2000:]
    assert "MirroredStrategy" in stderr
    assert not (run_dir / "metrics.json").exists()
    with (run_dir / "history.csv").open() as handle:
        before = list(csv.DictReader(handle))
    _check_restore(run_dir, done)

    assert main(["train", "--resume", str(run_dir)]) == 0
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert rows[:done] == before  # the epochs before the kill are kept, not re-run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3
    run = json.loads((run_dir / "run.json").read_text())
    assert run["config"]["strategy"] == "mirrored"


def test_refuses_to_overwrite_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state.json").write_text("{}")
    code = main(["train", "--data", str(tmp_path), "--out", str(run_dir)])
    assert code == 2
    assert "--resume" in capsys.readouterr().err
