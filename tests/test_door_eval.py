"""Door-level fusion and calibration on real faces: LFW photos through the shipped LiteRT tower.

The fusion rules are checked against scores computed independently, one anchor at a time, and
the door evaluation against the daemon's own ``Verifier``; thresholds against the impostor
scores they were calibrated on.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon.errors import UsageError
from twinlock.daemon.recognition.fusion import FUSION_RULES, decision_settings
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import FaceEmbedder, read_metadata
from twinlock.daemon.recognition.verify import Verifier
from twinlock.trainer.data.pairs import make_pairs_file
from twinlock.trainer.evaluation import door_eval as de
from twinlock.trainer.household.enroll import DUPLICATE_COSINE

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path) -> Path:
    """A seeded pairs file over 60 LFW people with 2+ photos (and 60 with one)."""
    path = tmp_path_factory.mktemp("door") / "pairs.txt"
    make_pairs_file(lfw_dir, path, identities=60, pairs=100, seed=3)
    return path


@pytest.fixture(scope="module")
def real(door_model: Path, lfw_dir: Path, held_out: Path):
    embedder = FaceEmbedder(door_model)
    meta = embedder.meta
    pipeline = meta.face_pipeline(meta.detector.build())
    people = de.held_out_people(held_out, lfw_dir)
    photos = de.embed_photos(embedder, pipeline, lfw_dir, people, progress=False)
    return embedder, photos, de.pair_matrix(embedder, photos.embedding)


def _gallery(photos: de.Photos, anchors: list[list[int]], model_id: str) -> Gallery:
    gallery = Gallery(model_id)
    for r, idx in enumerate(anchors):
        gallery.add(f"r{r}", photos.embedding[idx])
    return gallery


def _some_residents(photos: de.Photos, count: int, per: int) -> list[list[int]]:
    out = []
    for p in np.unique(photos.person):
        idx = np.flatnonzero((photos.person == p) & photos.enrol_ok)
        if len(idx) >= per:
            out.append([int(i) for i in idx[:per]])
        if len(out) == count:
            return out
    pytest.fail(f"the held-out subset has fewer than {count} people with {per} enrolable photos")


def test_fusion_rules_match_scores_computed_one_anchor_at_a_time(real) -> None:
    embedder, photos, _ = real
    residents = _some_residents(photos, 3, 3)
    used = {i for r in residents for i in r}
    probes = [i for i in np.flatnonzero(photos.knock_ok) if i not in used][:60]
    gallery = _gallery(photos, residents, embedder.meta.model_id)
    for rule in FUSION_RULES:
        fused = Verifier(gallery, embedder.meta.head_weights, embedder.meta.head_bias, 0.5, 0.5,
                         rule).resident_scores(photos.embedding[probes])
        for row, p in zip(fused, probes, strict=True):
            for r, idx in enumerate(residents):
                anchors = photos.embedding[idx]
                if rule == "centroid":
                    # the mean anchor, put back on the sphere only for unit-length embeddings
                    centre = anchors.mean(axis=0)
                    if embedder.meta.l2_normalize:
                        centre = centre / np.linalg.norm(centre)
                    expect = embedder.scores(photos.embedding[p], centre[None])[0]
                else:
                    each = sorted((float(embedder.scores(photos.embedding[p], a[None])[0])
                                   for a in anchors), reverse=True)
                    expect = each[0] if rule == "max" else each[math.ceil(0.5 * len(each)) - 1]
                assert row[r] == pytest.approx(expect, abs=1e-5), (rule, p, r)


@pytest.mark.parametrize("share", [0.2, 0.5, 0.6, 1.0])
def test_share_rule_decides_exactly_as_the_old_share_of_anchors(real, share: float) -> None:
    """The old door: verified when a share ``v`` of the resident's anchors reach t."""
    embedder, photos, _ = real
    residents = _some_residents(photos, 2, 5)
    gallery = _gallery(photos, residents, embedder.meta.model_id)
    probes = np.flatnonzero(photos.knock_ok)[:80]
    w, b = embedder.meta.head_weights, embedder.meta.head_bias
    decided = 0
    for t in (0.3, 0.7, 0.9, 0.98):
        fused = Verifier(gallery, w, b, t, share, "share").resident_scores(
            photos.embedding[probes])
        for row, p in zip(fused, probes, strict=True):
            for r, idx in enumerate(residents):
                scores = embedder.scores(photos.embedding[p], photos.embedding[idx])
                old = float((scores >= t).mean()) >= share
                assert (row[r] >= t) == old, (t, p, r)
                decided += old
    assert decided > 0, "no probe passed at any threshold: the comparison proved nothing"


def test_the_door_evaluation_scores_knocks_as_the_daemons_verifier(real) -> None:
    embedder, photos, matrix = real
    doors = de.build_doors(photos, 3, 2, 2, seed=1, duplicate_cosine=DUPLICATE_COSINE)
    w, b = embedder.meta.head_weights, embedder.meta.head_bias
    for door in doors:
        gallery = _gallery(photos, door.anchors, embedder.meta.model_id)
        knocks = np.concatenate([door.genuine, door.impostor])
        ok = photos.knock_ok[knocks]
        for rule in FUSION_RULES:
            genuine, impostor = de.door_scores(door, photos, matrix, embedder, rule)
            ours = np.concatenate([genuine, impostor])
            verifier = Verifier(gallery, w, b, 0.9, 0.5, rule)
            theirs = verifier.resident_scores(photos.embedding[knocks])
            np.testing.assert_allclose(ours[ok], theirs[ok], atol=1e-5)
            assert np.all(np.isneginf(ours[~ok]))
            for k in np.flatnonzero(ok)[:20]:  # and the per-frame decision itself
                verdict = verifier.verify(photos.embedding[knocks[k]])
                top = int(np.argmax(ours[k]))
                assert verdict.top_user == f"r{top}"
                assert (verdict.user is not None) == (ours[k, top] >= 0.9)


def test_doors_seat_residents_and_knock_with_everyone_else(real) -> None:
    _, photos, _ = real
    doors = de.build_doors(photos, 3, 2, 4, seed=0, duplicate_cosine=DUPLICATE_COSINE)
    for door in doors:
        anchors = [i for a in door.anchors for i in a]
        assert all(photos.enrol_ok[anchors])
        assert not set(anchors) & set(door.genuine.tolist())
        assert set(photos.person[door.genuine].tolist()) <= set(door.residents)
        for r, who in enumerate(door.residents):
            assert set(photos.person[door.genuine[door.genuine_owner == r]].tolist()) <= {who}
        assert not set(photos.person[door.impostor].tolist()) & set(door.residents)
        # every photo is an anchor, a genuine knock or an impostor knock, once
        assert sorted(anchors + door.genuine.tolist() + door.impostor.tolist()) == \
            list(range(len(photos.paths)))
    with pytest.raises(UsageError, match="cannot seat"):
        de.build_doors(photos, 50, 10, 1, seed=0, duplicate_cosine=DUPLICATE_COSINE)


def test_door_anchors_are_what_twinlock_enroll_keeps(real, door_model: Path) -> None:
    _, photos, _ = real
    door = de.build_doors(photos, 2, 3, 1, seed=2, duplicate_cosine=DUPLICATE_COSINE)[0]
    check = de._check_enrolment(door, photos, door_model)
    assert check["max_abs_difference"] <= 1e-4


@pytest.mark.parametrize("far", [0.1, 0.01, 0.001, 0.0])
def test_thresholds_meet_their_target_on_real_impostor_scores_and_no_lower_one_does(
        real, far: float) -> None:
    _, photos, matrix = real
    people = photos.person
    ok = np.flatnonzero(photos.knock_ok)
    a, b = np.triu_indices(len(ok), 1)
    different = people[ok[a]] != people[ok[b]]
    impostor = matrix[ok[a][different], ok[b][different]]
    t = de.threshold_for(impostor, far)
    allowed = math.floor(far * len(impostor) + 1e-9)
    assert (impostor >= t).sum() <= allowed
    below = impostor[impostor < t]
    if len(below):  # the next score down would let in one too many
        assert (impostor >= below.max()).sum() > allowed


def test_clopper_pearson_upper_bound() -> None:
    for n in (10, 2000, 33496):  # zero events: closed form 1 - (alpha/2)^(1/n)
        assert de.clopper_pearson_upper(0, n) == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-6)
    assert de.clopper_pearson_upper(5, 100) == pytest.approx(0.1128, abs=2e-4)
    bounds = [de.clopper_pearson_upper(x, 500) for x in range(20)]
    assert all(lo < hi for lo, hi in itertools.pairwise(bounds))
    assert de.clopper_pearson_upper(7, 7) == 1.0


def test_evaluate_door_writes_thresholds_the_daemon_then_uses(
        real, door_model: Path, lfw_dir: Path, held_out: Path, tmp_path: Path) -> None:
    from twinlock.trainer.cli import main

    model = tmp_path / "model"
    shutil.copytree(door_model, model)
    before = json.loads((model / "model.json").read_text())
    out = tmp_path / "door"
    code = main(["evaluate", "--door", "--model", str(model), "--images", str(lfw_dir),
                 "--pairs", str(held_out), "--residents", "1", "2", "--anchors", "1", "2",
                 "--doors", "3", "--calibrate", "2", "2", "--json", str(out / "door.json"),
                 "--write-thresholds"])
    assert code == 0
    result = json.loads((out / "door.json").read_text())
    assert result["held_out"]["people"] == len(de.held_out_people(held_out, lfw_dir))
    assert (out / "door_det.png").stat().st_size > 10_000
    meta = read_metadata(model)
    assert meta.default_threshold == "door_far_1e-03"
    winner = result["winner"]
    for name in ("door_far_1e-03", "door_far_1e-04"):
        stored = result["rules"][winner][name]
        assert meta.thresholds[name] == stored["threshold"]
        assert stored["impostor_accepts"] <= math.floor(
            float(name.removeprefix("door_far_")) * stored["impostor_knocks"] + 1e-9)
    assert meta.metrics["door"]["fusion"] == winner
    assert (meta.metrics["door"]["residents"], meta.metrics["door"]["anchors_per_resident"]) \
        == (2, 2)
    # the pair calibration and everything else in model.json is kept
    def pair(thresholds: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in thresholds.items() if not k.startswith("door_")}

    assert pair(meta.thresholds) == pair(before["thresholds"])
    assert meta.metrics["validation"] == before["metrics"]["validation"]
    threshold, name, rule = decision_settings(meta.thresholds, meta.default_threshold,
                                              meta.metrics)
    assert (threshold, name, rule) == (meta.thresholds["door_far_1e-03"], "door_far_1e-03",
                                       winner)
