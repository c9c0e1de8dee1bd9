"""Plots: every function writes a real, non-blank PNG and leaves no figure open."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from twinlock.daemon.errors import DataError
from twinlock.trainer.stats import metrics as m
from twinlock.trainer.stats import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0, 1]: same pairs high, different pairs low, overlapping."""
    rng = np.random.default_rng(0)
    n = 3000
    labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    logits = np.where(labels, rng.normal(2.0, 1.2, 2 * n), rng.normal(-2.0, 1.2, 2 * n))
    return 1.0 / (1.0 + np.exp(-logits)), labels


def _check_png(path: Path, min_colours: int = 8) -> np.ndarray:
    """The file is a PNG, decodes, has a sensible size and is not one flat colour."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 200 and image.shape[1] >= 200
    rgb = image[..., :3]
    assert float(rgb.std()) > 0.01
    q = (rgb.reshape(-1, 3) * 255).astype(np.uint32)
    colours = np.unique((q[:, 0] << 16) | (q[:, 1] << 8) | q[:, 2])
    assert colours.size >= min_colours
    assert plt_open_figures() == 0
    return image


def plt_open_figures() -> int:
    import matplotlib.pyplot as plt

    return len(plt.get_fignums())


def test_plot_roc(tmp_path: Path, pairs: tuple[np.ndarray, np.ndarray]) -> None:
    scores, labels = pairs
    far, tar, _ = m.roc_curve(scores, labels)
    far8, tar8, _ = m.roc_curve(np.round(scores, 2), labels)
    tar_1e3 = m.tar_at_far(scores, labels, [1e-3])["1e-03"]
    out = plots.plot_roc(
        tmp_path / "roc.png",
        {f"keras (AUC {m.roc_auc(scores, labels):.3f})": (far, tar), "int8": (far8, tar8)},
        points={"FAR 1e-3": (1e-3, tar_1e3)},
    )
    assert out == tmp_path / "roc.png"
    _check_png(out)


def test_plot_det(tmp_path: Path, pairs: tuple[np.ndarray, np.ndarray]) -> None:
    scores, labels = pairs
    far, tar, _ = m.roc_curve(scores, labels)
    eer, _ = m.equal_error_rate(scores, labels)
    out = plots.plot_det(
        tmp_path / "sub" / "det.png",  # missing folders are created
        {"keras": (far, 1 - tar)},
        points={f"EER {eer:.1%}": (eer, eer)},
    )
    _check_png(out)


def test_probit_clips_and_is_monotone() -> None:
    z = plots.probit([0.0, 1e-4, 0.5, 1.0])
    assert np.all(np.isfinite(z))
    assert np.all(np.diff(z) > 0)
    assert z[2] == pytest.approx(0.0)
    assert z[0] == pytest.approx(-4.2649, abs=1e-3)  # probit(1e-5)


def test_plot_score_histograms(tmp_path: Path, pairs: tuple[np.ndarray, np.ndarray]) -> None:
    scores, labels = pairs
    thresholds = m.calibrate_thresholds(scores, labels, fars=(1e-2, 1e-3))
    out = plots.plot_score_histograms(tmp_path / "hist.png", scores, labels, thresholds)
    _check_png(out)
    # scores outside [0, 1] (e.g. negative distances) and no thresholds
    out = plots.plot_score_histograms(tmp_path / "hist2.png", -scores * 3, labels)
    _check_png(out)
    with pytest.raises(DataError):
        plots.plot_score_histograms(tmp_path / "bad.png", scores, np.ones_like(labels))


def test_plot_training_curves(tmp_path: Path) -> None:
    epochs = 12
    e = np.arange(epochs)
    history = {
        "loss": list(0.7 * np.exp(-e / 4)),
        "auc": list(1 - 0.4 * np.exp(-e / 3)),
        "val_loss": list(0.75 * np.exp(-e / 5)),
        "val_auc": list(1 - 0.45 * np.exp(-e / 3)),
        "learning_rate": list(1e-3 * 0.9**e),
    }
    out = plots.plot_training_curves(tmp_path / "train.png", history)
    image = _check_png(out)
    assert image.shape[1] > image.shape[0]  # three panels side by side
    with pytest.raises(DataError):
        plots.plot_training_curves(tmp_path / "empty.png", {})


def test_empty_curves_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        plots.plot_roc(tmp_path / "x.png", {})
    with pytest.raises(DataError):
        plots.plot_det(tmp_path / "x.png", {"a": ([0.1, 0.2], [0.3])})
    assert plt_open_figures() == 0
