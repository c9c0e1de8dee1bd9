"""Per-resident fusion: one frame's scores against every anchor -> one score per resident.

The door compares a face with every anchor of every resident in one matrix product and must then
say, per resident, how much the anchors agree. The rules, all vectorised so the door and the
host-side door evaluation (``twinlock evaluate --door``) run the same code on one probe or on
thousands:

- ``max``: the best single anchor's score (the default: most genuine accepts at a door-level
  impostor accept rate of 1e-3 and 1e-4 with models/default).
- ``share``: the rule the door used first: a resident is verified when a share ``v`` of their
  anchors reach the threshold. That is the same as "the ``ceil(v * M)``-th best of their ``M``
  scores reaches it", which is the fused score here, so the rule gets a DET curve like the others.
- ``centroid``: one template per resident, the mean of their anchors (re-normalised when the
  anchors are unit vectors); its score is the fused score. It let in the most residents at a
  looser 1e-2 with models/default, so it stays.

The mean of the two best anchors was measured too (``twinlock evaluate --door``) and lost to
``max`` at every target, so the door does not offer it.

Which rule the door uses is ``verification.fusion`` in the config; the measurement that chose
the default is in config.yaml and docs/how-it-works/decisions.md.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelError
from .scoring import unit
from .thresholds import door_rate

logger = logging.getLogger(__name__)

FUSION_RULES: tuple[str, ...] = ("max", "share", "centroid")


def templates(anchor_blocks: Sequence[np.ndarray], rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(templates (T, D), owner (T,) resident index) the probe is scored against under ``rule``:
    every anchor, or one centroid per resident."""
    if not anchor_blocks:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    if rule == "centroid":
        rows = []
        for block in anchor_blocks:
            centre = np.asarray(block, np.float32).mean(axis=0)
            norms = np.linalg.norm(block, axis=1)
            if np.allclose(norms, 1.0, atol=1e-3):  # unit anchors: keep the template on the sphere
                centre = unit(centre)
            rows.append(centre)
        return np.stack(rows).astype(np.float32), np.arange(len(anchor_blocks))
    owner = np.concatenate([np.full(len(b), i) for i, b in enumerate(anchor_blocks)])
    return np.concatenate(anchor_blocks).astype(np.float32), owner


class Fusion:
    """Fuses template scores (..., T) into resident scores (..., R) with one gather and sort."""

    def __init__(self, owner: np.ndarray, n_users: int, rule: str = "max",
                 share: float = 0.5) -> None:
        if rule not in FUSION_RULES:
            raise ValueError(f"unknown fusion rule {rule!r}; use one of {', '.join(FUSION_RULES)}")
        self.rule, self.share, self.n_users = rule, share, n_users
        owner = np.asarray(owner, dtype=np.int64)
        counts = np.bincount(owner, minlength=n_users) if len(owner) else np.zeros(n_users, int)
        width = int(counts.max()) if n_users and len(owner) else 1
        # slots[r, j]: index of resident r's j-th template, or -1 (padding)
        self._slots = np.full((n_users, max(width, 1)), -1, dtype=np.int64)
        fill = np.zeros(n_users, dtype=np.int64)
        for index, user in enumerate(owner):
            self._slots[user, fill[user]] = index
            fill[user] += 1
        self.counts = counts
        # share: the k-th best score, k = ceil(v * M) (a hair below, so 0.6 * 5 stays 3)
        self._rank = np.maximum(1, np.ceil(share * counts - 1e-9)).astype(np.int64) - 1

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Scores against every template (..., T) -> fused score per resident (..., R)."""
        scores = np.asarray(scores, dtype=np.float32)
        if self.rule == "centroid":
            return scores
        padded = np.where(self._slots >= 0, scores[..., np.maximum(self._slots, 0)], -np.inf)
        if self.rule == "max":
            return padded.max(axis=-1)
        ordered = -np.sort(-padded, axis=-1)  # best first, padding last
        return np.take_along_axis(
            ordered, np.broadcast_to(self._rank[:, None], ordered.shape[:-1] + (1,)),
            axis=-1)[..., 0]


def door_calibration(metrics: dict[str, Any]) -> dict[str, Any]:
    """The door-level calibration ``twinlock evaluate --door --write-thresholds`` stored in
    model.json (``metrics.door``), or {} for a model calibrated per pair only."""
    door = metrics.get("door") if isinstance(metrics, dict) else None
    return door if isinstance(door, dict) else {}


def ladders_by_anchors(calibration: dict[str, Any]) -> dict[int, list[list[float]]]:
    """The one-resident ladders ``twinlock evaluate --door`` measured per anchor count
    (``one_resident.ladders_by_anchors``: {"1": ladder, "2": ladder, ...}), or {} for a model
    calibrated at one anchor count only."""
    table = calibration.get("one_resident", {}).get("ladders_by_anchors") if calibration else None
    if not isinstance(table, dict):
        return {}
    return {int(m): ladder for m, ladder in table.items() if ladder}


def ladder_for_anchors(calibration: dict[str, Any], anchors: int) -> list[tuple[float, float]]:
    """The one-resident ladder [(rate, threshold)], strictest rate first, for a resident of
    ``anchors`` anchors: the measured one, rung by rung linear between measured counts, the
    smallest below it (a resident of labelled anchors only is read as one of 1), the largest
    past it. [] without per-count ladders."""
    table = ladders_by_anchors(calibration)
    if not table:
        return []
    counts = sorted(table)
    low = max([m for m in counts if m <= anchors] or [counts[0]])
    high = min([m for m in counts if m >= anchors] or [counts[-1]])
    rungs = _rungs(table[low])
    if high == low:
        return rungs
    w = (anchors - low) / (high - low)
    upper = _rungs(table[high])
    return [(far, t + w * (ladder_threshold(upper, far) - t)) for far, t in rungs]


def _rungs(ladder: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    return sorted((float(far), float(t)) for far, t in ladder)


def _tail_slope(rungs: list[tuple[float, float]]) -> float:
    """Logit of the threshold per decade of rate along the two strictest rungs (>= 0): how
    the ladder is extended past its strictest measured rung (as ``strict_threshold`` does)."""
    (f0, t0), (f1, t1) = rungs[0], rungs[1]
    return max((_logit(t0) - _logit(t1)) / (math.log10(f1) - math.log10(f0)), 0.0)


def ladder_threshold(rungs: list[tuple[float, float]], rate: float) -> float:
    """The threshold a one-resident ladder (``_rungs``) gives ``rate``: log-linear between
    rungs, extended in logit space past the strictest (``_tail_slope``), the loosest rung's
    threshold for a looser rate (never looser than measured)."""
    if rate >= rungs[-1][0] or len(rungs) == 1:
        return rungs[-1][1]
    if rate < rungs[0][0]:
        logit = _logit(rungs[0][1]) + _tail_slope(rungs) * (math.log10(rungs[0][0])
                                                           - math.log10(rate))
        return 1.0 / (1.0 + math.exp(-logit))
    for (f0, t0), (f1, t1) in itertools.pairwise(rungs):
        if f0 <= rate <= f1:
            w = (math.log(rate) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return t0 + w * (t1 - t0)
    return rungs[0][1]  # unreachable: the rungs cover [rungs[0], rungs[-1]]


def ladder_rate(rungs: list[tuple[float, float]], threshold: float) -> float:
    """The one-resident rate a ladder (``_rungs``) gives ``threshold``: ``ladder_threshold``
    read backwards, log-linear between rungs, only what was measured: the loosest rung's rate
    for a looser threshold, the strictest rung's for a stricter one. Rates past the strictest
    rung cannot be measured with the held-out strangers, so a threshold beyond it is read as
    that rung's rate, never extrapolated (``resident_thresholds`` keeps the door's threshold
    as its floor, so the clamp never makes a resident looser than the door)."""
    if threshold <= rungs[-1][1]:
        return rungs[-1][0]
    if threshold >= rungs[0][1]:
        return rungs[0][0]
    for (f0, t0), (f1, t1) in itertools.pairwise(rungs):
        if t1 <= threshold <= t0:
            w = 0.0 if t0 == t1 else (t0 - threshold) / (t0 - t1)
            return math.exp(math.log(f0) + w * (math.log(f1) - math.log(f0)))
    return rungs[0][0]  # unreachable for a ladder whose thresholds fall as its rate grows


def threshold_for_residents(calibration: dict[str, Any], target: float,
                            residents: int) -> tuple[float, float] | None:
    """(threshold, one-resident rate) that keeps ``target`` per knock at a door of ``residents``.

    A stranger is let in when they pass for any resident, so the rate per knock is at most R
    times the one-resident rate (measured: 4.4x at R = 5, 8.4x at R = 10 for models/default).
    The door therefore asks the one-resident ladder that ``twinlock evaluate --door`` measured
    (impostor rate per knock at a door of one resident, against threshold) for ``target / R``,
    interpolating log-linearly. Past the strictest rung it keeps that rung and warns: the
    target is then not measured for this many residents. None when the model has no ladder.
    This is the ladder of the calibrated anchor count; ``resident_thresholds`` raises it for a
    resident with anchors from labels.
    """
    ladder = calibration.get("one_resident", {}).get("ladder") if calibration else None
    if not ladder or residents < 1:
        return None
    rungs = sorted((float(far), float(t)) for far, t in ladder)  # strictest (lowest far) first
    want = target / residents
    if want <= rungs[0][0]:
        if want < rungs[0][0] * (1 - 1e-9):
            logger.warning("%d residents: a per-knock target of %.0e needs a one-resident rate "
                           "of %.1e, below the strictest measured (%.0e); using that one",
                           residents, target, want, rungs[0][0])
        return rungs[0][1], rungs[0][0]
    if want >= rungs[-1][0]:
        return rungs[-1][1], rungs[-1][0]
    for (f0, t0), (f1, t1) in itertools.pairwise(rungs):
        if f0 <= want <= f1:
            w = (math.log(want) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return t0 + w * (t1 - t0), want
    return None  # unreachable: the rungs cover [rungs[0], rungs[-1]]


#: bounds of a resident's own false-accept target (``twinlock enroll --strict``): from the
#: loosest rung any door calibration measures to two decades past the strictest (extrapolated)
STRICT_FAR_MIN, STRICT_FAR_MAX = 1e-6, 1e-2


def strict_threshold(calibration: dict[str, Any], far: float) -> tuple[float, bool]:
    """(threshold, extrapolated) that holds a stranger's chance per knock of passing for one
    resident to ``far``: the one-resident ladder of ``twinlock evaluate --door``, interpolated
    log-linearly; past its strictest rung, extended in logit space along its last two rungs
    (``extrapolated`` True: a rate that the held-out strangers are too few to measure).

    For a resident with a look-alike (docs/how-it-works/security.md), resolved on the host
    when the gallery is written. ModelError when ``far`` is out of bounds or the model has no
    ladder: a strict resident is never written with a guessed number.
    """
    if isinstance(far, bool) or not isinstance(far, int | float) or not math.isfinite(far) \
            or not STRICT_FAR_MIN <= far <= STRICT_FAR_MAX:
        raise ModelError(f"a resident's false-accept target must be within "
                         f"{STRICT_FAR_MIN:g}..{STRICT_FAR_MAX:g}, not {far!r}")
    ladder = calibration.get("one_resident", {}).get("ladder") if calibration else None
    rungs = sorted((float(f), float(t)) for f, t in ladder or [])
    if len(rungs) < 2:
        raise ModelError("the model has no one-resident ladder (run twinlock evaluate --door "
                         "--write-thresholds on it): a resident's own target cannot be resolved")
    if far >= rungs[0][0] * (1 - 1e-9):
        fitted = threshold_for_residents(calibration, far, 1)
        assert fitted is not None  # a ladder with two rungs answers every rate within it
        return fitted[0], False
    return ladder_threshold(rungs, far), True


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1.0 - p))


def resident_thresholds(thresholds: dict[str, float], default_threshold: str,
                        metrics: dict[str, Any], anchors: Sequence[tuple[int, int]],
                        threshold: float | None = None, threshold_name: str | None = None,
                        fusion: str | None = None) -> tuple[float, ...] | None:
    """Each resident's bar at the door when some of their anchors came from the door's own
    faces by a label (``twinlock activity label --as``): so that a label never makes a resident
    easier to impersonate, and nothing is looser than the door's one threshold.

    ``anchors`` holds (anchors, of them from enrolment) per resident, in gallery order. The
    door's threshold for R residents (``decision_settings``: ``base``) gives a stranger a
    one-resident rate r0 against a resident of ``enrolled`` anchors (that count's ladder read
    backwards, ``ladder_rate``; a base past its strictest measured rung reads that rung's
    rate, the strictest the calibration can vouch for); the resident's bar is max(base, the
    threshold the ladder of all their anchors gives r0): the extra anchors may not raise a
    stranger's chance. A resident enrolled from photos only keeps ``base`` whatever their
    count.

    A door-level threshold named in the config (``verification.threshold_name:
    door_far_1e-04``) is a base like the model's default; a number or a pair threshold has no
    place on the door's ladders, so the rule cannot hold it and returns None.

    None where every resident keeps the door's one threshold: no labelled anchors, a model
    without per-count ladders (an older calibration), a numeric or pair threshold in the
    config, or another fusion rule than the calibration's. The ``Verifier`` raises any of them
    to a resident's own strict threshold."""
    calibration = door_calibration(metrics)
    calibrated = calibration.get("fusion")
    if threshold is not None or door_rate(threshold_name or default_threshold) is None \
            or not any(enrolled < total for total, enrolled in anchors) \
            or (fusion or calibrated) != calibrated or not ladders_by_anchors(calibration):
        return None
    base = decision_settings(thresholds, default_threshold, metrics, fusion=fusion,
                             threshold_name=threshold_name, residents=len(anchors))[0]
    out = []
    for i, (total, enrolled) in enumerate(anchors):
        if enrolled >= total:
            out.append(base)
            continue
        rate = ladder_rate(ladder_for_anchors(calibration, max(enrolled, 1)), base)
        raised = ladder_threshold(ladder_for_anchors(calibration, total), rate)
        out.append(max(base, raised))
        logger.info("resident %d of %d: %d anchor(s), %d from labels: threshold %.6f (the "
                    "door's %.6f gives a stranger %.1e against %d enrolled anchor(s))", i + 1,
                    len(anchors), total, total - enrolled, out[-1], base, rate, enrolled)
    return tuple(out)


def decision_settings(thresholds: dict[str, float], default_threshold: str,
                      metrics: dict[str, Any], threshold: float | None = None,
                      threshold_name: str | None = None,
                      fusion: str | None = None,
                      residents: int | None = None) -> tuple[float, str, str]:
    """(threshold, where it came from, fusion rule) for a model and the config's overrides.

    The model is the one source of truth: its ``default_threshold`` and, when it has a door
    calibration, the fusion rule that calibration was made for. A model without one (an older
    export) keeps the rule it was used with, ``share``. A config value overrides and says so in
    the log, since a threshold only means its measured false-accept rate under its own rule.
    Raises ModelError when the named threshold is not in the model.
    """
    calibrated = door_calibration(metrics).get("fusion")
    rule = fusion or (calibrated if calibrated in FUSION_RULES else "share")
    if threshold is not None:
        return float(threshold), "verification.threshold", rule
    name = threshold_name or default_threshold
    if name not in thresholds:
        raise ModelError(f"the model has no calibrated threshold {name!r} (it has "
                         f"{', '.join(sorted(thresholds)) or 'none'})"
                         + ("" if threshold_name else " and names it as its default_threshold"))
    if not calibrated and not threshold_name:
        logger.warning("model thresholds are per pair only (no door calibration): %s lets more "
                       "strangers in at a door than its name says; run twinlock evaluate --door "
                       "--write-thresholds on the model", name)
    if threshold_name and threshold_name != default_threshold:
        logger.warning("verification.threshold_name %s overrides the model's default_threshold %s",
                       threshold_name, default_threshold)
    if name.startswith("door_") and calibrated and rule != calibrated:
        logger.warning("threshold %s was calibrated for fusion %r, the config asks for %r: its "
                       "false-accept rate does not hold", name, calibrated, rule)
        return thresholds[name], name, rule
    target = door_rate(name)
    if residents and target is not None and not threshold_name:
        fitted = threshold_for_residents(door_calibration(metrics), target, residents)
        if fitted is not None:
            value, per_resident = fitted
            return value, (f"{name} for {residents} resident(s): one-resident rate "
                           f"{per_resident:.1e}"), rule
    return thresholds[name], name, rule
