"""Unknown visitors' grouping (trainer/household/visitors.py): the two-stage method chosen by
benchmarks/visitor_grouping.py, single-linkage cores at the strict threshold and then average
linkage over whole cores down to a looser one.

The first tests pin what the method is on made-up logits (average linkage over whole cores, each
core weighted by its size, which scipy has no option for, against a slow plain version); the
last runs it on real faces of the model's held-out people."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import squareform

from twinlock.daemon.errors import UsageError
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.trainer.household import visitors as v

REPO = Path(__file__).resolve().parents[1]
CORE, MERGE = 0.999, 0.95  # probabilities


def reference(logits: np.ndarray, core: float, merge: float) -> np.ndarray:
    """Slow and plain: connected cores over the pairs at ``core``, then repeatedly join the two
    cores whose cross pairs have the highest mean logit while it reaches ``merge``."""
    square = squareform(logits)
    n = len(square)
    group = list(range(n))
    for i in range(n):  # cores: connected components of the strict links
        for j in range(n):
            if i != j and square[i, j] >= v.logit(core) and group[i] != group[j]:
                old = group[j]
                group = [group[i] if g == old else g for g in group]
    while True:
        names = sorted(set(group))
        best, pair = -math.inf, None
        for a in names:
            for b in names:
                if a < b:
                    rows = [i for i in range(n) if group[i] == a]
                    cols = [j for j in range(n) if group[j] == b]
                    mean = float(square[np.ix_(rows, cols)].mean())
                    if mean > best:
                        best, pair = mean, (a, b)
        if pair is None or best < v.logit(merge):
            return np.array(group)
        group = [pair[0] if g == pair[1] else g for g in group]


def same_groups(a: np.ndarray, b: np.ndarray) -> bool:
    """The same partition, whatever the group numbers."""
    return len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(set(a.tolist())) \
        == len(set(b.tolist()))


def condensed(n: int, links: dict[tuple[int, int], float]) -> np.ndarray:
    """Pair logits (pdist order): the given pairs at their probability, the rest at 0.5."""
    square = np.zeros((n, n))
    for (a, b), p in links.items():
        square[a, b] = square[b, a] = v.logit(p)
    return squareform(square, checks=False)


def test_cores_join_on_the_mean_of_all_their_cross_pairs_not_on_the_best_one() -> None:
    core = {(0, 1): 0.9999, (0, 2): 0.9999, (1, 2): 0.9999}  # {0, 1, 2} and {3}
    # one look-alike pair (2-3) above the merge level, two cross pairs at 0.5: the mean logit
    # (0 + 0 + logit(0.998)) / 3 is below logit(0.95), so they stay apart
    look_alike = condensed(4, core | {(2, 3): 0.998})
    assert v.group_logits(look_alike, MERGE, "single").tolist() == [0, 0, 0, 0]
    groups = v.group_logits(look_alike, CORE, v.CORES_THEN_AVERAGE, merge=MERGE)
    assert groups.tolist() == [0, 0, 0, 1]
    # every cross pair middling (0.97 >= 0.95) and none strong: they join
    agree = condensed(4, core | {(0, 3): 0.97, (1, 3): 0.97, (2, 3): 0.97})
    assert v.group_logits(agree, CORE, "single").tolist() == [0, 0, 0, 1]
    assert v.group_logits(agree, CORE, v.CORES_THEN_AVERAGE, merge=MERGE).tolist() == [0] * 4
    for logits in (look_alike, agree):
        assert same_groups(v.group_logits(logits, CORE, v.CORES_THEN_AVERAGE, merge=MERGE),
                           reference(logits, CORE, MERGE))


def test_a_chained_core_stays_whole() -> None:
    # 0-1 and 1-2 match at the core level, 0-2 not at all: average linkage alone would leave 2
    # out (mean of logit(0.01) and logit(0.9999) < logit(0.95)); the core keeps it
    logits = condensed(3, {(0, 1): 0.9999, (1, 2): 0.9999, (0, 2): 0.01})
    assert v.group_logits(logits, MERGE, "average").tolist() == [0, 0, 1]
    assert v.group_logits(logits, CORE, v.CORES_THEN_AVERAGE, merge=MERGE).tolist() == [0, 0, 0]


@pytest.mark.parametrize("seed", range(6))
def test_the_two_stages_are_average_linkage_over_single_linkage_cores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 24
    # a few people: high logits within, low between, and some noise across both
    person = rng.integers(0, 6, n)
    square = np.where(person[:, None] == person[None, :], rng.normal(6.0, 2.5, (n, n)),
                      rng.normal(-2.0, 3.0, (n, n)))
    square = (square + square.T) / 2
    np.fill_diagonal(square, 0.0)
    logits = squareform(square, checks=False)
    got = v.group_logits(logits, CORE, v.CORES_THEN_AVERAGE, merge=MERGE)
    assert same_groups(got, reference(logits, CORE, MERGE))


def test_a_merge_stricter_than_the_cores_is_refused() -> None:
    logits = squareform(np.zeros((3, 3)), checks=False)
    with pytest.raises(UsageError, match="merge"):
        v.group_logits(logits, 0.99, v.CORES_THEN_AVERAGE, merge=0.999)
    with pytest.raises(UsageError, match="merge"):
        v.group_logits(logits, 0.99, v.CORES_THEN_AVERAGE)


def test_the_merge_is_the_models_own_threshold(door_model: Path) -> None:
    from twinlock.daemon.recognition.model import read_metadata

    meta = read_metadata(door_model)
    core = v.threshold_of(meta)[1]
    assert v.merge_of(meta, core) == meta.thresholds[v.DEFAULT_MERGE] < core
    loose = v.calibrated_threshold(meta.thresholds, "far_1e-02")
    assert v.merge_of(meta, loose) == loose  # --threshold looser than the merge: one level


@pytest.mark.data
def test_on_held_out_faces_cores_stay_whole_and_more_of_each_person_is_found(
        door_model: Path, lfw_dir: Path, tmp_path: Path) -> None:
    """Real faces: the model's held-out people with 4 to 15 photos (the first 60 by name), each
    usable photo a refused attempt, at the model's own thresholds. The two stages never split a
    single-linkage core, join more of one person's pairs than single linkage alone, and put no
    two people in one group here."""
    from twinlock.trainer.data.pairs import make_pairs_file
    from twinlock.trainer.evaluation import door_eval as de

    if door_model != REPO / "models" / "default":
        pytest.skip("measured on models/default's thresholds")
    pairs = tmp_path / "holdout_pairs.txt"
    make_pairs_file(lfw_dir, pairs, identities=300, pairs=1000, seed=0)  # the model card's
    people = [p for p in de.held_out_people(pairs, lfw_dir)
              if 4 <= len(list((lfw_dir / p).iterdir())) <= 15][:60]
    embedder = FaceEmbedder(door_model)
    meta = embedder.meta
    photos = de.embed_photos(embedder, meta.face_pipeline(meta.detector.build()), lfw_dir,
                             people, progress=False)
    emb, person = photos.embedding[photos.knock_ok], photos.person[photos.knock_ok]
    assert len(emb) >= 250, len(emb)
    core = v.threshold_of(meta)[1]
    single = v.group_embeddings(emb, meta.head_weights, meta.head_bias, core, "single")
    chosen = v.group_embeddings(emb, meta.head_weights, meta.head_bias, core,
                                merge=v.merge_of(meta, core))
    for g in np.unique(single):  # every core lies in one group
        assert len(np.unique(chosen[single == g])) == 1

    def pairs_joined(groups: np.ndarray) -> tuple[int, int]:
        """(same-person pairs in one group, other pairs in one group)"""
        together = groups[:, None] == groups[None, :]
        same = person[:, None] == person[None, :]
        upper = np.triu(np.ones_like(same), 1)
        return int((together & same & upper).sum()), int((together & ~same & upper).sum())

    found_single, wrong_single = pairs_joined(single)
    found, wrong = pairs_joined(chosen)
    assert found > found_single, (found, found_single)
    assert wrong == wrong_single == 0, (wrong, wrong_single)
