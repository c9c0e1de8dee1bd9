"""The review loop's effect: residents the door refuses are labelled by the household from the
door's own review records, the door is redeployed, and it lets them in more often without
letting more strangers in.

Data: the model's held-out LFW people (``twinlock pairs --identities 300 --pairs 1000 --seed 0``,
the file models/default was trained with ``--holdout-pairs``: never trained on). Every photo
goes once through the door's frame path (``FrameAnalyser``: largest face, quality gate, aligned
chip, tower); a photo the door would score is a knock.

Calibration and knocks on different people: the model's door thresholds and ladders were
measured on these same held-out people, so the benchmark does not use them. It splits the
people in two halves (the split of ``twinlock evaluate --door``'s cross checks), calibrates on
one half what the door needs, as ``twinlock evaluate --door`` does (``door_eval``: the
one-resident ladder at 5 anchors, hence the base threshold for the door size, and the ladders
by anchor count, under the model's fusion rule), and seats residents and strangers from the
other half only; both directions (A->B, B->A), each reported, and the two pooled.

Residents: every held-out person with at least two usable photos. Each is enrolled from one
photo (the first, in file order, that the enrolment gate keeps: ``enroll_from_images``, as
``twinlock enroll`` does); their other photos, in file order, are their knocks. Residents are
seated (seeded) at doors of ``--door-size``; each door's gallery is exported from its
enrolment store as ``twinlock bundle`` makes it (``export_gallery``) and its threshold is the
calibration's for that many residents (``decision_settings``, as the daemon's assemble does),
raised for a resident with anchors from labels (``resident_thresholds``, as assemble does too:
the labelled anchors may not raise a stranger's chance of passing for them, as far as the
ladders measure it), decided by the daemon's ``Verifier``.

The loop, per door: every resident knock becomes a review record with the chip as the door
would keep it (``ReviewWriter``), the household fetches the door's folder (``sync_door``), and
for each resident the first k refused attempts are labelled as that resident with
``label_as`` (what ``twinlock activity label ID --as NAME`` calls: the enrolment gate, near
duplicates and all). The door is redeployed with a gallery exported again from the store.

Reported for k = 1, 3, 5, per direction summed over doors: residents' acceptance per knock before and after on
the knocks that were not labelled (the same knocks both times), and strangers' acceptance (every
knock of a held-out person not seated at that door) before and after, with the upper end of
the two-sided 95 % Clopper-Pearson interval of before (``door_eval.clopper_pearson_upper``: a
one-sided 97.5 % bound). Target, in each direction: with k = 3 the residents'
refused knocks at least halved, the strangers' acceptance after within the bound of before.

Usage::

    .venv/bin/python benchmarks/review_loop.py [--data DIR] [--model DIR] [--door-size 5]
        [--json docs/benchmarks/review_loop.json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import numpy as np

from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.recognition.analyser import FrameAnalyser, Scored
from twinlock.daemon.recognition.fusion import (
    decision_settings,
    door_calibration,
    resident_thresholds,
    threshold_for_residents,
)
from twinlock.daemon.recognition.gallery import load_gallery
from twinlock.daemon.recognition.model import FaceEmbedder, ModelMetadata
from twinlock.daemon.recognition.thresholds import door_name
from twinlock.daemon.recognition.verify import Verifier
from twinlock.daemon.review.format import ReviewRecord, new_record_id
from twinlock.daemon.review.store import ReviewWriter, encode_crop
from twinlock.trainer.data.pairs import make_pairs_file
from twinlock.trainer.evaluation import door_eval as de
from twinlock.trainer.evaluation.door_eval import clopper_pearson_upper, held_out_people
from twinlock.trainer.household.activity import ActivityStore
from twinlock.trainer.household.doors import sync_door
from twinlock.trainer.household.enroll import (
    DUPLICATE_COSINE,
    describe,
    enroll_from_images,
    export_gallery,
)
from twinlock.trainer.household.enroll_store import EnrolmentStore
from twinlock.trainer.household.labels import label_as

KS = (1, 3, 5)
T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = common.make_parser(__doc__ or "")
    common.add_model_option(parser)
    parser.add_argument("--holdout-pairs", type=Path, help="the model's held-out pairs file "
                        "(default: made again as the model card says)")
    parser.add_argument("--door-size", type=int, default=5, help="residents per door")
    parser.add_argument("--seed", type=int, default=0)
    common.add_json_option(parser)
    return parser.parse_args(argv)


@dataclass
class Knock:
    """One photo through the door's frame path: what the door scored and the chip it keeps."""

    person: str
    path: Path
    embedding: np.ndarray
    chip: bytes  # the tower's aligned chip as the review store keeps it (JPEG)


def door_knocks(model_dir: Path, images_root: Path, people: Sequence[str],
                ) -> tuple[dict[str, list[Knock]], Counter[str], de.Photos]:
    """Per person, every photo the door would score (in file order); why others were not; and
    the same photos as ``twinlock evaluate --door`` holds them, for calibrating on a half
    (knock: the door scores it; enrolable: one face too, as door_eval's gate)."""
    embedder = FaceEmbedder(model_dir)
    meta = embedder.meta
    analyser = FrameAnalyser(meta.face_pipeline(meta.detector.build()), embedder,
                             q.DEFAULT_THRESHOLDS)
    out: dict[str, list[Knock]] = {}
    unused: Counter[str] = Counter()
    paths, owner, rows, knock_ok, enrol_ok, reasons = [], [], [], [], [], []
    started = time.perf_counter()
    for p, person in enumerate(common.progress(people, "held-out people")):
        for path in sorted((images_root / person).glob("*.jpg")):
            analysis = analyser.analyse(load_image(path))
            seen = analysis.observations[0] if analysis.observations else None
            scored = isinstance(seen, Scored)
            paths.append(path)
            owner.append(p)
            knock_ok.append(scored)
            enrol_ok.append(scored and analysis.faces_found == 1)
            rows.append(seen.embedding if isinstance(seen, Scored)
                        else np.zeros(meta.embedding_dim, np.float32))
            if isinstance(seen, Scored):
                out.setdefault(person, []).append(
                    Knock(person, path, seen.embedding, encode_crop(seen.crop)))
                reasons.append(None if analysis.faces_found == 1 else q.SEVERAL_FACES)
            else:
                why = q.NO_FACE if seen is None else seen.reason
                unused[why] += 1
                reasons.append(why)
    ms = (time.perf_counter() - started) * 1000.0 / max(len(paths), 1)
    photos = de.Photos(paths, np.array(owner), list(people), np.stack(rows).astype(np.float32),
                       np.array(knock_ok), np.array(enrol_ok), reasons, ms)
    return out, unused, photos


Calibration = tuple[dict[str, float], str, dict[str, Any]]  # thresholds, default, metrics


def calibrate(model_dir: Path, photos: de.Photos, people: np.ndarray, door_size: int,
              seed: int) -> tuple[Calibration, dict[str, Any]]:
    """What the door needs, measured on ``people`` (indices into ``photos.names``) only, as
    ``twinlock evaluate --door`` measures it for the model: the one-resident ladder at its
    headline anchor count (the door's threshold for ``door_size`` residents at 1e-3 per knock
    is read from it) and the one-resident ladders by anchor count, under the model's fusion
    rule. (thresholds, default threshold, metrics) as model.json holds them, and a summary."""
    embedder = FaceEmbedder(model_dir)
    rule = door_calibration(embedder.meta.metrics).get("fusion", "centroid")
    matrix = de.pair_matrix(embedder, photos.embedding)
    # evaluate_door's ladder: one resident of HEADLINE_M anchors, doors x R of them seated
    ones = de.build_doors(photos, 1, de.HEADLINE_M, 20 * de.HEADLINE_R, seed + 3,
                          DUPLICATE_COSINE, people)
    top = de.pooled(ones, photos, matrix, embedder, rule).impostor_top
    ladder = [[far, de.threshold_for(top, far)] for far in de.LADDER_FARS]
    by_anchors = de.anchor_ladders(photos, matrix, embedder, rule, de.LADDER_DOORS, seed + 3,
                                   people)
    one = {"one_resident": {"anchors": de.HEADLINE_M, "ladder": ladder}}
    fitted = threshold_for_residents(one, 1e-3, door_size)
    assert fitted is not None
    name = door_name(1e-3)
    metrics = {"door": {"fusion": rule, "residents": de.HEADLINE_R,
                        "anchors_per_resident": de.HEADLINE_M,
                        "one_resident": one["one_resident"]
                        | {"ladders_by_anchors": by_anchors["ladders"]}}}
    summary = {"fusion": rule, "ladder": ladder, "ladders_by_anchors": by_anchors["ladders"],
               "ladder_residents_by_anchors": by_anchors["residents"],
               f"threshold_for_{door_size}_residents": fitted[0]}
    return ({name: fitted[0]}, name, metrics), summary


class Door:
    """A gallery exported from an enrolment store, decided as the daemon decides."""

    def __init__(self, store: EnrolmentStore, model_dir: Path, meta: ModelMetadata,
                 calibration: Calibration, where: Path) -> None:
        export_gallery(store, model_dir, where)
        gallery = load_gallery(where)
        self.threshold, self.threshold_from, fusion = decision_settings(
            *calibration, residents=len(gallery.users))
        #: (anchors, of them from enrolment) per resident, as the door reads the gallery
        self.counts = [user.anchor_counts for user in gallery.users.values()]
        self.anchors = [total for total, _ in self.counts]
        # raised for residents with anchors from labels, as the daemon's assemble does (None:
        # no labelled anchors, everyone at the one threshold above)
        self.per_resident = resident_thresholds(*calibration, self.counts)
        self.verifier = Verifier(gallery, meta.head_weights, meta.head_bias, self.threshold,
                                 fusion=fusion, per_resident=self.per_resident)
        self.bundle_id = f"gallery-{len(gallery.users)}-{int(time.time())}"

    def who(self, embedding: np.ndarray) -> str | None:
        """The resident the door opens for on this one frame, or None."""
        return self.verifier.verify(embedding).user

    def accepted(self, embeddings: np.ndarray) -> int:
        """How many of ``embeddings`` the door opens for (as anyone): the Verifier's own rule
        (top resident's fused score against that resident's bar), for many faces at once."""
        return sum(self.accepted_as(embeddings).values())

    def accepted_as(self, embeddings: np.ndarray) -> Counter[int]:
        """``accepted`` by the anchor count of the resident each face was let in as."""
        if not len(embeddings):
            return Counter()
        fused = self.verifier.resident_scores(embeddings)
        top = fused.argmax(axis=1)
        opened = top[fused[np.arange(len(top)), top] >= self.verifier.limits[top]]
        return Counter(self.anchors[int(r)] for r in opened)


def _rate(accepted: int, knocks: int) -> dict[str, Any]:
    return {"accepted": accepted, "knocks": knocks,
            "rate": round(accepted / knocks, 6) if knocks else None,
            "upper_95": round(clopper_pearson_upper(accepted, knocks), 6) if knocks else None}


def review_loop(model_dir: Path, knocks: dict[str, list[Knock]], door_size: int,
                workdir: Path, calibration: Calibration, ks: Sequence[int] = KS,
                seed: int = 0) -> dict[str, Any]:
    """The loop for every door and every k (see the module's docstring); summed over doors.
    ``knocks``: the people seated and knocking (none of them calibrated ``calibration``)."""
    meta = FaceEmbedder(model_dir).meta
    model_id = meta.model_id
    assert model_id
    # residents: two usable photos or more, seated (seeded) at doors; each enrolled from the
    # first photo the enrolment gate keeps, the other photos are their knocks
    candidates = sorted(p for p, k in knocks.items() if len(k) >= 2)
    order = [candidates[i] for i in np.random.default_rng(seed).permutation(len(candidates))]
    doors = [order[i:i + door_size] for i in range(0, len(order) - door_size + 1, door_size)]
    everyone = [(p, k) for p, ks_ in sorted(knocks.items()) for k in ks_]
    own: dict[str, list[Knock]] = {}
    not_enrolled: Counter[str] = Counter()
    per_k: dict[int, dict[str, Counter[str]]] = {
        k: {"residents": Counter(), "strangers": Counter(), "labels": Counter(),
            "anchors_after": Counter(), "by_anchors": Counter()} for k in ks}
    threshold_from = ""
    bars: dict[str, set[float]] = {}  # residents' bars by anchor counts (none strict)
    for d, candidates_here in enumerate(common.progress(doors, "doors")):
        name = f"door-{d:03d}"
        folder = workdir / name
        folder.mkdir()
        door_db = folder / "enrolment.db"
        seated: list[str] = []
        with EnrolmentStore(door_db) as store:
            for person in candidates_here:
                for i, knock in enumerate(knocks[person]):
                    report = enroll_from_images(store, person, [knock.path], model_dir)
                    if report.accepted:
                        seated.append(person)
                        own[person] = knocks[person][:i] + knocks[person][i + 1:]
                        break
                    not_enrolled[report.rejected[0][1]] += 1
            before = Door(store, model_dir, meta, calibration, folder / "gallery-before.json")
        threshold_from = before.threshold_from
        _note_bars(bars, before)
        # the door: every resident knock is an attempt with its review record
        writer = ReviewWriter(folder / "review", name, 3650, 10**10)
        clock = T0
        attempt_of: dict[str, tuple[str, int, str | None]] = {}
        for person in seated:
            for i, knock in enumerate(own[person]):
                clock += timedelta(minutes=3)
                verdict = before.verifier.verify(knock.embedding)
                record = ReviewRecord(
                    id=new_record_id(name, clock), door=name, time=clock,
                    decision="unlock" if verdict.user else "deny", bundle_id=before.bundle_id,
                    model_id=model_id, resident=verdict.user or verdict.top_user,
                    score=round(float(verdict.score), 6), embedding=knock.embedding)
                assert writer.append(record, knock.chip)
                attempt_of[record.id] = (person, i, verdict.user)
        strangers = np.stack([k.embedding for p, k in everyone if p not in seated])
        strangers_before = before.accepted(strangers)
        for k in ks:
            work = folder / f"k{k}"
            work.mkdir()
            shutil.copy(door_db, work / "enrolment.db")
            with (EnrolmentStore(work / "enrolment.db") as store,
                  ActivityStore(work / "activity.db") as activity):
                activity.add_door(name, str(folder / "review"))
                sync_door(activity, name)
                labelled: set[tuple[str, int]] = set()
                for person in seated:
                    refused = sorted((a for a in activity.attempts(door=name, decision="deny")
                                      if attempt_of[a.id][0] == person),
                                     key=lambda a: a.time)[:k]
                    if not refused:
                        continue
                    report = label_as(activity, store, refused, person, model_dir)
                    labelled |= {attempt_of[a.id][:2] for a in refused}
                    per_k[k]["labels"]["labelled"] += len(refused)
                    per_k[k]["labels"]["enrolled"] += len(report.accepted)
                    for _, reason in report.rejected:
                        per_k[k]["labels"][f"refused: {describe(reason)}"] += 1
                after = Door(store, model_dir, meta, calibration, work / "gallery-after.json")
            per_k[k]["anchors_after"].update(after.anchors)
            _note_bars(bars, after)
            # control: the same faces enrolled from their photos on the desktop (twinlock
            # enroll) instead of from the door's chips: what more anchors cost by themselves
            shutil.copy(door_db, work / "control.db")
            with EnrolmentStore(work / "control.db") as store:
                for person in seated:
                    paths = [own[person][i].path for p, i in sorted(labelled) if p == person]
                    if paths:
                        enroll_from_images(store, person, paths, model_dir)
                control = Door(store, model_dir, meta, calibration,
                               work / "gallery-control.json")
            res = per_k[k]["residents"]
            for person in seated:
                for i, knock in enumerate(own[person]):
                    if (person, i) in labelled:
                        continue
                    res["knocks"] += 1
                    res["before"] += before.who(knock.embedding) == person
                    res["after"] += after.who(knock.embedding) == person
                    res["wrong_before"] += before.who(knock.embedding) not in (None, person)
                    res["wrong_after"] += after.who(knock.embedding) not in (None, person)
                    res["control"] += control.who(knock.embedding) == person
            st = per_k[k]["strangers"]
            st["knocks"] += len(strangers)
            st["before"] += strangers_before
            as_count = after.accepted_as(strangers)
            st["after"] += sum(as_count.values())
            for n, residents_n in Counter(after.anchors).items():
                # per anchor count: strangers let in as such a resident, over resident-knocks
                per_k[k]["by_anchors"][f"{n}: accepted"] += as_count[n]
                per_k[k]["by_anchors"][f"{n}: resident_knocks"] += residents_n * len(strangers)
            st["control"] += control.accepted(strangers)

    return {"doors": len(doors), "door_size": door_size, "threshold": threshold_from,
            "thresholds_per_resident": (
                "the door's one threshold for every resident enrolled from photos only; a "
                "resident with anchors from labels raised to the threshold that gives a "
                "stranger the same one-resident rate against all their anchors as the door's "
                "gives against their enrolled ones, read at the strictest measured rung when "
                "the door's lies past it (fusion.resident_thresholds), never below the door's"),
            "threshold_by_anchors": {n: sorted(ts) for n, ts in sorted(bars.items())},
            "residents": len(own), "seated_but_never_enrolled": sum(map(len, doors)) - len(own),
            "not_enrolled_photos": dict(not_enrolled),
            "resident_names": sorted(own),
            "stranger_people_per_door": len(knocks) - door_size,
            "counts": per_k}


def _note_bars(bars: dict[str, set[float]], door: Door) -> None:
    """Each resident's bar by (anchors, from labels), for the report."""
    for (total, enrolled), bar in zip(door.counts, door.verifier.limits, strict=True):
        bars.setdefault(f"{total} anchors, {total - enrolled} from labels", set()).add(
            round(float(bar), 6))


def summarise(per_k: dict[int, dict[str, Counter[str]]]) -> list[dict[str, Any]]:
    """Per k: the residents' and strangers' counts as rates, and whether the target is met."""
    results = []
    for k in sorted(per_k):
        res, st = per_k[k]["residents"], per_k[k]["strangers"]
        refused_before, refused_after = res["knocks"] - res["before"], res["knocks"] - res["after"]
        s_before, s_after = _rate(st["before"], st["knocks"]), _rate(st["after"], st["knocks"])
        halved = refused_after * 2 <= refused_before
        within = s_before["upper_95"] is not None and (s_after["rate"] or 0) <= s_before["upper_95"]
        results.append({
            "k": k,
            "labels": dict(sorted(per_k[k]["labels"].items())),
            "residents_by_anchors_after": {str(n): c for n, c in
                                           sorted(per_k[k]["anchors_after"].items())},
            "residents": {"knocks": res["knocks"],
                          "accepted_before": res["before"], "accepted_after": res["after"],
                          "acceptance_before": round(res["before"] / res["knocks"], 4),
                          "acceptance_after": round(res["after"] / res["knocks"], 4),
                          "refused_before": refused_before, "refused_after": refused_after,
                          "wrong_resident_before": res["wrong_before"],
                          "wrong_resident_after": res["wrong_after"],
                          "accepted_control": res["control"]},
            "strangers": {"before": s_before, "after": s_after,
                          "after_by_anchor_count_of_the_resident_passed_for": {
                              str(n): _rate(per_k[k]["by_anchors"][f"{n}: accepted"],
                                            per_k[k]["by_anchors"][f"{n}: resident_knocks"])
                              for n in sorted(per_k[k]["anchors_after"])},
                          "control_same_faces_enrolled_from_photos": _rate(st["control"],
                                                                           st["knocks"])},
            "refused_halved": halved, "strangers_within_bound": within})
    return results


def _met(results: list[dict[str, Any]]) -> bool:
    k3 = next(r for r in results if r["k"] == 3)
    return bool(k3["refused_halved"] and k3["strangers_within_bound"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = common.data_root(args.data)
    lfw = data / "lfw" / "lfw-deepfunneled"
    meta = FaceEmbedder(args.model).meta
    started = time.perf_counter()
    directions: dict[str, dict[str, Any]] = {}
    pooled: dict[int, dict[str, Counter[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="twinlock-review-loop-") as tmp:
        pairs = args.holdout_pairs
        if pairs is None:
            pairs = Path(tmp) / "holdout_pairs.txt"
            make_pairs_file(lfw, pairs, identities=300, pairs=1000, seed=0)
        people = held_out_people(pairs, lfw)
        knocks, unused, photos = door_knocks(args.model, lfw, people)
        # the halves of twinlock evaluate --door's cross checks (door_eval.evaluate_door)
        halves = np.random.default_rng([0, 7]).permutation(len(people))
        for split, fit_on, knock_on in (("A->B", halves[::2], halves[1::2]),
                                        ("B->A", halves[1::2], halves[::2])):
            calibration, summary = calibrate(args.model, photos, fit_on, args.door_size,
                                             args.seed)
            here = {people[int(i)] for i in knock_on}
            work = Path(tmp) / split.replace("->", "-")
            work.mkdir()
            loop = review_loop(args.model, {p: k for p, k in knocks.items() if p in here},
                               args.door_size, work, calibration, KS, args.seed)
            counts = loop.pop("counts")
            for k, groups in counts.items():
                for group, counter in groups.items():
                    pooled.setdefault(k, {}).setdefault(group, Counter()).update(counter)
            results = summarise(counts)
            directions[split] = {
                "calibrated_on": sorted(people[int(i)] for i in fit_on),
                "knocked": sorted(here), "calibration": summary,
                "meets_target": _met(results), **loop, "per_k": results}
    pooled_results = summarise(pooled)
    return common.report_header("review_loop", data) | {
        "model": str(args.model), "model_id": meta.model_id,
        "held_out": {"pairs_file": "twinlock pairs --identities 300 --pairs 1000 --seed 0 (the "
                     "model card's)" if args.holdout_pairs is None else str(args.holdout_pairs),
                     "people": len(people), "people_with_a_knock": len(knocks),
                     "knocks": sum(len(k) for k in knocks.values()),
                     "photos_the_door_would_not_score": dict(unused),
                     "residents_are": "every held-out person of the knocking half with 2+ "
                                      "usable photos, enrolled from the first photo the "
                                      "enrolment gate keeps",
                     "strangers_are": "every usable photo of the knocking half's people not "
                                      "seated at that door (other doors' residents included)",
                     "calibration_used": "not the model's door thresholds or ladders (measured "
                                         "on these same people): each direction calibrates "
                                         "on one half (calibrated_on) with door_eval's own "
                                         "functions and knocks with the other (knocked); the "
                                         "fusion rule is the model's"},
        "target": "in each direction, k = 3: residents' refused knocks at least halved; "
                  "strangers' acceptance after <= the upper end of the two-sided 95 % "
                  "Clopper-Pearson interval of before (one-sided 97.5 %)",
        "meets_target": all(d["meets_target"] for d in directions.values()),
        "seconds": round(time.perf_counter() - started, 1),
        "pooled": {"meets_target": _met(pooled_results), "per_k": pooled_results},
        "directions": directions,
        "environment": common.environment(),
    }


if __name__ == "__main__":
    sys.exit(common.main(parse_args, run))
