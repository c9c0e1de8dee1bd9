"""A training run killed mid-way resumes from its last checkpoint (under tf.distribute)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from twinlock.trainer.cli import main

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _epochs_done(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "state.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


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

    assert main(["train", "--resume", str(run_dir)]) == 0
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
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
