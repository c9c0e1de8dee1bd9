"""``twinlock evaluate --door``: what one knock at the door risks, measured as the door decides.

The pair figures in model.json say how often one probe matches one anchor of a stranger. The
door does more: it scores each face against every anchor of every resident, fuses each
resident's scores (daemon/recognition/fusion.py) and opens for the best resident when the fused score
reaches the threshold, then wants k of n frames to agree. This module builds doors from the
model's **held-out people** (named by the LFW pairs file the model was trained with
``--holdout-pairs``: never trained on, never used for validation or pair calibration) and
measures them:

- R residents (1-10), each enrolled from M photos (1-10) with the enrolment gate (one face,
  quality, near-duplicates; ``trainer.household.anchors.enrolment_face`` and
  ``trainer.household.enroll.KeptFaces``);
  the first door of the headline setting is also enrolled through ``enroll_from_images`` into a
  throw-away store, and its anchors must equal these;
- every other photo of a resident is a genuine knock; every photo of every other held-out person
  is an impostor knock; knocks go through the daemon's frame path (largest face, quality gate,
  tower, ``Verifier``'s fusion);
- per fusion rule: genuine accepts, wrong-resident accepts, impostor accepts with a 95 %
  Clopper-Pearson upper bound, a door-level DET plot, the change with R and M, and door-level
  thresholds for impostor-accept targets per knock;
- several frames: k-of-n agreement on the real clip and on sequences made of held-out photos.

Each photo is detected and embedded once per model (kept in memory); doors only index into one
score matrix, so a full run takes seconds after the embedding pass.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from twinlock.daemon.camera.replay import ReplayCamera
from twinlock.daemon.door.rules import AgreementWindow
from twinlock.daemon.errors import DataError, UsageError
from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.faces.pipeline import FacePipeline
from twinlock.daemon.recognition.analyser import FrameAnalyser, Rejected
from twinlock.daemon.recognition.fusion import (
    FUSION_RULES,
    Fusion,
    templates,
    threshold_for_residents,
)
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.daemon.recognition.scoring import l1_head_matrix
from twinlock.daemon.recognition.thresholds import door_name, pair_name
from twinlock.daemon.recognition.verify import Verifier
from twinlock.trainer.household.anchors import anchor_from_image

from ..data.pairs import read_pairs_file

logger = logging.getLogger(__name__)

#: door-level impostor-accept targets per knock that get a calibrated threshold
DOOR_FARS = (1e-2, 1e-3, 1e-4)
#: one-resident impostor rates the ladder is measured at (the door picks target / R from it)
LADDER_FARS = (1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4)
#: anchor counts the one-resident ladder is also measured at (the door picks each resident's
#: bar when some of their anchors came from labels: fusion.resident_thresholds)
LADDER_ANCHORS = (1, 2, 3, 4, 5, 8)
#: one-resident doors per anchor count: every person with enough photos is seated several
#: times over (with 100 doors, a third of those with 2+ photos never were, and the 2- to
#: 4-anchor ladders came out 1e-3 looser at the 2e-4 rung; 1000 and 3000 agree within 1e-3)
LADDER_DOORS = 1000
#: the setting the thresholds are calibrated for, and the issue's headline door
HEADLINE_R, HEADLINE_M = 5, 5
CLIP = "short_hamilton_clip.mp4"
CLIP_PERSON = "lin-manuel-miranda.png"
CLIP_FRAMES = (82, 210)  # inclusive: the enrolled person is on screen
EVALUATED = -np.inf  # fused score of a knock the door never scored (no face, bad quality)


# -- statistics -------------------------------------------------------------------------------

def _binom_cdf(x: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if x >= n else 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(x + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def clopper_pearson_upper(x: int, n: int, confidence: float = 0.95) -> float:
    """Upper end of the two-sided exact binomial interval for x successes in n trials."""
    if n <= 0:
        return 1.0
    if x >= n:
        return 1.0
    alpha = (1.0 - confidence) / 2.0
    lo, hi = x / n, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2.0
        if _binom_cdf(x, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def threshold_for(impostor_scores: np.ndarray, far: float) -> float:
    """Lowest threshold whose share of impostor scores at or above it is at most ``far``."""
    scores = np.sort(np.asarray(impostor_scores, np.float64)[np.isfinite(impostor_scores)])[::-1]
    if not len(scores):
        return 0.0
    allowed = math.floor(far * len(scores) + 1e-9)
    if allowed >= len(scores):
        return float(scores[-1])
    return float(np.nextafter(np.float32(scores[allowed]), np.float32(np.inf)))


# -- photos, embedded once --------------------------------------------------------------------

@dataclass
class Photos:
    """Every held-out photo through the door's own path, once per model."""

    paths: list[Path]
    person: np.ndarray  # (N,) index into names
    names: list[str]
    embedding: np.ndarray  # (N, D); zeros where not usable
    knock_ok: np.ndarray  # (N,) the door would score it (largest face passes the quality gate)
    enrol_ok: np.ndarray  # (N,) enrolment would keep it (one face, quality gate)
    reason: list[str | None]  # why a knock or enrolment was refused (None: usable for both)
    embed_ms: float


_PHOTO_CACHE: dict[tuple[str, str, int], Photos] = {}


def held_out_people(pairs_file: Path, images_root: Path) -> list[str]:
    """Names in the held-out pairs file that have a folder under ``images_root``."""
    specs = read_pairs_file(pairs_file, images_root)
    names = sorted({s.a.parent.name for s in specs} | {s.b.parent.name for s in specs})
    return [n for n in names if (images_root / n).is_dir()]


def _gate(image: np.ndarray, pipeline: FacePipeline, embedder: FaceEmbedder,
          thresholds: q.QualityThresholds) -> tuple[np.ndarray | None, bool, str | None]:
    """(embedding, enrolment would keep it, reason) for one photo: the door's frame path
    (largest face, quality, tower) and the enrolment gate (exactly one face) at once."""
    analysis = FrameAnalyser(pipeline, embedder, thresholds).analyse(image)
    if not analysis.observations:
        return None, False, q.NO_FACE
    observation = analysis.observations[0]
    if isinstance(observation, Rejected):
        return None, False, observation.reason
    several = analysis.faces_found > 1
    return observation.embedding, not several, q.SEVERAL_FACES if several else None


def embed_photos(embedder: FaceEmbedder, pipeline: FacePipeline, images_root: Path,
                 people: Sequence[str], progress: bool = True,
                 thresholds: q.QualityThresholds = q.DEFAULT_THRESHOLDS) -> Photos:
    key = (str(embedder.model_dir.resolve()), embedder.meta.model_id,
           hash((str(images_root.resolve()), tuple(people))))
    if key in _PHOTO_CACHE:
        return _PHOTO_CACHE[key]
    paths, person = [], []
    for i, name in enumerate(people):
        for path in sorted((images_root / name).iterdir()):
            if path.is_file():
                paths.append(path)
                person.append(i)
    dim = embedder.meta.embedding_dim
    emb = np.zeros((len(paths), dim), np.float32)
    knock_ok = np.zeros(len(paths), bool)
    enrol_ok = np.zeros(len(paths), bool)
    reason: list[str | None] = []
    started = time.perf_counter()
    for i, path in enumerate(tqdm(paths, desc="held-out photos", unit="img",
                                  disable=not progress, mininterval=1.0)):
        try:
            image = load_image(path)
        except DataError:
            reason.append("unreadable")
            continue
        embedding, enrol, why = _gate(image, pipeline, embedder, thresholds)
        reason.append(why)
        if embedding is not None:
            emb[i], knock_ok[i], enrol_ok[i] = embedding, True, enrol
    ms = (time.perf_counter() - started) * 1000.0 / max(len(paths), 1)
    photos = Photos(paths, np.array(person), list(people), emb, knock_ok, enrol_ok, reason, ms)
    _PHOTO_CACHE[key] = photos
    return photos


def pair_matrix(embedder: FaceEmbedder, emb: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Head score of every photo against every photo (N, N): the door's anchor scores, once."""
    return l1_head_matrix(emb, emb, embedder.meta.head_weights, embedder.meta.head_bias, chunk)


# -- doors ------------------------------------------------------------------------------------

@dataclass
class Door:
    residents: list[int]  # person indices
    anchors: list[list[int]]  # photo indices per resident
    genuine: np.ndarray  # photo indices
    genuine_owner: np.ndarray  # resident position (0..R-1) of each genuine knock
    impostor: np.ndarray  # photo indices
    orders: list[list[int]]  # each resident's photos in the order they were handed in


def build_doors(photos: Photos, residents: int, anchors: int, doors: int, seed: int,
                duplicate_cosine: float, people: np.ndarray | None = None) -> list[Door]:
    """``doors`` seeded doors of ``residents`` people enrolled from ``anchors`` photos each.

    A resident needs ``anchors`` photos that enrolment keeps plus one more photo to knock with.
    Photos are tried in a seeded order, as a person would hand them in; near-duplicates are
    refused as ``twinlock enroll`` refuses them.
    """
    from ..household.enroll import KeptFaces

    rng = np.random.default_rng([seed, residents, anchors])
    pool = np.unique(photos.person) if people is None else np.asarray(people)
    by_person = {int(p): np.flatnonzero(photos.person == p) for p in pool}
    eligible = [p for p, idx in by_person.items()
                if photos.enrol_ok[idx].sum() >= anchors and len(idx) > anchors]
    if len(eligible) < residents:
        raise UsageError(f"only {len(eligible)} held-out people have {anchors} enrolable photos "
                         f"and one more; cannot seat {residents} residents")
    out = []
    for _ in range(doors):
        chosen = [int(p) for p in rng.choice(eligible, residents, replace=False)]
        anchor_sets, orders, genuine, owner = [], [], [], []
        for r, p in enumerate(chosen):
            order = rng.permutation(by_person[p])
            kept = KeptFaces(None, duplicate_cosine)
            mine: list[int] = []
            for i in order:
                if len(mine) < anchors and photos.enrol_ok[i] \
                        and not kept.is_duplicate(photos.embedding[i]):
                    kept.add(photos.embedding[i])
                    mine.append(int(i))
            anchor_sets.append(mine)  # fewer than M when near-duplicates were refused
            orders.append([int(i) for i in order])
            rest = [int(i) for i in order if i not in mine]
            genuine += rest
            owner += [r] * len(rest)
        impostor = np.flatnonzero(~np.isin(photos.person, chosen) & np.isin(photos.person, pool))
        out.append(Door(chosen, anchor_sets, np.array(genuine, int), np.array(owner, int),
                        impostor, orders))
    return out


def door_scores(door: Door, photos: Photos, matrix: np.ndarray, embedder: FaceEmbedder,
                rule: str, share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Fused scores (knocks, R) of the door's genuine and impostor knocks under ``rule``,
    -inf for knocks the door would not score. The same ``Fusion`` the daemon's Verifier runs."""
    knocks = np.concatenate([door.genuine, door.impostor])
    if rule == "centroid":  # one template per resident, as Verifier builds them
        blocks = [photos.embedding[idx] for idx in door.anchors]
        cents, owner = templates(blocks, rule)
        raw = l1_head_matrix(photos.embedding[knocks], cents, embedder.meta.head_weights,
                             embedder.meta.head_bias)
    else:
        flat = np.concatenate(door.anchors)
        owner = np.concatenate([np.full(len(a), r) for r, a in enumerate(door.anchors)])
        raw = matrix[np.ix_(knocks, flat)]
    fused = (_top2(raw, owner, len(door.anchors)) if rule == "top2"
             else Fusion(owner, len(door.anchors), rule, share)(raw))
    fused[~photos.knock_ok[knocks]] = EVALUATED
    return fused[:len(door.genuine)], fused[len(door.genuine):]


def _top2(raw: np.ndarray, owner: np.ndarray, residents: int) -> np.ndarray:
    """Mean of each resident's two best anchor scores: measured for comparison only (it lost to
    ``max`` at every target, so the daemon does not offer it)."""
    out = np.empty((len(raw), residents), np.float32)
    for r in range(residents):
        mine = -np.sort(-raw[:, owner == r], axis=1)[:, :2]
        out[:, r] = mine.mean(axis=1)
    return out


#: every rule measured: the daemon's (daemon/recognition/fusion.py) and the mean of the two best anchors
MEASURED_RULES = ("max", "top2", "share", "centroid")


@dataclass
class Pooled:
    """One fusion rule's knocks over all doors of one (R, M) setting."""

    genuine_top: np.ndarray  # best fused score per genuine knock
    genuine_right: np.ndarray  # the best resident is the one knocking
    impostor_top: np.ndarray
    doors: int
    impostor_photos_per_door: float

    def at(self, threshold: float) -> dict[str, Any]:
        accept = self.genuine_top >= threshold
        right = int((accept & self.genuine_right).sum())
        wrong = int((accept & ~self.genuine_right).sum())
        imp = int((self.impostor_top >= threshold).sum())
        n_imp = len(self.impostor_top)
        return {"threshold": float(threshold),
                "genuine_knocks": len(self.genuine_top), "genuine_accepts": right,
                "genuine_accept_rate": right / max(len(self.genuine_top), 1),
                "wrong_resident_accepts": wrong,
                "impostor_knocks": n_imp, "impostor_accepts": imp,
                "impostor_accept_rate": imp / max(n_imp, 1),
                "impostor_accept_upper95": clopper_pearson_upper(imp, n_imp)}

    def det(self) -> tuple[np.ndarray, np.ndarray]:
        """(impostor accept rate, genuine reject rate) over every threshold."""
        cuts = np.unique(np.concatenate([self.genuine_top, self.impostor_top]))
        cuts = cuts[np.isfinite(cuts)]
        imp = np.sort(self.impostor_top)
        far = 1.0 - np.searchsorted(imp, cuts, side="left") / len(imp)
        good = np.sort(self.genuine_top[self.genuine_right])
        gar = (len(good) - np.searchsorted(good, cuts, side="left")) / len(self.genuine_top)
        return far, 1.0 - gar


def pooled(doors: list[Door], photos: Photos, matrix: np.ndarray, embedder: FaceEmbedder,
           rule: str, share: float = 0.5) -> Pooled:
    gtop, gright, itop = [], [], []
    for door in doors:
        g, i = door_scores(door, photos, matrix, embedder, rule, share)
        gtop.append(g.max(axis=1))
        gright.append(g.argmax(axis=1) == door.genuine_owner)
        itop.append(i.max(axis=1))
    return Pooled(np.concatenate(gtop), np.concatenate(gright), np.concatenate(itop), len(doors),
                  float(np.mean([len(d.impostor) for d in doors])))


# -- several frames ---------------------------------------------------------------------------

def first_unlock(times: Sequence[float], verdicts: Sequence[str | None], face: Sequence[bool],
                 k: int, n: int, t: float) -> tuple[int, str] | None:
    """(position, user) of the first unlock the door's AgreementWindow grants over one
    sequence of frames, or None. Frames without a face only age the window, as in the daemon
    (an attempt idle for ``t`` seconds ends and clears it)."""
    window = AgreementWindow(k, n, t)
    last_face: float | None = None
    for i, (now, user, seen) in enumerate(zip(times, verdicts, face, strict=True)):
        window.expire(now)
        if last_face is not None and now - last_face > t:
            window.clear()
            last_face = None
        if not seen:
            continue
        last_face = now
        agreed = window.add(now, user)
        if agreed is not None:
            return i, agreed
    return None


def _verdict(fused: np.ndarray, names: list[str], threshold: float) -> str | None:
    """The frame's verified resident, as ``Verifier.verify`` decides it."""
    top = int(fused.argmax())
    return names[top] if fused[top] >= threshold else None


AGREEMENT_GRID = [(k, n, t) for k in (1, 2, 3, 4) for n in range(k, k + 3) for t in (1.0, 3.0)]


def photo_sequences(doors: list[Door], photos: Photos, matrix: np.ndarray,
                    embedder: FaceEmbedder, rule: str, threshold: float, fps: float,
                    length: int, seed: int) -> dict[str, Any]:
    """k-of-n on sequences of held-out photos: each impostor person knocks once per door with
    their photos one after another (cycled to ``length`` frames; a one-photo person holds still,
    the worst case for agreement), each resident with their own knock photos."""
    rng = np.random.default_rng(seed)
    rows = []
    seqs_imp: list[list[str | None]] = []
    seqs_gen: list[tuple[list[str | None], str]] = []
    for door in doors:
        g, i = door_scores(door, photos, matrix, embedder, rule)
        names = [str(r) for r in range(len(door.residents))]
        gv = [_verdict(row, names, threshold) for row in g]
        iv = [_verdict(row, names, threshold) for row in i]
        imp_person = photos.person[door.impostor]
        for p in np.unique(imp_person):
            pos = rng.permutation(np.flatnonzero(imp_person == p))
            seqs_imp.append([iv[j] for j in np.resize(pos, length)])
        for r in range(len(door.residents)):
            pos = rng.permutation(np.flatnonzero(door.genuine_owner == r))
            if len(pos):
                seqs_gen.append(([gv[j] for j in np.resize(pos, length)], names[r]))
    times = [j / fps for j in range(length)]
    face = [True] * length
    for k, n, t in AGREEMENT_GRID:
        false = sum(first_unlock(times, s, face, k, n, t) is not None for s in seqs_imp)
        delays, wrong = [], 0
        for s, who in seqs_gen:
            hit = first_unlock(times, s, face, k, n, t)
            if hit is not None and hit[1] == who:
                delays.append(times[hit[0]])
            elif hit is not None:
                wrong += 1
        rows.append({"k": k, "n": n, "t": t, "impostor_attempts": len(seqs_imp),
                     "false_unlocks": false,
                     "false_unlocks_per_attempt": false / max(len(seqs_imp), 1),
                     "false_unlock_upper95": clopper_pearson_upper(false, len(seqs_imp)),
                     "genuine_attempts": len(seqs_gen), "genuine_unlocks": len(delays),
                     "genuine_unlock_rate": len(delays) / max(len(seqs_gen), 1),
                     "wrong_resident_unlocks": wrong,
                     "median_delay_s": float(np.median(delays)) if delays else None})
    return {"fps": fps, "frames_per_attempt": length, "rule": rule, "threshold": threshold,
            "grid": rows}


@dataclass
class Clip:
    times: np.ndarray
    frames: np.ndarray  # source frame numbers
    embedding: np.ndarray
    face: np.ndarray  # a face passed the door's gate in this frame
    rate: float


def embed_clip(path: Path, pipeline: FacePipeline, embedder: FaceEmbedder,
               thresholds: q.QualityThresholds = q.DEFAULT_THRESHOLDS) -> Clip:
    """Every frame of a video through the daemon's replay camera and frame path, once."""
    capture = cv2.VideoCapture(str(path))
    rate = float(capture.get(cv2.CAP_PROP_FPS)) or 30.0  # frame times are frame number / rate
    capture.release()
    camera = ReplayCamera(path, realtime=False)
    camera.open()
    analyser = FrameAnalyser(pipeline, embedder, thresholds)
    frames, embs, face = [], [], []
    try:
        while (frame := camera.read()) is not None:
            scored = analyser.analyse(frame.image, frame.detect_input,
                                      frame.to_image_coords).scored
            emb = scored[0].embedding if scored else np.zeros(embedder.meta.embedding_dim,
                                                               np.float32)
            ok = bool(scored)
            frames.append(frame.source_index if frame.source_index is not None else frame.index)
            embs.append(emb)
            face.append(ok)
    finally:
        camera.close()
    frames_a = np.array(frames)
    return Clip(frames_a / rate, frames_a, np.stack(embs), np.array(face), rate)


def clip_runs(clip: Clip, enrolled: np.ndarray, others: list[np.ndarray], embedder: FaceEmbedder,
              rule: str, threshold: float, fps_list: Sequence[float]) -> dict[str, Any]:
    """The clip at a door of the clip's person (enrolled from their portrait) and held-out
    residents: for each processing rate and (k, n, t), the delay from the person's first frame
    to the unlock, and whether anything opened the door outside their frames."""
    gallery = Gallery(embedder.meta.model_id)
    gallery.add("clip_person", enrolled)
    for r, anchors in enumerate(others):
        gallery.add(f"resident_{r}", anchors)
    verifier = Verifier(gallery, embedder.meta.head_weights, embedder.meta.head_bias, threshold,
                        0.5, rule)
    fused = verifier.resident_scores(clip.embedding)
    names = list(gallery.users)
    top = fused.argmax(axis=1)
    verdicts = [names[j] if f and fused[i, j] >= threshold else None
                for i, (j, f) in enumerate(zip(top, clip.face, strict=True))]
    first = CLIP_FRAMES[0] / clip.rate
    rows = []
    for fps in fps_list:
        step = max(1, round(clip.rate / fps))
        pick = np.arange(0, len(clip.frames), step)
        times, vs, seen = clip.times[pick], [verdicts[i] for i in pick], clip.face[pick]
        for k, n, t in AGREEMENT_GRID:
            # every unlock over the clip: after one, the daemon's cooldown (10 s) outlasts it
            hit = first_unlock(list(times), vs, list(seen), k, n, t)
            # the frames outside the person's span, on their own, as a door would see them
            outside = [i for i, fr in enumerate(clip.frames[pick])
                       if not CLIP_FRAMES[0] <= fr <= CLIP_FRAMES[1]]
            before = first_unlock(list(times[outside]), [vs[i] for i in outside],
                                  list(seen[outside]), k, n, t)
            row: dict[str, Any] = {"fps": fps, "k": k, "n": n, "t": t, "unlocked": hit is not None}
            if hit is not None:
                frame_no = int(clip.frames[pick][hit[0]])
                row |= {"unlock_frame": frame_no, "user": hit[1],
                        "delay_s": float(times[hit[0]] - first),
                        "inside_person_frames": CLIP_FRAMES[0] <= frame_no <= CLIP_FRAMES[1]
                        and hit[1] == "clip_person"}
            row["false_unlock_outside_person_frames"] = before is not None
            rows.append(row)
    in_person = clip.face & (clip.frames >= CLIP_FRAMES[0]) & (clip.frames <= CLIP_FRAMES[1])
    out_person = clip.face & ~in_person
    person = fused[:, 0]
    return {"threshold": threshold, "frames": len(clip.frames), "rate": clip.rate,
            "frames_with_face": int(clip.face.sum()),
            "person_frames_verified": int((in_person & (top == 0) & (person >= threshold)).sum()),
            "person_frames": int(in_person.sum()),
            "other_frames_verified": int((out_person & (fused.max(axis=1) >= threshold)).sum()),
            "person_score_percentiles_0_50_90_100": [
                float(v) for v in np.percentile(person[in_person], [0, 50, 90, 100])]
            if in_person.any() else None,
            "best_score_outside_person_frames": float(fused[out_person].max())
            if out_person.any() else None,
            "runs": rows}


def choose_agreement(sequence_rows: list[dict[str, Any]], clip_rows: list[dict[str, Any]],
                     fps: float, target: float = 1e-3, max_delay_s: float = 0.5) -> dict[str, Any]:
    """The (k, n, t) the measurement supports: the most genuine unlocks on photo sequences
    among settings whose false unlocks per attempt stay within ``target`` and that never open
    the door outside the clip person's frames; then the shortest clip delay (where the clip
    opens at all), the smallest k and n, and the longest t (photo sequences cannot tell t apart;
    a longer one keeps k frames possible on a board that processes few frames a second)."""
    clip = {(r["k"], r["n"], r["t"]): r for r in clip_rows if r["fps"] == fps}
    def clip_wrong(r: dict[str, Any]) -> bool:
        c = clip.get((r["k"], r["n"], r["t"]), {})
        return bool(c.get("false_unlock_outside_person_frames")) or (
            bool(c.get("unlocked")) and not c.get("inside_person_frames"))

    allowed = [r for r in sequence_rows
               if r["false_unlocks_per_attempt"] <= target and not clip_wrong(r)]
    if not allowed:
        return {"chosen": None, "reason": f"no (k, n, t) keeps false unlocks within {target:g}"}

    def delay(r: dict[str, Any]) -> float:
        c = clip.get((r["k"], r["n"], r["t"]), {})
        return c["delay_s"] if c.get("inside_person_frames") else math.inf

    best = max(allowed, key=lambda r: (r["genuine_unlock_rate"], -delay(r), -r["k"], -r["n"],
                                       r["t"]))
    d = delay(best)
    return {"chosen": {"k": best["k"], "n": best["n"], "t": best["t"]}, "sequence": best,
            "clip_delay_s": None if math.isinf(d) else d,
            "clip_delay_within_target": (not math.isinf(d)) and d <= max_delay_s,
            "reason": f"most genuine unlocks on photo sequences with at most {target:g} false "
                      "unlocks per attempt, and no clip unlock outside the person's frames or "
                      f"for another resident (at {fps:g} fps)"}


# -- the whole evaluation ---------------------------------------------------------------------

def _check_enrolment(door: Door, photos: Photos, model_dir: Path) -> dict[str, Any]:
    """Enrol the door's residents through ``enroll_from_images`` into a throw-away store and
    compare with the anchors the evaluation used."""
    from ..household.enroll import enroll_from_images
    from ..household.enroll_store import EnrolmentStore

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp, EnrolmentStore(Path(tmp) / "e.db") as store:
        for r, (anchors, order) in enumerate(zip(door.anchors, door.orders, strict=True)):
            report = enroll_from_images(store, f"resident{r}", [photos.paths[i] for i in order],
                                        model_dir, max_samples=len(anchors))
            got = store.anchors(report.model_id, user=report.user)[report.user]
            if report.accepted != [photos.paths[i].name for i in anchors]:
                raise DataError(f"enrolment kept {report.accepted}, the door evaluation "
                                f"{[photos.paths[i].name for i in anchors]}: the gates disagree")
            worst = max(worst, float(np.abs(got - photos.embedding[anchors]).max()))
    if worst > 1e-4:
        raise DataError(f"enrolment's anchors differ from the evaluation's by {worst:.2e}")
    return {"residents": len(door.anchors), "max_abs_difference": worst}


def evaluate_door(model_dir: Path, images_root: Path, holdout_pairs: Path,
                  out_dir: Path | None = None, residents: Sequence[int] = (1, 2, 5, 10),
                  anchors: Sequence[int] = (1, 3, 5, 10), doors: int = 20, seed: int = 0,
                  examples_dir: Path | None = None, fps: Sequence[float] = (15.0, 5.0),
                  calibrate: tuple[int, int] = (HEADLINE_R, HEADLINE_M),
                  num_threads: int = 1, progress: bool = True) -> dict[str, Any]:
    """The whole door evaluation; JSON-ready result, plots in ``out_dir``. Thresholds and the
    fusion rule are chosen at ``calibrate`` = (R, M)."""
    cal_r, cal_m = calibrate
    from ..household.enroll import DUPLICATE_COSINE

    started = time.perf_counter()
    embedder = FaceEmbedder(model_dir, num_threads=num_threads)
    meta = embedder.meta
    pipeline = meta.face_pipeline(meta.detector.build(num_threads))  # the model's own template
    people = held_out_people(holdout_pairs, images_root)
    removed = (meta.provenance.get("training", {}).get("data", {})
               .get("holdout_identities_removed"))
    if removed is not None and removed != len(people):
        logger.warning("the model's training removed %s held-out people, %s names %d: is this "
                       "the model's own held-out file?", removed, holdout_pairs, len(people))
    photos = embed_photos(embedder, pipeline, images_root, people, progress)
    matrix = pair_matrix(embedder, photos.embedding)
    logger.info("%d held-out photos of %d people embedded (%.1f ms each)", len(photos.paths),
                len(people), photos.embed_ms)

    def setting(r: int, m: int, people_subset: np.ndarray | None = None,
                salt: int = 0) -> list[Door]:
        return build_doors(photos, r, m, doors, seed + salt, DUPLICATE_COSINE, people_subset)

    head_doors = setting(cal_r, cal_m)
    pair_t = meta.thresholds.get(pair_name(1e-3))
    rules: dict[str, Any] = {}
    pools = {rule: pooled(head_doors, photos, matrix, embedder, rule) for rule in MEASURED_RULES}
    for rule, pool in pools.items():
        zero = threshold_for(pool.impostor_top, 0.0)
        rules[rule] = {
            door_name(far): pool.at(threshold_for(pool.impostor_top, far))
            for far in DOOR_FARS} | {"zero_impostors": pool.at(zero)}
        if pair_t is not None:
            rules[rule]["pair_far_1e-03_threshold"] = pool.at(pair_t)
    # the winner: most genuine accepts at the same door-level impostor accept rate 1e-3
    winner = max(FUSION_RULES, key=lambda r: (rules[r]["door_far_1e-03"]["genuine_accept_rate"],
                                              rules[r]["zero_impostors"]["genuine_accept_rate"]))
    calibrated = {door_name(far): rules[winner][door_name(far)]["threshold"]
                  for far in DOOR_FARS}

    # the same thresholds on people they were not calibrated on: two halves of the held-out set
    halves = np.random.default_rng([seed, 7]).permutation(len(people))
    cross = []
    for name, cal, test in (("A->B", halves[::2], halves[1::2]), ("B->A", halves[1::2],
                                                                   halves[::2])):
        cal_pool = pooled(setting(cal_r, cal_m, cal, 1), photos, matrix, embedder,
                          winner)
        test_pool = pooled(setting(cal_r, cal_m, test, 2), photos, matrix, embedder,
                           winner)
        for far in DOOR_FARS:
            t = threshold_for(cal_pool.impostor_top, far)
            cross.append({"split": name, "target": far} | test_pool.at(t))

    grid = []
    for r in residents:
        for m in anchors:
            try:
                ds = setting(r, m)
            except UsageError as exc:
                grid.append({"residents": r, "anchors": m, "skipped": str(exc)})
                continue
            pool = pooled(ds, photos, matrix, embedder, winner)
            grid.append({"residents": r, "anchors": m, "doors": len(ds),
                         "impostor_photos_per_door": pool.impostor_photos_per_door}
                        | {name: pool.at(t) for name, t in calibrated.items()})

    # how the impostor accept rate grows with R, at a threshold loose enough to count accepts
    growth = []
    loose = threshold_for(pooled(setting(1, cal_m), photos, matrix, embedder,
                                 winner).impostor_top, 1e-2)
    base = None
    for r in sorted({1, *residents}):  # ratios are to one resident
        try:
            pool = pooled(setting(r, cal_m), photos, matrix, embedder, winner)
        except UsageError:
            continue
        rate = pool.at(loose)["impostor_accept_rate"]
        base = rate if base is None else base
        growth.append({"residents": r, "impostor_accept_rate": rate,
                       "independent_prediction": 1.0 - (1.0 - base) ** r,
                       "ratio_to_one_resident": rate / base if base else None})

    # the one-resident ladder, and what it gives at each door size (the daemon's rule). How
    # many strangers pass for a resident varies a lot from resident to resident, so the ladder
    # seats as many residents as the headline doors do (doors x R), one per door, and each door
    # size below is measured over that many residents too.
    seated = doors * cal_r

    def sized(r: int, salt: int) -> list[Door]:
        return build_doors(photos, r, cal_m, max(1, seated // r), seed + salt, DUPLICATE_COSINE,
                           None)

    one = pooled(sized(1, 3), photos, matrix, embedder, winner)
    ladder = [[far, threshold_for(one.impostor_top, far)] for far in LADDER_FARS]
    by_anchors = anchor_ladders(photos, matrix, embedder, winner, LADDER_DOORS, seed + 3)
    # the per-count thresholds on people they were not measured on (the halves above), at
    # doors of cal_r residents with M anchors each, and in sample on every held-out person
    by_anchors["checks"] = []
    splits: list[tuple[str, np.ndarray | None, np.ndarray | None]] = [
        ("all->all", None, None), ("A->B", halves[::2], halves[1::2]),
        ("B->A", halves[1::2], halves[::2])]
    for split, fit_on, check_on in splits:
        ladders = (by_anchors if fit_on is None else
                   anchor_ladders(photos, matrix, embedder, winner, LADDER_DOORS, seed + 5,
                                  fit_on))
        for m, rungs in ladders["ladders"].items():
            fitted = threshold_for_residents({"one_resident": {"ladder": rungs}}, 1e-3, cal_r)
            try:
                ds = build_doors(photos, cal_r, int(m), doors, seed + 6, DUPLICATE_COSINE,
                                 check_on)
            except UsageError:
                continue
            if fitted is not None:
                by_anchors["checks"].append(
                    {"split": split, "anchors": int(m), "residents": cal_r, "target": 1e-3,
                     "one_resident_rate": fitted[1]}
                    | pooled(ds, photos, matrix, embedder, winner).at(fitted[0]))
    by_size = []
    for r in sorted({1, *residents}):
        try:
            pool = pooled(sized(r, 4), photos, matrix, embedder, winner)
        except UsageError:
            continue
        for far in (1e-3, 1e-4):
            fitted = threshold_for_residents({"one_resident": {"ladder": ladder}}, far, r)
            if fitted is not None:
                by_size.append({"residents": r, "target": far,
                                "one_resident_rate": fitted[1]} | pool.at(fitted[0]))

    looser = {name: t for name, t in calibrated.items() if name != "door_far_1e-04"}
    sequences = {name: photo_sequences(head_doors, photos, matrix, embedder, winner, t, fps[0],
                                       15, seed) for name, t in looser.items()}
    clip_result: dict[str, Any] | None = None
    if examples_dir is not None and (examples_dir / CLIP).is_file():
        clip = embed_clip(examples_dir / CLIP, pipeline, embedder)
        enrolled = anchor_from_image(load_image(examples_dir / CLIP_PERSON), pipeline, embedder,
                                     q.DEFAULT_THRESHOLDS)[0]
        if enrolled is None:
            raise DataError(f"{CLIP_PERSON}: enrolment refused the portrait")
        others = [photos.embedding[a] for a in head_doors[0].anchors[:cal_r - 1]]
        pair = {n: t for n, t in meta.thresholds.items() if n in ("far_1e-02", "far_1e-03")}
        clip_result = {"door": f"{CLIP_PERSON} (1 anchor) + {cal_r - 1} held-out residents "
                       f"({cal_m} anchors each)", "rule": winner,
                       "by_threshold": {name: clip_runs(clip, enrolled[None], others, embedder,
                                                        winner, t, fps)
                                        for name, t in (calibrated | pair).items()}}
        # the demo's door: the clip's person alone, at the threshold the daemon picks for R = 1
        alone = threshold_for_residents({"one_resident": {"ladder": ladder}}, 1e-3, 1)
        if alone is not None:
            clip_result["alone_at_door_far_1e-03"] = {
                "door": f"{CLIP_PERSON} alone (1 resident, 1 anchor)",
                **clip_runs(clip, enrolled[None], [], embedder, winner, alone[0], fps)}
    agreement = choose_agreement(sequences["door_far_1e-03"]["grid"],
                                 clip_result["by_threshold"]["door_far_1e-03"]["runs"]
                                 if clip_result else [], fps[0])

    result: dict[str, Any] = {
        "model": str(model_dir), "model_id": meta.model_id, "architecture": meta.architecture,
        "held_out": {
            "pairs_file": str(holdout_pairs), "images": str(images_root), "people": len(people),
            "photos": len(photos.paths), "knock_usable": int(photos.knock_ok.sum()),
            "enrolable": int(photos.enrol_ok.sum()),
            "training_removed_people": removed,
            "why": "the people the model's training removed (--holdout-pairs): never trained "
                   "on, never in its validation split, never used for its pair thresholds",
            "names": people,
        },
        "setting": {"residents": cal_r, "anchors": cal_m, "doors": doors, "seed": seed,
                    "impostor_photos_per_door": pools[winner].impostor_photos_per_door},
        "enrolment_check": _check_enrolment(head_doors[0], photos, model_dir),
        "rules": rules, "winner": winner, "thresholds": calibrated,
        "cross_calibration": cross, "grid": grid, "far_growth": growth,
        "one_resident": {"anchors": cal_m, "ladder": ladder, "by_door_size": by_size,
                         "ladders_by_anchors": by_anchors["ladders"],
                         "ladders_by_anchors_residents": by_anchors["residents"],
                         "by_anchors_checks": by_anchors["checks"]},
        "far_growth_rule": _growth_rule(growth),
        "sequences": sequences, "clip": clip_result, "agreement": agreement,
        "embed_ms_per_photo": photos.embed_ms, "seconds": time.perf_counter() - started,
    }
    if out_dir is not None:
        result["plots"] = write_plots(out_dir, pools, calibrated, winner, grid, calibrate)
    return result


def anchor_ladders(photos: Photos, matrix: np.ndarray, embedder: FaceEmbedder, rule: str,
                   seated: int, seed: int, people: np.ndarray | None = None) -> dict[str, Any]:
    """The one-resident ladder for every count in ``LADDER_ANCHORS`` that enough people allow:
    ``seated`` doors of one resident enrolled from M photos, every other held-out person (of
    ``people``) knocking. {"ladders": {"M": ladder}, "residents": {"M": distinct people}}."""
    from ..household.enroll import DUPLICATE_COSINE

    ladders: dict[str, list[list[float]]] = {}
    residents: dict[str, int] = {}
    for m in LADDER_ANCHORS:
        try:
            ds = build_doors(photos, 1, m, seated, seed, DUPLICATE_COSINE, people)
        except UsageError:
            continue
        pool = pooled(ds, photos, matrix, embedder, rule)
        ladders[str(m)] = [[far, threshold_for(pool.impostor_top, far)] for far in LADDER_FARS]
        residents[str(m)] = len({d.residents[0] for d in ds})
    return {"ladders": ladders, "residents": residents}


def _growth_rule(growth: list[dict[str, Any]]) -> str:
    """The written rule for more residents, with this model's measured ratios in it."""
    if len(growth) < 2 or not growth[0]["impostor_accept_rate"]:
        return "not measured"
    measured = ", ".join(f"R={g['residents']}: {g['ratio_to_one_resident']:.2f}x (independent "
                         f"residents would give {g['independent_prediction'] / growth[0]['impostor_accept_rate']:.2f}x)"
                         for g in growth[1:])
    return ("An impostor knock is accepted when it reaches the threshold for any resident, so "
            "the rate per knock is at most R x the one-resident rate (union bound; "
            "1 - (1 - FAR1)^R if residents were independent) and grows more slowly when the "
            "same strangers look like several residents. Measured at the one-resident FAR 1e-2 "
            f"threshold: {measured}. A threshold calibrated for R residents keeps its target "
            "for R or fewer; with R' > R expect up to R'/R times the rate, or recalibrate "
            "(twinlock evaluate --door --residents R').")


def write_plots(out_dir: Path, pools: dict[str, Pooled], calibrated: dict[str, float],
                winner: str, grid: list[dict[str, Any]],
                calibrate: tuple[int, int] = (HEADLINE_R, HEADLINE_M)) -> dict[str, str]:
    from ..stats.plots import plot_det

    cal_r, cal_m = calibrate

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {rule: pool.det() for rule, pool in pools.items()}
    points = {}
    for name, t in calibrated.items():
        m = pools[winner].at(t)
        points[f"{winner} {name}"] = (max(m["impostor_accept_rate"], 1e-5),
                                      1.0 - m["genuine_accept_rate"])
    det = plot_det(out_dir / "door_det.png", curves,
                   title=f"door DET: R={cal_r} residents x M={cal_m} anchors, "
                         f"{pools[winner].doors} doors, one knock",
                   points=points, lims=(1e-5, 0.99))
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2))
    for m in sorted({g["anchors"] for g in grid}):
        rows = [g for g in grid if g["anchors"] == m and "door_far_1e-03" in g]
        for ax, key in zip(axes, ("genuine_accept_rate", "impostor_accept_rate"), strict=True):
            ax.plot([g["residents"] for g in rows], [g["door_far_1e-03"][key] for g in rows],
                    marker="o", label=f"M={m} anchors")
    for ax, label in zip(axes, ("genuine accept per knock", "impostor accept per knock"),
                         strict=True):
        ax.set_xlabel("residents R")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[1].axhline(1e-3, color="grey", ls="--", lw=1)
    fig.suptitle(f"{winner}, one threshold: door_far_1e-03 calibrated at R={cal_r}, M={cal_m}")
    fig.tight_layout()
    rm = out_dir / "door_rm.png"
    fig.savefig(rm, dpi=110)
    plt.close(fig)
    return {"det": str(det), "residents_anchors": str(rm)}


def write_thresholds(model_dir: Path, result: dict[str, Any], argv: Sequence[str]) -> Path:
    """Store the door-level calibration in model.json: thresholds ``door_far_1e-03`` and
    ``door_far_1e-04`` beside the pair ones, ``default_threshold = door_far_1e-03``, and
    ``metrics.door`` with the rule, R, M, knocks and the growth rule. Other keys stay."""
    path = model_dir / "model.json"
    data = json.loads(path.read_text())
    winner = result["winner"]
    data["thresholds"] = dict(data.get("thresholds", {})) | result["thresholds"]
    data["default_threshold"] = "door_far_1e-03"
    data.setdefault("metrics", {})["door"] = {
        "fusion": winner,
        "residents": result["setting"]["residents"],
        "anchors_per_resident": result["setting"]["anchors"], "frames": 1,
        "doors": result["setting"]["doors"], "seed": result["setting"]["seed"],
        "held_out_pairs": result["held_out"]["pairs_file"],
        "held_out_people": result["held_out"]["people"],
        "thresholds": {name: result["rules"][winner][name] for name in result["thresholds"]},
        "cross_calibration": result["cross_calibration"],
        "far_growth_rule": result["far_growth_rule"],
        # the daemon's threshold for a door of R residents: the ladder's target / R rung
        # and the ladders by anchor count (fusion.resident_thresholds raises a labelled resident)
        "one_resident": {k: result["one_resident"][k] for k in ("anchors", "ladder",
                                                                  "ladders_by_anchors")
                         if k in result["one_resident"]},
        "command": "twinlock " + " ".join(argv),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    logger.info("door thresholds written to %s: %s", path, result["thresholds"])
    return path


def default_pairs_file(model_dir: Path) -> Path:
    """The held-out pairs file the model was trained with (``--holdout-pairs``), if it is still
    where the model's provenance says; else a usage error saying how to make it again."""
    from twinlock.daemon.recognition.model import read_metadata

    config = read_metadata(model_dir).provenance.get("training", {}).get("config", {})
    recorded = config.get("holdout_pairs")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    raise UsageError(f"evaluate --door: give --pairs FILE, the model's held-out pairs file "
                     f"(its provenance names {recorded or 'none'}, not found here); for "
                     "models/default: twinlock pairs --images LFW --out FILE --identities 300 "
                     "--pairs 1000 --seed 0")
