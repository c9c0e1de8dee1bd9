"""The learning-curve plot: one line per starting point and export, older points included."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from twinlock.trainer.evaluation.learning_curve import FROM_SCRATCH, plot, series_name


def _point(views: int, accuracy: float, quantization: str, series: str | None) -> dict:
    point = {"views": views, "heldout_accuracy": accuracy, "heldout_accuracy_std": 0.02,
             "quantization": quantization}
    return point if series is None else point | {"series": series}


def test_runs_from_scratch_and_from_a_model_are_drawn_apart(tmp_path: Path) -> None:
    assert series_name("") == FROM_SCRATCH
    assert series_name("4a2d4b3a1b1b09d7") == "from 4a2d4b3a1b1b09d7"
    # points written before series existed have none: they count as from scratch
    old = [_point(16000, 0.68, "int8", None), _point(96000, 0.895, "mixed", None)]
    warm = [_point(6400, 0.90, "mixed", "from 4a2d"), _point(64000, 0.91, "mixed", "from 4a2d")]
    coloured: dict[str, int] = {}
    for name, points in (("old", old), ("both", old + warm)):
        path = tmp_path / f"{name}.png"
        plot(points, path, {"target (95 %)": 0.95})
        image = cv2.imread(str(path))
        assert image is not None and image.std() > 5
        coloured[name] = int((np.ptp(image.astype(int), axis=2) > 60).sum())
    # the warm run adds a line of its own (more coloured pixels than the old points alone)
    assert coloured["both"] > coloured["old"] * 1.2, coloured
