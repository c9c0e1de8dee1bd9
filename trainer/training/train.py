"""``twinlock train``: face folders in, a run folder with a trained tower, head and metrics out.

Flow: load datasets -> aligned crops (cached) -> identity-disjoint split -> train the twin with the
chosen loss (an epoch = fresh seeded pairs/triplets/images, augmented) -> validation AUC after each
epoch (checkpoint, early stopping) -> fit the L1 head on the best tower -> calibrate thresholds on
the validation identities -> write curves and metrics.

This module only orchestrates. The arrows go one way: ``train -> trainloop -> prepare, runs,
losses, config``; the config, the run-folder layout (``runs``) and data preparation
(``prepare``) import neither this module nor the loop.
Callers import each name from the module that defines it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.crops import CROP_CODE_VERSION
from .config import TrainConfig
from .prepare import (
    PreparedData,
    attach_teacher,
    prepare_data,
)
from .provenance import data_fingerprint, provenance
from .runs import (
    RUN_FILE,
    atomic_write_json,
)

logger = logging.getLogger(__name__)

def train(cfg: TrainConfig, run_dir: Path, argv: Sequence[str] | None = None,
          resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a run; returns the validation metrics also written to metrics.json."""
    # TensorFlow is imported only when training really starts
    if cfg.recipe.online_teacher:
        from .student import OnlineDistillLoop as TrainLoop
    else:
        from .trainloop import TrainLoop  # type: ignore[assignment]

    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, progress)
    if cfg.offline_teacher:
        attach_teacher(cfg, data, progress)
    for key, value in data.report.items():
        logger.info("data: %s = %s", key, value)
    if not resume:
        write_run_record(cfg, data, run_dir, argv)
    loop = TrainLoop(cfg, data, run_dir, progress)
    return loop.run(resume)


def write_run_record(cfg: TrainConfig, data: PreparedData, run_dir: Path,
                     argv: Sequence[str] | None) -> None:
    """run.json (config, provenance, data), command.txt and val_identities.txt of a new run."""
    atomic_write_json(run_dir / RUN_FILE, {
        "config": dataclasses.asdict(cfg),
        "crop_code_version": CROP_CODE_VERSION,
        "provenance": provenance(argv),
        "data": data.report | {"fingerprint": data_fingerprint(data.paths)},
    })
    (run_dir / "command.txt").write_text((provenance(argv)["command"] or "") + "\n")
    (run_dir / "val_identities.txt").write_text(
        "\n".join(sorted({data.identities[data.labels[i]] for i in data.val_idx})) + "\n")
