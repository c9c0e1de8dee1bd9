"""The run folder: what ``twinlock train`` writes where, and reading a run's config back.

Its own module so that training, export, personalisation and evaluation agree on file names
without importing the training loop (or each other).

    run.json           config, provenance, data report (written once, at the start)
    state.json         where training stands (epoch or step, best score, history): resume reads it
    checkpoints/       last.weights.h5 + optimizer.npz (resume), best.weights.h5 (kept model)
    tower.keras        the finished tower
    head.json          the twin's L1 head (weights, bias)
    metrics.json       validation metrics of the finished run
    history.csv        one row per epoch; training_curves.png beside it
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from twinlock.daemon.errors import UsageError
from twinlock.daemon.storage import files

from .config import TrainConfig

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
STATE_FILE = "state.json"
CHECKPOINT_DIR = "checkpoints"
TOWER_FILE = "tower.keras"
HEAD_FILE = "head.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "training_curves.png"
#: inside CHECKPOINT_DIR, beside the weights that checkpoint_path names
OPTIMIZER_FILE = "optimizer.npz"


def checkpoint_path(run_dir: Path, name: str) -> Path:
    """``checkpoints/<name>.weights.h5`` (name: "last" or "best"; "<name>.tmp" while one is
    written): the one spelling of a checkpoint's file name."""
    return run_dir / CHECKPOINT_DIR / f"{name}.weights.h5"


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so a crash leaves the old file or the new one (resume depends on state.json
    matching the checkpoint beside it): the one atomic write, ``daemon.storage.files``."""
    files.atomic_write_json(path, data, None)


def load_run_config(run_dir: Path) -> TrainConfig:
    """The config a run was started with (``run.json``)."""
    try:
        data = json.loads((run_dir / RUN_FILE).read_text())
    except FileNotFoundError:
        raise UsageError(f"{run_dir}: not a training run folder (no {RUN_FILE})") from None
    return TrainConfig(**data["config"])


def write_history(run_dir: Path, history: dict[str, list[float]], index: str = "epoch") -> None:
    """``history.csv``: one row per epoch (or evaluation point), one column per series."""
    keys = list(history)
    with (run_dir / HISTORY_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([index, *keys])
        for row in range(len(history[keys[0]]) if keys else 0):
            writer.writerow([row + 1, *(history[k][row] for k in keys)])
