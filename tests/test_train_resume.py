"""A training run killed mid-way resumes from its last checkpoint (under tf.distribute): the
weights and the optimizer's state (step count, Adam moments) come back as they were saved."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from train_helpers import check_restore, kill_after_first_epoch

from twinlock.trainer.cli import main

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _check_restore(run_dir: Path, done: int) -> None:
    from twinlock.trainer.training.prepare import prepare_data
    from twinlock.trainer.training.runs import load_run_config
    from twinlock.trainer.training.trainloop import TrainLoop

    cfg = load_run_config(run_dir)
    check_restore(TrainLoop(cfg, prepare_data(cfg, progress=False), run_dir, progress=False),
                  run_dir, done)


def test_kill_then_resume_with_mirrored_strategy(tmp_path: Path, orl_dir: Path,
                                                 crop_cache: Path) -> None:
    run_dir = tmp_path / "run"
    argv = ["train", "--data", str(orl_dir), "--out", str(run_dir), "--epochs", "3",
            "--steps-per-epoch", "40", "--batch-size", "16", "--val-fraction", "0.25",
            "--strategy", "mirrored", "--seed", "1"]
    done, stderr, before = kill_after_first_epoch(argv, run_dir, crop_cache, 240)
    assert 1 <= done < 3, stderr[-2000:]
    assert "MirroredStrategy" in stderr
    assert not (run_dir / "metrics.json").exists()
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
