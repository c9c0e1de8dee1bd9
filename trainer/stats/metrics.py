"""Verification metrics for pair scores, in plain numpy.

Conventions used by every function here:

* ``scores``: 1-D float array, higher means "more likely the same person";
* ``labels``: 1-D bool/0-1 array, 1/True means the pair shows the same person;
* a pair is ACCEPTED when ``score >= threshold``;
* FAR = share of different-person pairs accepted, TAR = share of same-person pairs accepted,
  FRR = 1 - TAR.

A door lock is tuned for a FAR budget, so the threshold helpers are careful about ties: a
threshold never lets a group of equal-scoring impostor pairs push FAR over the budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from twinlock.daemon.errors import DataError, UsageError
from twinlock.daemon.recognition.thresholds import rate_key

logger = logging.getLogger(__name__)

DEFAULT_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)

__all__ = [
    "DEFAULT_FARS",
    "accuracy_at",
    "best_accuracy_threshold",
    "calibrate_thresholds",
    "check_pairs",
    "equal_error_rate",
    "far_key",
    "kfold_accuracy",
    "lfw_folds",
    "n_way_one_shot",
    "precision_recall_at",
    "roc_auc",
    "roc_curve",
    "summarize",
    "tar_at_far",
    "threshold_at_far",
]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Labels as a 1-D bool array; refuses values other than 0/1 so a typo cannot flip classes."""
    try:
        arr = np.asarray(labels)
    except Exception as exc:  # ragged input and the like
        raise DataError(f"{name} could not be read as an array: {exc}") from exc
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.size and not (np.issubdtype(arr.dtype, np.number)):
        raise DataError(f"{name} must be bool or 0/1 numbers, got dtype {arr.dtype}")
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        bad = arr[~((arr == 0) | (arr == 1))][:5]
        raise DataError(f"{name} must contain only 0/1 (or bool); found e.g. {bad.tolist()}")
    return arr.astype(bool)


def _as_scores(scores: Any) -> np.ndarray:
    """Scores as a 1-D finite float array; float32/float16 stay in their dtype (see _step_above)."""
    try:
        arr = np.asarray(scores)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
    except Exception as exc:
        raise DataError(f"scores could not be read as a float array: {exc}") from exc
    if arr.ndim != 1:
        raise DataError(f"scores must be 1-D, got shape {arr.shape}")
    if arr.size and not np.all(np.isfinite(arr)):
        n_bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise DataError(f"scores must be finite; {n_bad} of {arr.size} are NaN or infinite")
    return arr


def check_pairs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (scores, labels); every metric needs both classes to mean anything."""
    s = _as_scores(scores)
    y = _as_labels(labels)
    if s.shape[0] != y.shape[0]:
        raise DataError(f"scores and labels differ in length: {s.shape[0]} != {y.shape[0]}")
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        raise DataError(
            "need at least one same-person and one different-person pair; "
            f"got {n_pos} same and {y.size - n_pos} different"
        )
    return s, y


def _check_far(far: float) -> float:
    """A FAR target must be a rate in (0, 1]."""
    far = float(far)
    if not (0.0 < far <= 1.0):
        raise UsageError(f"FAR target must be in (0, 1], got {far}")
    return far


def _step_above(value: float, dtype: np.dtype) -> float:
    """Smallest number of ``dtype`` strictly above ``value``.

    Done in the scores' own dtype so the result stays strictly above ``value`` even when the
    threshold is later cast back to float32 (a float64 nextafter would round back onto it).
    """
    ftype = np.dtype(dtype).type if np.issubdtype(dtype, np.floating) else np.float64
    return float(np.nextafter(ftype(value), ftype(np.inf)))


def far_key(far: float) -> str:
    """Dictionary key for a FAR target, e.g. ``1e-03``: the spelling of model.json's threshold
    names (daemon/recognition/thresholds.py), used for JSON reports too."""
    return rate_key(far)


# --------------------------------------------------------------------------------------------
# ROC, AUC, EER
# --------------------------------------------------------------------------------------------


def _roc_counts(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accepted (false, true) counts at each distinct score, highest threshold first."""
    order = np.argsort(-s.astype(np.float64), kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # last index of each run of equal scores: accepting "score >= t" takes the whole tie group
    ends = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    return fp[ends], tp[ends], s_sorted[ends].astype(np.float64)


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds), one point per distinct score, from (0, 0, +inf) to (1, 1).

    Point i is what you get accepting ``score >= thresholds[i]``; a tie group moves the curve
    in one diagonal step, which is what makes the area match the Mann-Whitney statistic.
    """
    s, y = check_pairs(scores, labels)
    fp, tp, thr = _roc_counts(s, y)
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    far = np.r_[0.0, fp / n_neg]
    tar = np.r_[0.0, tp / n_pos]
    thresholds = np.r_[np.inf, thr]
    return far, tar, thresholds


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC: P(score of a same pair > score of a different pair), ties 1/2."""
    far, tar, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tar, far))


def equal_error_rate(scores: Any, labels: Any) -> tuple[float, float]:
    """(eer, threshold) where FAR and FRR cross.

    The EER is interpolated linearly along the ROC between the two neighbouring points where
    FAR - FRR changes sign (so it is exact on the curve, not snapped to a sample). The threshold
    is a real, usable one: that of the two neighbouring points with the smaller |FAR - FRR|
    (on a tie the lower, finite threshold).
    """
    far, tar, thr = roc_curve(scores, labels)
    frr = 1.0 - tar
    diff = far - frr  # -1 at the +inf threshold, +1 at the lowest one; non-decreasing
    i = int(np.argmax(diff >= 0.0))  # first point at or past the crossing; always >= 1
    d0, d1 = diff[i - 1], diff[i]
    t = 1.0 if d1 == d0 else float(-d0 / (d1 - d0))
    eer = float(far[i - 1] + t * (far[i] - far[i - 1]))
    j = i if abs(d1) <= abs(d0) else i - 1
    return eer, float(thr[j])


# --------------------------------------------------------------------------------------------
# operating points
# --------------------------------------------------------------------------------------------


def threshold_at_far(scores: Any, labels: Any, far: float) -> float | None:
    """Lowest threshold whose empirical FAR is <= ``far`` (so TAR is as high as possible).

    Returns None when fewer than ceil(1/far) different-person pairs exist: such a FAR cannot be
    measured, and pretending otherwise is how locks get shipped with an untested threshold.
    With k = floor(far * n_negatives) impostors allowed, the (k+1)-th highest impostor score
    must be rejected, so the threshold is the next representable number above it; a tie group
    straddling the budget is therefore rejected as a whole.
    """
    far = _check_far(far)
    s, y = check_pairs(scores, labels)
    neg = np.sort(s[~y].astype(np.float64))[::-1]
    n_neg = neg.size
    needed = math.ceil(1.0 / far - 1e-9)
    if n_neg < needed:
        logger.debug("FAR %s not measurable: %d negatives < %d", far, n_neg, needed)
        return None
    allowed = math.floor(far * n_neg + 1e-9)
    if allowed >= n_neg:  # far == 1: everything may be accepted
        return float(np.min(s))
    return _step_above(neg[allowed], s.dtype)


def tar_at_far(scores: Any, labels: Any, fars: Sequence[float] = DEFAULT_FARS) -> dict[str, float]:
    """{far_key(far): TAR at threshold_at_far}; FARs that cannot be measured are left out."""
    s, y = check_pairs(scores, labels)
    pos = s[y]
    out: dict[str, float] = {}
    for far in fars:
        thr = threshold_at_far(s, y, far)
        if thr is None:
            continue
        out[far_key(far)] = float(np.mean(pos >= thr))
    return out


def accuracy_at(scores: Any, labels: Any, threshold: float) -> float:
    """Share of pairs decided correctly at ``threshold``."""
    s, y = check_pairs(scores, labels)
    return float(np.mean((s >= threshold) == y))


def precision_recall_at(scores: Any, labels: Any, threshold: float) -> tuple[float, float]:
    """(precision, recall) of the "same person" decision at ``threshold``.

    Precision is defined as 1.0 when nothing is accepted: a lock that opens for nobody has made
    no false accept. Recall is the TAR.
    """
    s, y = check_pairs(scores, labels)
    accepted = s >= threshold
    n_acc = int(np.count_nonzero(accepted))
    tp = int(np.count_nonzero(accepted & y))
    precision = 1.0 if n_acc == 0 else tp / n_acc
    recall = tp / int(np.count_nonzero(y))
    return float(precision), float(recall)


def best_accuracy_threshold(scores: Any, labels: Any) -> float:
    """Threshold maximising accuracy on these pairs.

    Every distinct score (plus "reject all") is tried; the winner is moved to the midpoint
    between it and the next lower distinct score, which makes the same decisions here but
    generalises better. Ties between equally accurate thresholds go to the highest one (fewer
    false accepts).
    """
    s, y = check_pairs(scores, labels)
    fp, tp, thr = _roc_counts(s, y)
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    correct = np.r_[n_neg, tp + (n_neg - fp)]  # index 0: reject everything
    best = int(np.argmax(correct))
    if best == 0:
        return _step_above(float(thr[0]), s.dtype)
    hi = float(thr[best - 1])
    if best == thr.size:  # accept everything: nothing lower to split with
        return hi
    lo = float(thr[best])
    mid = float(np.asarray(0.5 * (hi + lo)).astype(s.dtype))  # representable in the scores' dtype
    return mid if lo < mid <= hi else hi


def lfw_folds(labels: Any, n_folds: int = 10) -> np.ndarray:
    """Fold index per pair, as LFW's layout implies.

    Positives in file order are split into ``n_folds`` contiguous chunks, negatives likewise;
    fold i is the i-th chunk of each, so every fold keeps the class balance.
    """
    if int(n_folds) < 2:
        raise UsageError(f"n_folds must be at least 2, got {n_folds}")
    n_folds = int(n_folds)
    y = _as_labels(labels)
    pos = np.flatnonzero(y)
    neg = np.flatnonzero(~y)
    if pos.size < n_folds or neg.size < n_folds:
        raise DataError(
            f"{n_folds} folds need at least {n_folds} same and {n_folds} different pairs; "
            f"got {pos.size} same and {neg.size} different"
        )
    folds = np.empty(y.size, dtype=np.int64)
    for idx in (pos, neg):
        for i, chunk in enumerate(np.array_split(idx, n_folds)):
            folds[chunk] = i
    return folds


def kfold_accuracy(scores: Any, labels: Any, folds: Any) -> dict[str, Any]:
    """LFW-protocol accuracy: each fold is scored with a threshold tuned on the other folds.

    ``accuracy_std`` is the population standard deviation (ddof=0) of the fold accuracies, as
    the usual LFW evaluation code reports it.
    """
    s, y = check_pairs(scores, labels)
    f = np.asarray(folds)
    if f.ndim != 1 or f.shape[0] != s.shape[0]:
        raise DataError(f"folds must be 1-D with one entry per pair; got shape {f.shape}")
    fold_ids = np.unique(f)
    if fold_ids.size < 2:
        raise DataError(f"need at least 2 folds, got {fold_ids.size}")
    accuracies: list[float] = []
    thresholds: list[float] = []
    for k in fold_ids:
        test = f == k
        train = ~test
        try:
            thr = best_accuracy_threshold(s[train], y[train])
        except DataError as exc:
            raise DataError(f"fold {k}: the other folds cannot be used for tuning: {exc}") from exc
        accuracies.append(float(np.mean((s[test] >= thr) == y[test])))
        thresholds.append(float(thr))
    acc = np.asarray(accuracies)
    return {
        "accuracy": float(acc.mean()),
        "accuracy_std": float(acc.std()),
        "fold_accuracies": accuracies,
        "thresholds": thresholds,
    }


# --------------------------------------------------------------------------------------------
# one-shot identification
# --------------------------------------------------------------------------------------------


def n_way_one_shot(
    labels: Iterable[Hashable],
    pair_score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_way: int = 20,
    trials: int = 400,
    seed: int = 0,
) -> float | None:
    """Share of Koch et al.'s N-way one-shot trials answered correctly, or None if impossible.

    A trial compares one test image with one support image of its own identity and one image of
    each of ``n_way - 1`` other identities; it counts only if the true support scores strictly
    highest (a tie is a wrong answer, so a constant scorer gets 0, not 1/N).
    """
    n_way = int(n_way)
    trials = int(trials)
    if n_way < 2:
        raise UsageError(f"n_way must be at least 2, got {n_way}")
    if trials < 1:
        raise UsageError(f"trials must be at least 1, got {trials}")

    groups: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    n_ids = len(groups)
    members = list(groups.values())
    counts = np.array([len(m) for m in members], dtype=np.int64)
    starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    flat = np.array([i for m in members for i in m], dtype=np.int64)
    eligible = np.flatnonzero(counts >= 2)
    if n_ids < n_way or eligible.size == 0:
        logger.info(
            "%d-way one-shot not possible: %d identities, %d with two or more images",
            n_way,
            n_ids,
            eligible.size,
        )
        return None

    rng = np.random.default_rng(seed)
    correct = 0
    for _ in range(trials):
        true_id = int(eligible[rng.integers(eligible.size)])
        c = int(counts[true_id])
        a = int(rng.integers(c))
        b = int(rng.integers(c - 1))
        b += b >= a
        others = rng.choice(n_ids - 1, size=n_way - 1, replace=False)
        others = others + (others >= true_id)
        picks = starts[others] + np.floor(rng.random(n_way - 1) * counts[others]).astype(np.int64)
        test_img = flat[starts[true_id] + a]
        support = np.r_[flat[starts[true_id] + b], flat[picks]]
        result = np.asarray(pair_score(np.full(n_way, test_img), support), dtype=np.float64)
        if result.shape != (n_way,):
            raise DataError(
                f"pair_score returned shape {result.shape} for {n_way} pairs; expected ({n_way},)"
            )
        correct += bool(result[0] > np.max(result[1:]))
    return correct / trials


# --------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------


def calibrate_thresholds(
    scores: Any, labels: Any, fars: Sequence[float] = DEFAULT_FARS
) -> dict[str, float]:
    """{far_key(far): threshold} for every measurable FAR, plus "eer": the EER threshold."""
    s, y = check_pairs(scores, labels)
    out: dict[str, float] = {}
    for far in fars:
        thr = threshold_at_far(s, y, far)
        if thr is not None:
            out[far_key(far)] = float(thr)
    out["eer"] = equal_error_rate(s, y)[1]
    return out


def summarize(
    scores: Any,
    labels: Any,
    threshold: float | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict[str, Any]:
    """One JSON-ready dict of the headline numbers (plain Python floats and ints)."""
    s, y = check_pairs(scores, labels)
    n_same = int(np.count_nonzero(y))
    eer, eer_thr = equal_error_rate(s, y)
    out: dict[str, Any] = {
        "auc": roc_auc(s, y),
        "eer": eer,
        "eer_threshold": eer_thr,
        "tar_at_far": tar_at_far(s, y, fars),
        "n_pairs": int(y.size),
        "n_same": n_same,
        "n_different": int(y.size) - n_same,
    }
    if threshold is not None:
        precision, recall = precision_recall_at(s, y, threshold)
        out["threshold"] = float(threshold)
        out["precision"] = precision
        out["recall"] = recall
        out["accuracy_at_threshold"] = accuracy_at(s, y, threshold)
    return out
