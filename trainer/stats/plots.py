"""PNG figures of verification results and training runs, for people to look at.

Everything renders off-screen (Agg) so it works on headless training boxes and in CI. Each
function writes one PNG, closes its figure (no leaks across a long training run) and returns
the path it wrote.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from twinlock.daemon.errors import DataError

from .metrics import check_pairs

logger = logging.getLogger(__name__)

DPI = 110
#: rates are clipped to this before the probit transform (0 and 1 map to -inf/+inf)
DET_CLIP = 1e-5
#: DET tick positions (as rates); labelled in percent
DET_TICKS: tuple[float, ...] = (
    1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99,
)  # fmt: skip

__all__ = [
    "plot_det",
    "plot_roc",
    "plot_score_histograms",
    "plot_training_curves",
    "probit",
]

_inv_cdf = np.vectorize(NormalDist().inv_cdf, otypes=[np.float64])


def probit(rates: Any) -> np.ndarray:
    """Normal deviate of each rate, clipped first so 0 and 1 stay on the plot."""
    r = np.clip(np.asarray(rates, dtype=np.float64), DET_CLIP, 1.0 - DET_CLIP)
    return _inv_cdf(r)


def _percent(rate: float) -> str:
    """0.0001 -> '0.01%', 0.2 -> '20%': readable tick labels."""
    return f"{rate * 100:g}%"


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG and close it, whatever happens."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(out, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    logger.debug("wrote %s", out)
    return out


def _curves(
    kind: str, curves: Mapping[str, tuple[Any, Any]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each curve as two equal-length 1-D float arrays, checked before any figure exists."""
    if not curves:
        raise DataError(f"{kind} needs at least one curve")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, pair in curves.items():
        x = np.asarray(pair[0], dtype=np.float64).ravel()
        y = np.asarray(pair[1], dtype=np.float64).ravel()
        if x.shape != y.shape or x.size == 0:
            raise DataError(f"{kind}: curve {name!r} needs non-empty x and y of equal length")
        out[name] = (x, y)
    return out


def plot_roc(
    path: str | Path,
    curves: Mapping[str, tuple[Any, Any]],
    title: str = "ROC (verification)",
    points: Mapping[str, tuple[float, float]] | None = None,
    far_min: float = 1e-4,
) -> Path:
    """ROC with a log FAR axis: a door lock lives at FAR 1e-3..1e-4, which linear axes hide.

    ``curves`` maps a legend label (put the AUC in it, e.g. "keras (AUC 0.991)") to (far, tar);
    ``points`` marks operating points, e.g. {"threshold 0.62": (far, tar)}.
    """
    checked = _curves("plot_roc", curves)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, (far, tar) in checked.items():
        # FAR 0 has no place on a log axis; park it left of the view so the plateau still shows
        ax.plot(np.maximum(far, far_min / 10), tar, lw=1.8, label=name)
    grid = np.logspace(math.log10(far_min), 0, 200)
    ax.plot(grid, grid, ls=":", color="grey", lw=1, label="chance")
    if points:
        for name, (far, tar) in points.items():
            ax.plot([max(far, far_min)], [tar], marker="o", ms=7, ls="none", label=name)
    ax.set_xscale("log")
    ax.set_xlim(far_min, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR, log scale)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.5)
    ax.grid(True, which="minor", alpha=0.15)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_det(
    path: str | Path,
    curves: Mapping[str, tuple[Any, Any]],
    title: str = "DET (verification)",
    points: Mapping[str, tuple[float, float]] | None = None,
    lims: tuple[float, float] = (1e-4, 0.99),
) -> Path:
    """DET curve (FAR vs FRR) on normal-deviate axes, where good systems plot as straight lines.

    ``curves`` maps a label to (far, frr); rates are clipped to [1e-5, 1 - 1e-5] before the
    probit transform. The dashed diagonal is FAR = FRR: a curve crosses it at its EER.
    """
    checked = _curves("plot_det", curves)
    fig, ax = plt.subplots(figsize=(6.0, 6.0))
    for name, (far, frr) in checked.items():
        ax.plot(probit(far), probit(frr), lw=1.8, label=name)
    lo, hi = probit(np.asarray(lims))
    ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1, label="FAR = FRR")
    if points:
        for name, (far, frr) in points.items():
            ax.plot(probit([far]), probit([frr]), marker="o", ms=7, ls="none", label=name)
    ticks = [t for t in DET_TICKS if lims[0] <= t <= lims[1]]
    tick_pos = probit(np.asarray(ticks))
    labels = [_percent(t) for t in ticks]
    ax.set_xticks(tick_pos, labels)
    ax.set_yticks(tick_pos, labels)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("false reject rate (FRR)")
    ax.set_title(title)
    ax.grid(True, alpha=0.5)
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path)


def plot_score_histograms(
    path: str | Path,
    scores: Any,
    labels: Any,
    thresholds: Mapping[str, float] | None = None,
    title: str = "Pair scores",
    bins: int = 50,
) -> Path:
    """Same- vs different-person score densities: shows at a glance how much the classes overlap.

    Both classes share one set of bins (over [0, 1] when the scores fit, else their range) so
    the bars are comparable; ``thresholds`` are drawn as labelled vertical lines.
    """
    s, y = check_pairs(scores, labels)
    s = s.astype(np.float64)
    lo, hi = float(s.min()), float(s.max())
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, int(bins) + 1)
    fig, ax = plt.subplots(figsize=(8.6, 4.5))
    common = {"bins": edges, "density": True, "alpha": 0.55, "edgecolor": "white", "lw": 0.3}
    ax.hist(s[y], color="tab:green", label=f"same person (n={int(y.sum())})", **common)
    ax.hist(s[~y], color="tab:red", label=f"different person (n={int((~y).sum())})", **common)
    if thresholds:
        styles = ["--", "-.", ":", (0, (5, 1, 1, 1))]
        for i, (name, value) in enumerate(thresholds.items()):
            ax.axvline(
                float(value),
                color=f"C{(i + 4) % 10}",
                ls=styles[i % len(styles)],
                lw=1.6,
                label=f"{name} = {float(value):.4g}",
            )
    ax.set_xlim(lo, hi)
    ax.set_xlabel("score (higher = more likely the same person)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    # outside the axes: inside, it would hide the overlap region, the part worth looking at
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _families(history: Mapping[str, Sequence[float]]) -> dict[str, list[str]]:
    """Group "loss"/"val_loss" etc. under one family name, in first-seen order."""
    families: dict[str, list[str]] = {}
    for key, values in history.items():
        if len(values) == 0:
            continue
        family = key.removeprefix("val_")
        families.setdefault(family, []).append(key)
    return families


def plot_training_curves(
    path: str | Path,
    history: Mapping[str, Sequence[float]],
    title: str = "Training",
) -> Path:
    """One panel per metric family (loss, auc, ...), train and validation on the same axes.

    Takes a Keras ``History.history`` dict; epochs are numbered from 1 as Keras logs them.
    """
    families = _families(history)
    if not families:
        raise DataError("training history is empty: nothing to plot")
    n = len(families)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    flat_axes = axes.ravel()
    for ax, (family, keys) in zip(flat_axes, families.items(), strict=False):
        for key in sorted(keys, key=lambda k: k.startswith("val_")):  # train first
            values = np.asarray(history[key], dtype=np.float64)
            epochs = np.arange(1, values.size + 1)
            is_val = key.startswith("val_")
            ax.plot(
                epochs,
                values,
                color="tab:orange" if is_val else "tab:blue",
                ls="--" if is_val else "-",
                marker="o" if values.size <= 30 else None,
                ms=3,
                label="validation" if is_val else "train",
            )
        if family in ("lr", "learning_rate") and np.all(np.asarray(history[keys[0]]) > 0):
            ax.set_yscale("log")
        ax.set_title(family)
        ax.set_xlabel("epoch")
        ax.set_ylabel(family)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.4)
        ax.legend(fontsize="small")
    for ax in flat_axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _save(fig, path)
