"""``twinlock activity label``: what the household says about an attempt becomes enrolment, or a
known impostor pair, never a more permissive door.

- ``--as NAME``: the attempt's face crop (the tower's own chip, as the door saw it) goes through
  the same enrolment gate as a photo (``enroll_from_images``: one face, quality, near-duplicate,
  the resident's photo limit). A refused crop is reported with the gate's reason and adds
  nothing. The next bundle carries the new anchors.
- ``--not NAME`` on an unlock as NAME: the door let the wrong person in. The pair is kept (a
  label of kind ``not``); the anchors that matched are listed with their scores; and the
  remedies are measured, each with what it costs NAME: removing the matching anchors, or making
  NAME strict (``twinlock users strict``) at the first level that refuses this face. The cost is
  NAME's genuine acceptance on their own faces: each stored anchor knocking against the others
  (leave-one-out) and every attempt labelled as NAME. Nothing is changed unless asked
  (``apply``), and both remedies only make the door stricter.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinlock.daemon.errors import ModelError, UsageError
from twinlock.daemon.recognition.fusion import (
    decision_settings,
    door_calibration,
    strict_threshold,
    templates,
)
from twinlock.daemon.recognition.model import read_metadata
from twinlock.daemon.recognition.scoring import l1_head_scores

from .activity import ActivityStore, Attempt
from .enroll import EnrolReport, describe, enroll_from_images, reembed
from .enroll_store import EnrolmentStore, label_source

logger = logging.getLogger(__name__)

#: the levels of ``twinlock users strict`` tried, loosest first
STRICT_LEVELS = (1e-4, 3e-5, 1e-5, 3e-6, 1e-6)


def label_as(activity: ActivityStore, enrolment: EnrolmentStore, attempts: Sequence[Attempt],
             name: str, model_dir: Path) -> EnrolReport:
    """Enrol the attempts' crops as ``name`` through the enrolment gate; each attempt gets a
    label saying what became of it."""
    with tempfile.TemporaryDirectory(prefix="twinlock-label-") as tmp:
        files = []
        for attempt in attempts:
            crop = activity.crop(attempt.id)
            if crop is None:
                raise UsageError(f"attempt {attempt.id} kept no face crop: nothing to enrol")
            path = Path(tmp) / label_source(attempt.id)
            path.write_bytes(crop)
            files.append(path)
        report = enroll_from_images(enrolment, name, files, model_dir)
    refused = {source: reason for source, reason in report.rejected}
    for attempt in attempts:
        source = label_source(attempt.id)
        outcome = ("enrolled" if source in report.accepted
                   else f"refused: {describe(refused.get(source, 'unknown'))}")
        activity.add_label(attempt.id, "as", report.user or name, outcome)
    return report


@dataclass
class Remedy:
    """One way to refuse this face next time, and what it costs the resident."""

    what: str
    command: str
    refuses_this_face: bool
    genuine_before: float | None
    genuine_after: float | None
    genuine_knocks: int
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"what": self.what, "command": self.command,
                "refuses_this_face": self.refuses_this_face,
                "genuine_acceptance_before": self.genuine_before,
                "genuine_acceptance_after": self.genuine_after,
                "genuine_knocks": self.genuine_knocks} | self.detail


@dataclass
class ImpostorReport:
    attempt: str
    resident: str
    threshold: float
    fusion: str
    fused_score: float
    anchors: list[dict[str, Any]]
    remedies: list[Remedy]

    def as_json(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "resident": self.resident,
                "door_threshold": self.threshold, "fusion": self.fusion,
                "fused_score_now": self.fused_score, "anchors": self.anchors,
                "remedies": [r.as_json() for r in self.remedies]}


def _fused(probes: np.ndarray, anchors: np.ndarray, weights: np.ndarray, bias: float,
           rule: str) -> np.ndarray:
    """The resident's fused score for each probe (the door's rule; ``share`` as ``max``)."""
    if len(anchors) == 0:
        return np.zeros(len(probes), np.float32)
    if rule == "centroid":
        template, _ = templates([anchors], "centroid")
        anchors = template
    return np.array([float(l1_head_scores(p, anchors, weights, bias).max()) for p in probes])


def _acceptance(probes: np.ndarray, anchors: np.ndarray, weights: np.ndarray, bias: float,
                rule: str, threshold: float) -> float | None:
    """Share of ``probes`` the door lets in as this resident (None without probes)."""
    if len(probes) == 0:
        return None
    if len(anchors) == 0:
        return 0.0
    fused = _fused(probes, anchors, weights, bias, rule)
    return round(float(np.mean(fused >= threshold)), 4)


def label_not(activity: ActivityStore, enrolment: EnrolmentStore, attempt: Attempt, name: str,
              model_dir: Path) -> ImpostorReport:
    """Record that ``attempt`` (an unlock as ``name``) was someone else, show the anchors that
    matched, and measure the remedies. Changes no anchor and no setting."""
    if attempt.decision != "unlock" or (attempt.resident or "").casefold() != name.casefold():
        raise UsageError(f"--not {name}: attempt {attempt.id} is a {attempt.decision}"
                         + (f" as {attempt.resident}" if attempt.resident else "")
                         + f", not an unlock as {name} (--not says the door let the wrong "
                         "person in)")
    meta = read_metadata(model_dir)
    if attempt.model_id != meta.model_id or attempt.embedding is None:
        raise UsageError(f"attempt {attempt.id} was decided under model {attempt.model_id}; "
                         f"give that model (--model), not {meta.model_id}")
    resident = next((u.name for u in enrolment.users() if u.name.casefold() == name.casefold()),
                    None)
    if resident is None:
        raise UsageError(f"{name} is not enrolled here (twinlock users list)")
    reembed(enrolment, model_dir)  # every sample has its anchor for this model, in id order
    threshold, _, rule = decision_settings(meta.thresholds, meta.default_threshold, meta.metrics)
    w, b = meta.head_weights, meta.head_bias
    samples = list(enrolment.samples(resident))
    held = enrolment.anchors(meta.model_id, user=resident).get(resident)
    anchors = np.zeros((0, meta.embedding_dim), np.float32) if held is None else held
    probe = attempt.embedding[None]
    scores = l1_head_scores(attempt.embedding, anchors, w, b) if len(anchors) else np.zeros(0)
    if len(samples) != len(anchors):
        raise UsageError(f"{resident}'s photos and anchors for model {meta.model_id} disagree "
                         f"({len(samples)} photos, {len(anchors)} anchors); run twinlock bundle "
                         "once to re-make the anchors")
    listed: list[dict[str, Any]] = [
        {"sample": s.id, "source": s.source, "score": round(float(sc), 6),
         "matched": bool(sc >= threshold)} for s, sc in zip(samples, scores, strict=True)]
    listed.sort(key=lambda a: -float(a["score"]))
    fused_now = float(_fused(probe, anchors, w, b, rule)[0])

    labelled = {a for a, kind, n, outcome in activity.labels("as")
                if n.casefold() == resident.casefold() and outcome == "enrolled"}
    own = [a.embedding for a in activity.attempts(ids=sorted(labelled))
           if a.embedding is not None and a.model_id == meta.model_id]
    own_probes = np.stack(own) if own else np.zeros((0, meta.embedding_dim), np.float32)

    def genuine(mask: np.ndarray, at: float) -> tuple[float | None, int]:
        """NAME's acceptance at threshold ``at`` with the anchors in ``mask`` kept."""
        loo = _kept_loo(anchors, mask, w, b, rule, at)
        extra = _acceptance(own_probes, anchors[mask], w, b, rule, at)
        parts = [(loo, len(anchors)), (extra, len(own_probes))]
        knocks = sum(n for v, n in parts if v is not None)
        if not knocks:
            return None, 0
        return round(sum((v or 0) * n for v, n in parts) / knocks, 4), knocks

    remedies: list[Remedy] = []
    everything = np.ones(len(anchors), bool)
    before, knocks = genuine(everything, threshold)
    # 1: remove the best-matching anchors, one at a time, until the door refuses this face
    keep = np.ones(len(anchors), bool)
    removed = []
    for index in np.argsort(-scores) if len(scores) else []:
        if not keep.any() or float(_fused(probe, anchors[keep], w, b, rule)[0]) < threshold:
            break
        keep[index] = False
        removed.append(next(a for a in listed if a["sample"] == samples[int(index)].id))
    refuses = not keep.any() or float(_fused(probe, anchors[keep], w, b, rule)[0]) < threshold
    after, _ = genuine(keep, threshold)
    ids = " ".join(str(a["sample"]) for a in removed)
    remedies.append(Remedy(
        what=f"remove {len(removed)} of {resident}'s {len(anchors)} anchors that matched "
             "this face", command=f"twinlock activity label {attempt.id} --not {resident} "
             f"--apply remove-anchors (samples {ids or 'none'}), then twinlock bundle",
        refuses_this_face=refuses and bool(removed), genuine_before=before,
        genuine_after=after, genuine_knocks=knocks,
        detail={"samples_removed": [a["sample"] for a in removed]}))
    # 2: make the resident strict, at the first level that refuses this face
    calibration = door_calibration(meta.metrics)
    for far in STRICT_LEVELS:
        try:
            strict_t, extrapolated = strict_threshold(calibration, far)
        except ModelError as exc:  # a model without a one-resident ladder
            logger.info("no strict remedy: %s", exc)
            break
        strict_t = max(strict_t, threshold)
        if fused_now < strict_t:
            after, _ = genuine(everything, strict_t)
            remedies.append(Remedy(
                what=f"make {resident} strict at a false-accept target of {far:g} per knock",
                command=f"twinlock users strict {resident} {far:g}, then twinlock bundle",
                refuses_this_face=True, genuine_before=before, genuine_after=after,
                genuine_knocks=knocks,
                detail={"threshold": round(strict_t, 6), "extrapolated": extrapolated}))
            break
    else:
        remedies.append(Remedy(
            what=f"no strict level down to {STRICT_LEVELS[-1]:g} refuses this face "
                 f"(its score {fused_now:.6f})", command="", refuses_this_face=False,
            genuine_before=before, genuine_after=None, genuine_knocks=knocks))
    report = ImpostorReport(attempt.id, resident, round(float(threshold), 6), rule,
                            round(fused_now, 6), listed, remedies)
    activity.add_label(attempt.id, "not", resident, "known impostor pair")
    return report


def _kept_loo(anchors: np.ndarray, keep: np.ndarray, w: np.ndarray, b: float, rule: str,
              at: float) -> float | None:
    """Every one of the resident's faces (all anchors) knocking against the kept anchors, each
    without itself."""
    if len(anchors) == 0:
        return None
    accepted = 0
    for i, probe in enumerate(anchors):
        mask = keep.copy()
        mask[i] = False
        rest = anchors[mask]
        if len(rest) and _fused(probe[None], rest, w, b, rule)[0] >= at:
            accepted += 1
    return round(accepted / len(anchors), 4)


def apply_remove_anchors(enrolment: EnrolmentStore, report: ImpostorReport) -> list[int]:
    """Remedy 1: delete the samples whose anchors matched (the door only gets stricter)."""
    removed = report.remedies[0].detail.get("samples_removed", [])
    for sample in removed:
        enrolment.remove_sample(int(sample))
    return list(removed)
