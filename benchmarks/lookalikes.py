"""Look-alikes and twins at the door: sisters, twins and named relatives in LFW, a resident's own
stricter threshold (``twinlock enroll --strict``), and how the false accepts spread over people.

Why: the door's thresholds hold a *stranger's* chance per knock (model.json's door calibration,
measured on held-out LFW people). A sister or a twin is not a random stranger. This measures, with
the shipped model and the daemon's own ``Verifier`` (gallery, centroid fusion, per-resident
limits), what such people do at the door and what a stricter per-resident setting costs:

1. ``sisters``: Serena and Venus Williams, each enrolled from 5 photos (the enrolment gate and its
   near-duplicate check, photos handed in a seeded order; ``--doors`` orders), the other sister's
   every photo one knock, the resident's own other photos the genuine knocks; at a door of one
   resident and of five (four held-out LFW people beside her), at the door's threshold and at
   each ``--strict`` level given to the sister who lives there;
2. ``margin``: both sisters enrolled at one door: how often the wrong sister is the best match,
   and what a rule "refuse when the second resident scores within a margin" would cost;
3. ``twins`` and ``relatives``: the Olsen twins and relatives named in the LFW people list by
   public record (parents, children, siblings; no label is guessed from a face), each enrolled
   from up to 5 photos, the relative's photos knocking, beside the same resident's rate for
   held-out strangers;
4. ``spread``: held-out people only (the model's ``--holdout-pairs`` people, never used for its
   head, temperature or thresholds): each eligible person a one-resident door, every other
   held-out photo a knock; how the accepted knocks spread over impostor people and residents.

LFW has no gender, age or skin-type labels, so no per-group rate can be measured here
(docs/how-it-works/security.md says what this can and cannot show).

Usage::

    .venv/bin/python benchmarks/lookalikes.py [--data DIR] [--model DIR] [--doors 20]
        [--strict 1e-4 3e-5 1e-5 3e-6 1e-6] [--json docs/benchmarks/lookalikes.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import numpy as np

from twinlock.daemon.recognition.fusion import (
    door_calibration,
    strict_threshold,
    threshold_for_residents,
)
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.daemon.recognition.verify import Verifier
from twinlock.trainer.data.pairs import make_pairs_file
from twinlock.trainer.evaluation import door_eval as de
from twinlock.trainer.household.enroll import DUPLICATE_COSINE, KeptFaces

SISTERS = ("Serena_Williams", "Venus_Williams")
TWINS = ("Mary-Kate_Olsen", "Ashley_Olsen")
#: blood relatives by public record whose folders LFW has (spouses left out: not look-alikes)
RELATIVES: tuple[tuple[str, str, str], ...] = (
    ("Serena_Williams", "Venus_Williams", "sisters"),
    ("Mary-Kate_Olsen", "Ashley_Olsen", "twin sisters"),
    ("George_W_Bush", "George_HW_Bush", "son, father"),
    ("George_W_Bush", "Jeb_Bush", "brothers"),
    ("Jeb_Bush", "George_HW_Bush", "son, father"),
    ("Jeb_Bush", "George_P_Bush", "father, son"),
    ("Jeb_Bush", "Noelle_Bush", "father, daughter"),
    ("Bill_Clinton", "Chelsea_Clinton", "father, daughter"),
    ("Hillary_Clinton", "Chelsea_Clinton", "mother, daughter"),
    ("Michael_Douglas", "Kirk_Douglas", "son, father"),
    ("Angelina_Jolie", "Jon_Voight", "daughter, father"),
    ("Kate_Hudson", "Goldie_Hawn", "daughter, mother"),
    ("Nicolas_Cage", "Francis_Ford_Coppola", "nephew, uncle"),
    ("Sharon_Osbourne", "Kelly_Osbourne", "mother, daughter"),
    ("Sharon_Osbourne", "Jack_Osbourne", "mother, son"),
    ("Jane_Fonda", "Peter_Fonda", "siblings"),
    ("Saddam_Hussein", "Uday_Hussein", "father, son"),
    ("Saddam_Hussein", "Qusai_Hussein", "father, son"),
    ("Fidel_Castro", "Fidel_Castro_Daiz-Balart", "father, son"),
    ("Nestor_Kirchner", "Florencia_Kirchner", "father, daughter"),
    ("Enrique_Iglesias", "Julio_Iglesias_Jr", "brothers"),
    ("Queen_Elizabeth_II", "Prince_Charles", "mother, son"),
    ("Prince_Charles", "Prince_William", "father, son"),
    ("Prince_Charles", "Prince_Harry", "father, son"),
    ("Prince_William", "Prince_Harry", "brothers"),
    ("Caroline_Kennedy", "John_F_Kennedy_Jr", "siblings"),
    ("Edward_Kennedy", "John_F_Kennedy_Jr", "uncle, nephew"),
    ("Edward_Kennedy", "Robert_F_Kennedy_Jr", "uncle, nephew"),
)
STRICT_LEVELS = (1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
ANCHORS = 5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = common.make_parser(__doc__)
    common.add_model_option(parser)
    parser.add_argument("--holdout-pairs", type=Path,
                        help="the model's held-out pairs file (default: remade as the model card "
                        "says, twinlock pairs --identities 300 --pairs 1000 --seed 0)")
    parser.add_argument("--doors", type=int, default=20,
                        help="seeded enrolments per sister (orders in which photos are handed in)")
    parser.add_argument("--strict", type=float, nargs="+", default=list(STRICT_LEVELS),
                        metavar="FAR", help="per-resident false-accept targets to try")
    common.add_json_option(parser)
    return parser.parse_args(argv)


class Faces:
    """Every photo of the people asked for, through the door's frame path once."""

    def __init__(self, embedder: FaceEmbedder, lfw: Path, people: list[str]) -> None:
        meta = embedder.meta
        pipeline = meta.face_pipeline(meta.detector.build())
        self.photos = de.embed_photos(embedder, pipeline, lfw, people, progress=True)
        self.index = {name: i for i, name in enumerate(self.photos.names)}

    def of(self, name: str, usable: str = "knock") -> np.ndarray:
        p = self.photos
        ok = p.knock_ok if usable == "knock" else p.enrol_ok
        return np.flatnonzero((p.person == self.index[name]) & ok)

    def enrol(self, name: str, seed: int, anchors: int = ANCHORS) -> list[int]:
        """Up to ``anchors`` photos enrolment keeps, handed in a seeded order (as build_doors)."""
        p = self.photos
        order = np.random.default_rng([seed, self.index[name]]).permutation(
            np.flatnonzero(p.person == self.index[name]))
        kept, mine = KeptFaces(None, DUPLICATE_COSINE), []
        for i in order:
            if len(mine) < anchors and p.enrol_ok[i] and not kept.is_duplicate(p.embedding[i]):
                kept.add(p.embedding[i])
                mine.append(int(i))
        return mine


class Door:
    """The daemon's Verifier over a gallery of named residents (one may have her own bar)."""

    def __init__(self, faces: Faces, embedder: FaceEmbedder, residents: dict[str, list[int]],
                 threshold: float, fusion: str, own: dict[str, float] | None = None) -> None:
        gallery = Gallery(embedder.meta.model_id)
        for name, idx in residents.items():
            user = gallery.add(name, faces.photos.embedding[idx])
            user.threshold = (own or {}).get(name)
        self.verifier = Verifier(gallery, embedder.meta.head_weights, embedder.meta.head_bias,
                                 threshold, fusion=fusion)
        self.faces = faces

    def accepted_as(self, knocks: np.ndarray) -> list[str | None]:
        return [self.verifier.verify(self.faces.photos.embedding[i]).user for i in knocks]


def _levels(calibration: dict[str, Any], fars: Sequence[float]) -> list[dict[str, Any]]:
    out = []
    for far in fars:
        value, extrapolated = strict_threshold(calibration, far)
        out.append({"strict_far": far, "threshold": round(value, 6), "extrapolated": extrapolated})
    return out


def _summary(per_door: list[int], knocks: int) -> dict[str, Any]:
    arr = np.asarray(per_door)
    return {"accepts_total": int(arr.sum()), "knocks_total": int(knocks * len(arr)),
            "rate": round(float(arr.sum()) / max(knocks * len(arr), 1), 4),
            "per_door_min": int(arr.min()), "per_door_median": float(np.median(arr)),
            "per_door_max": int(arr.max()), "knocks_per_door": knocks}


def sisters(faces: Faces, embedder: FaceEmbedder, calibration: dict[str, Any], fusion: str,
            doors: int, levels: list[dict[str, Any]], companions: list[str]) -> dict[str, Any]:
    """Each sister at home, the other knocking: one-resident and five-resident doors."""
    out: dict[str, Any] = {}
    for home, away in (SISTERS, SISTERS[::-1]):
        visitor = faces.of(away)
        row: dict[str, Any] = {"resident": home, "visitor": away,
                               "visitor_photos": len(visitor), "doors": doors}
        for residents in (1, 5):
            door_t = threshold_for_residents(calibration, 1e-3, residents)
            assert door_t is not None
            settings = [{"setting": "door", "threshold": round(door_t[0], 6)}] + [
                {"setting": f"strict {lv['strict_far']:g}", **lv} for lv in levels]
            for setting in settings:
                own = setting.get("threshold") if setting["setting"] != "door" else None
                in_visitor, in_genuine, wrong, genuine_n = [], [], 0, 0
                for seed in range(doors):
                    mine = faces.enrol(home, seed)
                    gallery = {home: mine}
                    if residents > 1:
                        rng = np.random.default_rng([seed, 7])
                        for other in rng.choice(companions, residents - 1, replace=False):
                            gallery[str(other)] = faces.enrol(str(other), seed)
                    door = Door(faces, embedder, gallery, door_t[0], fusion,
                                {home: own} if own is not None else None)
                    in_visitor.append(sum(u is not None for u in door.accepted_as(visitor)))
                    genuine = np.setdiff1d(faces.of(home), mine)
                    verdicts = door.accepted_as(genuine)
                    in_genuine.append(sum(u == home for u in verdicts))
                    wrong += sum(u not in (None, home) for u in verdicts)
                    genuine_n = len(genuine)
                setting["visitor_accepted"] = _summary(in_visitor, len(visitor))
                setting["resident_accepted"] = _summary(in_genuine, genuine_n)
                setting["resident_taken_for_another"] = wrong
            row[f"{residents}_resident_door"] = {
                "door_threshold": round(door_t[0], 6),
                "door_threshold_from": f"door_far_1e-03 for {residents} resident(s): "
                                       f"one-resident rate {door_t[1]:.1e}",
                "settings": settings}
        out[f"{home} at home"] = row
    return out


def margin(faces: Faces, embedder: FaceEmbedder, calibration: dict[str, Any], fusion: str,
           doors: int) -> dict[str, Any]:
    """Both sisters enrolled: who is the best match, and what a margin between them costs."""
    door_t = threshold_for_residents(calibration, 1e-3, 2)
    assert door_t is not None
    rows = []
    for margin_logit in (0.0, 0.5, 1.0, 2.0):
        right = wrong = total = 0
        for seed in range(doors):
            gallery = {name: faces.enrol(name, seed) for name in SISTERS}
            door = Door(faces, embedder, gallery, door_t[0], fusion)
            for name in SISTERS:
                knocks = np.setdiff1d(faces.of(name), gallery[name])
                fused = door.verifier.resident_scores(faces.photos.embedding[knocks])
                logits = np.log(np.clip(fused, 1e-7, 1 - 1e-7) / np.clip(1 - fused, 1e-7, 1))
                top = fused.argmax(axis=1)
                gap = np.abs(logits[:, 0] - logits[:, 1])
                passed = (fused.max(axis=1) >= door_t[0]) & (gap >= margin_logit)
                me = SISTERS.index(name)
                right += int((passed & (top == me)).sum())
                wrong += int((passed & (top != me)).sum())
                total += len(knocks)
        rows.append({"margin_logit": margin_logit, "knocks": total,
                     "accepted_as_herself": right, "accepted_as_her_sister": wrong})
    return {"door_threshold": round(door_t[0], 6), "doors": doors, "rows": rows}


def relatives(faces: Faces, embedder: FaceEmbedder, calibration: dict[str, Any], fusion: str,
              strangers: np.ndarray, strict: float) -> list[dict[str, Any]]:
    """Each named pair both ways: the relative's photos against the resident, beside strangers."""
    one = threshold_for_residents(calibration, 1e-3, 1)
    five = threshold_for_residents(calibration, 1e-3, 5)
    assert one is not None and five is not None
    tight, _ = strict_threshold(calibration, strict)
    rows = []
    for a, b, relation in RELATIVES:
        if a not in faces.index or b not in faces.index:
            continue
        for home, away in ((a, b), (b, a)):
            mine = faces.enrol(home, 0)
            knocks = faces.of(away)
            if not mine or not len(knocks):
                continue
            door = Door(faces, embedder, {home: mine}, one[0], fusion)
            fused = door.verifier.resident_scores(faces.photos.embedding[knocks])[:, 0]
            stranger = door.verifier.resident_scores(faces.photos.embedding[strangers])[:, 0]
            rows.append({
                "resident": home, "visitor": away, "relation": relation,
                "anchors": len(mine), "visitor_photos": len(knocks),
                "accepted_1_resident": int((fused >= one[0]).sum()),
                "accepted_at_5_resident_threshold": int((fused >= five[0]).sum()),
                f"accepted_strict_{strict:g}": int((fused >= tight).sum()),
                "best_score": round(float(fused.max()), 5),
                "stranger_rate_1_resident": round(float((stranger >= one[0]).mean()), 5),
                "stranger_rate_at_5_resident_threshold": round(float((stranger >= five[0]).mean()),
                                                               5),
            })
    return rows


def _share(ranked: list[tuple[str, int]], people: int, fraction: float) -> float:
    """Share of all accepts that the most accepted ``fraction`` of impostor people made."""
    top = max(1, round(fraction * people))
    return round(sum(c for _, c in ranked[:top]) / max(sum(c for _, c in ranked), 1), 3)


def spread(faces: Faces, embedder: FaceEmbedder, calibration: dict[str, Any], fusion: str,
           held: list[str]) -> dict[str, Any]:
    """One-resident doors of held-out people; which impostors and residents the accepts hit."""
    p = faces.photos
    held_idx = np.array([faces.index[n] for n in held])
    eligible = [n for n in held if len(faces.of(n, "enrol")) >= ANCHORS
                and (p.person == faces.index[n]).sum() > ANCHORS]
    out: dict[str, Any] = {"held_out_people": len(held), "residents": len(eligible),
                           "anchors": ANCHORS}
    for label, residents in (("1_resident", 1), ("5_residents", 5)):
        t = threshold_for_residents(calibration, 1e-3, residents)
        assert t is not None
        by_impostor: Counter[str] = Counter()
        knocks_by: Counter[str] = Counter()
        passed_for: dict[str, set[str]] = {}
        per_resident = []
        total = accepts = 0
        for name in eligible:
            mine = faces.enrol(name, 0)
            door = Door(faces, embedder, {name: mine}, t[0], fusion)
            knocks = np.flatnonzero(np.isin(p.person, held_idx) & (p.person != faces.index[name])
                                    & p.knock_ok)
            fused = door.verifier.resident_scores(p.embedding[knocks])[:, 0]
            hit = fused >= t[0]
            per_resident.append((name, int(hit.sum()), len(knocks)))
            total += len(knocks)
            accepts += int(hit.sum())
            for i in knocks[hit]:
                who = p.names[int(p.person[i])]
                by_impostor[who] += 1
                passed_for.setdefault(who, set()).add(name)
            for i in knocks:
                knocks_by[p.names[int(p.person[i])]] += 1
        ranked = by_impostor.most_common()
        impostors = len(knocks_by)


        rates = np.array([a / n for _, a, n in per_resident])
        out[label] = {
            "threshold": round(t[0], 6), "one_resident_rate": t[1],
            "knocks": total, "accepts": accepts, "rate": round(accepts / total, 6),
            "impostor_people": impostors, "impostors_ever_accepted": len(ranked),
            "share_of_accepts_from_top_1pct_of_impostors": _share(ranked, impostors, 0.01),
            "share_of_accepts_from_top_5pct_of_impostors": _share(ranked, impostors, 0.05),
            "share_of_accepts_from_top_10pct_of_impostors": _share(ranked, impostors, 0.10),
            "most_accepted_impostors": [
                {"person": who, "accepts": c, "knocks": knocks_by[who],
                 "passed_for": sorted(passed_for[who])} for who, c in ranked[:10]],
            "resident_rate_median": round(float(np.median(rates)), 5),
            "resident_rate_p90": round(float(np.percentile(rates, 90)), 5),
            "resident_rate_max": round(float(rates.max()), 5),
            "residents_with_no_accepts": int((rates == 0).sum()),
            "most_accepting_residents": [
                {"resident": n, "accepts": a, "knocks": k}
                for n, a, k in sorted(per_resident, key=lambda r: -r[1])[:5]],
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = common.data_root(args.data)
    lfw = data / "lfw" / "lfw-deepfunneled"
    embedder = FaceEmbedder(args.model)
    meta = embedder.meta
    calibration = door_calibration(meta.metrics)
    fusion = str(calibration.get("fusion", "centroid"))
    with tempfile.TemporaryDirectory() as tmp:
        pairs = args.holdout_pairs
        if pairs is None:
            pairs = Path(tmp) / "holdout_pairs.txt"
            make_pairs_file(lfw, pairs, identities=300, pairs=1000, seed=0)
        held = de.held_out_people(pairs, lfw)
    family = sorted({n for a, b, _ in RELATIVES for n in (a, b) if (lfw / n).is_dir()})
    faces = Faces(embedder, lfw, sorted(set(held) | set(family)))
    held_set = set(held)
    companions = [n for n in held if n not in family and len(faces.of(n, "enrol")) >= ANCHORS]
    strangers = np.flatnonzero(np.isin(faces.photos.person, [faces.index[n] for n in held
                                                             if n not in family])
                               & faces.photos.knock_ok)
    levels = _levels(calibration, args.strict)
    report = common.report_header("lookalikes", data) | {
        "model": str(args.model), "model_id": meta.model_id, "fusion": fusion,
        "knock": "one photo = one knock, one frame (the door wants 2 of 2 frames in 3 s; a "
                 "look-alike standing at the door gives correlated frames, so a photo's "
                 "verdict is close to a knock's)",
        "held_out": {"people": len(held), "file": "twinlock pairs --identities 300 --pairs 1000 "
                     "--seed 0 (the model card's)" if args.holdout_pairs is None
                     else str(args.holdout_pairs)},
        "people_used": {name: {"photos": int((faces.photos.person == faces.index[name]).sum()),
                               "held_out": name in held_set} for name in family},
        "strict_levels": levels,
        "sisters": sisters(faces, embedder, calibration, fusion, args.doors, levels,
                           companions),
        "margin": margin(faces, embedder, calibration, fusion, args.doors),
        "relatives": relatives(faces, embedder, calibration, fusion, strangers, 1e-5),
        "spread": spread(faces, embedder, calibration, fusion,
                         [n for n in held if n not in family]),
        "environment": common.environment(),
    }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
