"""Verification metrics, checked against brute force and cases with a known answer."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from twinlock.daemon.errors import DataError, UsageError
from twinlock.trainer.stats import metrics as m


def _brute_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney probability by counting every (same, different) pair; ties count 1/2."""
    pos = scores[labels.astype(bool)]
    neg = scores[~labels.astype(bool)]
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (pos.size * neg.size)


def _far(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    neg = scores[~labels.astype(bool)]
    return float(np.mean(neg >= threshold))


def _tar(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    pos = scores[labels.astype(bool)]
    return float(np.mean(pos >= threshold))


@pytest.fixture
def gaussian_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Same ~ N(1, 1), different ~ N(-1, 1): EER = Phi(-1), AUC = Phi(2 / sqrt(2))."""
    rng = np.random.default_rng(1)
    n = 20_000
    scores = np.r_[rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n)]
    labels = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    return scores, labels


# ------------------------------------------------------------------------------------ ROC / AUC


def test_roc_curve_endpoints_and_ties() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.3, 0.1])
    labels = np.array([1, 1, 0, 1, 0, 0])
    far, tar, thr = m.roc_curve(scores, labels)
    assert (far[0], tar[0], thr[0]) == (0.0, 0.0, np.inf)
    assert (far[-1], tar[-1]) == (1.0, 1.0)
    # one point per distinct score, the tie group at 0.8 taken in one step
    np.testing.assert_array_equal(thr[1:], [0.9, 0.8, 0.3, 0.1])
    np.testing.assert_allclose(tar, [0, 1 / 3, 1, 1, 1])
    np.testing.assert_allclose(far, [0, 0, 1 / 3, 2 / 3, 1])
    # every point is what "score >= threshold" really gives
    for f, t, th in zip(far[1:], tar[1:], thr[1:], strict=True):
        assert f == pytest.approx(_far(scores, labels, th))
        assert t == pytest.approx(_tar(scores, labels, th))
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_roc_auc_matches_brute_force_with_heavy_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 120
    labels = rng.random(n) < 0.4
    # integer scores 0..5: lots of ties, within and across classes
    scores = rng.integers(0, 6, n).astype(float) + labels * rng.integers(0, 2, n)
    assert m.roc_auc(scores, labels) == pytest.approx(_brute_auc(scores, labels), abs=1e-12)


def test_roc_auc_extremes() -> None:
    labels = np.array([1, 1, 0, 0])
    assert m.roc_auc([0.9, 0.8, 0.2, 0.1], labels) == pytest.approx(1.0)
    assert m.roc_auc([0.1, 0.2, 0.8, 0.9], labels) == pytest.approx(0.0)
    assert m.roc_auc([0.5, 0.5, 0.5, 0.5], labels) == pytest.approx(0.5)


def test_roc_auc_gaussian(gaussian_pairs: tuple[np.ndarray, np.ndarray]) -> None:
    expected = NormalDist().cdf(2.0 / math.sqrt(2.0))
    assert m.roc_auc(*gaussian_pairs) == pytest.approx(expected, abs=0.005)


# ------------------------------------------------------------------------------------------ EER


def test_eer_known_answer_exact() -> None:
    # different: 0..99, same: 50..149. At t = 75: FAR = 25/100 (75..99), FRR = 25/100 (50..74)
    scores = np.r_[np.arange(100, dtype=float), np.arange(100, dtype=float) + 50]
    labels = np.r_[np.zeros(100, bool), np.ones(100, bool)]
    eer, thr = m.equal_error_rate(scores, labels)
    assert eer == pytest.approx(0.25)
    assert thr == 75.0
    assert _far(scores, labels, thr) == pytest.approx(1 - _tar(scores, labels, thr))


def test_eer_interpolates_between_points() -> None:
    # ROC points (FAR, FRR): ... (.6, .75) at t=0.6, then (.6, 0) at t=0.1 (tied genuines).
    # FAR - FRR goes -0.15 -> +0.6, so the crossing is interpolated to FAR = FRR = 0.6, and the
    # returned threshold is the nearer point's (0.6), not the +0.6 one's (0.1).
    scores = np.array([0.9, 0.1, 0.1, 0.1, 0.8, 0.7, 0.6, 0.05, 0.04])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    eer, thr = m.equal_error_rate(scores, labels)
    assert eer == pytest.approx(0.6)
    assert thr == 0.6


def test_eer_gaussian(gaussian_pairs: tuple[np.ndarray, np.ndarray]) -> None:
    eer, thr = m.equal_error_rate(*gaussian_pairs)
    assert eer == pytest.approx(NormalDist().cdf(-1.0), abs=0.006)
    assert thr == pytest.approx(0.0, abs=0.05)
    scores, labels = gaussian_pairs
    assert _far(scores, labels, thr) == pytest.approx(1 - _tar(scores, labels, thr), abs=0.003)


def test_eer_separable_and_constant() -> None:
    labels = np.array([1, 1, 0, 0])
    eer, thr = m.equal_error_rate([0.9, 0.8, 0.2, 0.1], labels)
    assert eer == 0.0
    assert 0.2 < thr <= 0.8
    eer, thr = m.equal_error_rate([0.5] * 4, labels)
    assert eer == pytest.approx(0.5)
    assert math.isfinite(thr)


# ----------------------------------------------------------------------------- threshold @ FAR


@pytest.mark.parametrize("far", [0.1, 0.05, 0.01, 3e-3])
@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_at_far_is_lowest_within_budget(far: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_neg, n_pos = 1000, 300
    # rounded scores: many tied impostors at the budget boundary
    scores = np.round(np.r_[rng.normal(0, 1, n_neg), rng.normal(2, 1, n_pos)], 1)
    labels = np.r_[np.zeros(n_neg, bool), np.ones(n_pos, bool)]
    thr = m.threshold_at_far(scores, labels, far)
    assert thr is not None
    assert _far(scores, labels, thr) <= far
    lower = float(np.nextafter(thr, -np.inf))
    assert _far(scores, labels, lower) > far
    assert m.tar_at_far(scores, labels, [far])[m.far_key(far)] == _tar(scores, labels, thr)


def test_threshold_at_far_tie_group_straddling_budget() -> None:
    # 10 impostors, budget 10% = 1 accept allowed; the top two impostors tie at 0.8
    neg = [0.8, 0.8, 0.5, 0.4, 0.3, 0.3, 0.2, 0.1, 0.1, 0.0]
    scores = np.array(neg + [0.9, 0.8, 0.7])
    labels = np.r_[np.zeros(10, bool), np.ones(3, bool)]
    thr = m.threshold_at_far(scores, labels, 0.1)
    assert thr == float(np.nextafter(0.8, np.inf))
    assert _far(scores, labels, thr) == 0.0  # both tied impostors rejected, not one of them
    # budget 20%: both may be accepted; the next impostor (0.5) must be rejected
    thr = m.threshold_at_far(scores, labels, 0.2)
    assert thr == float(np.nextafter(0.5, np.inf))
    assert _far(scores, labels, thr) == pytest.approx(0.2)


def test_threshold_at_far_float32_stays_above_tie() -> None:
    scores = np.r_[np.full(10, 0.7, np.float32), np.float32([0.9, 0.6])]
    labels = np.r_[np.zeros(10, bool), np.ones(2, bool)]
    thr = m.threshold_at_far(scores, labels, 0.1)
    assert thr is not None
    assert np.float32(thr) > np.float32(0.7)  # survives a cast back to float32
    assert _far(scores, labels, thr) == 0.0


def test_threshold_at_far_needs_enough_negatives() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(1100)
    labels = np.r_[np.zeros(999, bool), np.ones(101, bool)]
    assert m.threshold_at_far(scores, labels, 1e-3) is None  # 999 < 1000
    assert m.threshold_at_far(scores, labels, 1e-2) is not None
    result = m.tar_at_far(scores, labels)
    assert set(result) == {"1e-02"}
    labels = np.r_[np.zeros(1000, bool), np.ones(100, bool)]
    assert m.threshold_at_far(scores, labels, 1e-3) is not None
    assert set(m.tar_at_far(scores, labels)) == {"1e-02", "1e-03"}


def test_threshold_at_far_one_accepts_everything() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    labels = np.array([0, 1, 0, 1])
    assert m.threshold_at_far(scores, labels, 1.0) == 0.1


@pytest.mark.parametrize("far", [0.0, -0.1, 1.5, float("nan")])
def test_threshold_at_far_rejects_bad_target(far: float) -> None:
    with pytest.raises(UsageError):
        m.threshold_at_far([0.1, 0.9], [0, 1], far)


def test_far_key() -> None:
    assert [m.far_key(f) for f in (1e-2, 1e-3, 1e-4)] == ["1e-02", "1e-03", "1e-04"]


# ------------------------------------------------------------------------ accuracy & friends


def test_accuracy_precision_recall() -> None:
    scores = np.array([0.9, 0.8, 0.6, 0.4, 0.3, 0.1])
    labels = np.array([1, 0, 1, 1, 0, 0])
    assert m.accuracy_at(scores, labels, 0.5) == pytest.approx(4 / 6)
    precision, recall = m.precision_recall_at(scores, labels, 0.5)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(2 / 3)
    # nothing accepted: precision defined as 1.0, recall 0
    assert m.precision_recall_at(scores, labels, 2.0) == (1.0, 0.0)
    # threshold equal to a score accepts it
    assert m.precision_recall_at(scores, labels, 0.4) == pytest.approx((3 / 4, 1.0))


def test_best_accuracy_threshold_brute_force() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = 40
        labels = rng.random(n) < 0.5
        labels[:2] = [True, False]
        scores = np.round(rng.normal(labels * 1.0, 1.0), 1)
        thr = m.best_accuracy_threshold(scores, labels)
        candidates = np.r_[np.unique(scores), np.inf]
        best = max(m.accuracy_at(scores, labels, c) for c in candidates)
        assert m.accuracy_at(scores, labels, thr) == pytest.approx(best)


def test_best_accuracy_threshold_is_midpoint() -> None:
    thr = m.best_accuracy_threshold([0.9, 0.7, 0.3, 0.1], [1, 1, 0, 0])
    assert thr == pytest.approx(0.5)


# ------------------------------------------------------------------------------- k-fold / LFW


def test_lfw_folds_layout() -> None:
    labels = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    folds = m.lfw_folds(labels, n_folds=10)
    np.testing.assert_array_equal(folds[:30], np.repeat(np.arange(10), 3))
    np.testing.assert_array_equal(folds[30:], np.repeat(np.arange(10), 3))
    # interleaved labels: chunks follow each class's own order
    labels = np.tile([True, False], 6)
    folds = m.lfw_folds(labels, n_folds=3)
    np.testing.assert_array_equal(folds[labels], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(folds[~labels], [0, 0, 1, 1, 2, 2])
    with pytest.raises(DataError):
        m.lfw_folds(np.r_[np.ones(5, bool), np.zeros(20, bool)], n_folds=10)
    with pytest.raises(UsageError):
        m.lfw_folds(labels, n_folds=1)


def test_kfold_separable_is_perfect() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    scores = np.where(labels, rng.uniform(0.6, 1.0, 600), rng.uniform(0.0, 0.4, 600))
    result = m.kfold_accuracy(scores, labels, m.lfw_folds(labels))
    assert result["accuracy"] == 1.0
    assert result["accuracy_std"] == 0.0
    assert result["fold_accuracies"] == [1.0] * 10
    assert len(result["thresholds"]) == 10
    assert all(0.4 < t <= 0.6 for t in result["thresholds"])
    json.dumps(result)


def test_kfold_uses_other_folds_only() -> None:
    # fold 0 and fold 1 disagree on the threshold; each is scored with the other's
    scores = np.array([0.9, 0.5, 0.4, 0.1, 0.9, 0.7, 0.6, 0.1])
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = m.kfold_accuracy(scores, labels, folds)
    # fold 1 picks 0.65 -> on fold 0 the 0.5 positive is rejected: 3/4
    # fold 0 picks 0.45 -> on fold 1 the 0.6 negative is accepted: 3/4
    assert result["thresholds"] == pytest.approx([0.65, 0.45])
    assert result["fold_accuracies"] == pytest.approx([0.75, 0.75])


def test_kfold_rejects_bad_folds() -> None:
    with pytest.raises(DataError):
        m.kfold_accuracy([0.1, 0.9], [0, 1], [0, 0])
    with pytest.raises(DataError):
        m.kfold_accuracy([0.1, 0.9, 0.5], [0, 1, 1], [0, 1])
    with pytest.raises(DataError, match="fold"):
        # the training side of fold 0 has no negatives
        m.kfold_accuracy([0.1, 0.9, 0.8], [0, 1, 1], [0, 1, 1])


# -------------------------------------------------------------------------------- N-way one-shot


def _identities(n_ids: int, per_id: int) -> np.ndarray:
    return np.repeat(np.arange(n_ids), per_id)


def test_n_way_perfect_scorer() -> None:
    ids = _identities(30, 3)

    def perfect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        assert a.shape == b.shape == (20,)
        assert np.all(a != b)  # the true support is a different image
        return (ids[a] == ids[b]).astype(float)

    assert m.n_way_one_shot(ids, perfect, n_way=20, trials=200) == 1.0


def test_n_way_trial_structure() -> None:
    ids = np.array(["ann"] * 2 + [f"p{i}" for i in range(10)])  # only "ann" has 2 images
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def record(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        seen.append((a.copy(), b.copy()))
        return np.zeros(a.size)

    # constant scores are ties -> always wrong
    assert m.n_way_one_shot(ids, record, n_way=5, trials=50) == 0.0
    for a, b in seen:
        assert len(set(a)) == 1 and ids[a[0]] == "ann"
        assert ids[b[0]] == "ann" and b[0] != a[0]
        others = ids[b[1:]]
        assert len(set(others)) == 4 and "ann" not in set(others)


def test_n_way_random_scorer_is_chance() -> None:
    ids = _identities(40, 4)
    rng = np.random.default_rng(123)

    def random_scorer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return rng.random(a.size)

    acc = m.n_way_one_shot(ids, random_scorer, n_way=5, trials=4000, seed=1)
    assert acc == pytest.approx(1 / 5, abs=0.03)


def test_n_way_is_seeded() -> None:
    ids = _identities(25, 2)

    def noisy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (ids[a] == ids[b]) * 0.5 + np.sin(a * 7.0 + b * 13.0)

    first = m.n_way_one_shot(ids, noisy, n_way=10, trials=100, seed=3)
    assert first == m.n_way_one_shot(ids, noisy, n_way=10, trials=100, seed=3)
    perfect = m.n_way_one_shot(ids, lambda a, b: (ids[a] == ids[b]) * 1.0, n_way=10,
                               trials=100, seed=3)
    assert perfect == 1.0
    assert 0.2 < first < perfect  # far above chance (1 in 10), below a perfect scorer


def test_n_way_impossible_and_bad_scorer() -> None:
    assert m.n_way_one_shot(_identities(10, 3), lambda a, b: a * 0.0, n_way=20) is None
    assert m.n_way_one_shot(np.arange(30), lambda a, b: a * 0.0, n_way=20) is None
    with pytest.raises(DataError):
        m.n_way_one_shot(_identities(30, 2), lambda a, b: np.zeros(3), n_way=20, trials=1)
    with pytest.raises(UsageError):
        m.n_way_one_shot(_identities(30, 2), lambda a, b: a * 0.0, n_way=1)


# ------------------------------------------------------------------------------------- reports


def test_calibrate_and_summarize(gaussian_pairs: tuple[np.ndarray, np.ndarray]) -> None:
    scores, labels = gaussian_pairs
    cal = m.calibrate_thresholds(scores, labels)
    assert set(cal) == {"1e-02", "1e-03", "1e-04", "eer"}
    assert cal["1e-04"] > cal["1e-03"] > cal["1e-02"] > cal["eer"]
    for key in ("1e-02", "1e-03", "1e-04"):
        assert _far(scores, labels, cal[key]) <= float(key)

    summary = m.summarize(scores, labels, threshold=cal["1e-02"])
    assert summary["n_pairs"] == 40_000
    assert summary["n_same"] == summary["n_different"] == 20_000
    assert summary["auc"] == pytest.approx(m.roc_auc(scores, labels))
    assert summary["eer_threshold"] == cal["eer"]
    assert set(summary["tar_at_far"]) == {"1e-02", "1e-03", "1e-04"}
    assert summary["recall"] == pytest.approx(summary["tar_at_far"]["1e-02"])
    assert summary["threshold"] == cal["1e-02"]
    accepted = scores >= cal["1e-02"]
    assert summary["precision"] == pytest.approx(labels[accepted].mean())
    text = json.dumps(summary)
    assert json.loads(text)["n_pairs"] == 40_000
    for key, value in summary.items():
        if key != "tar_at_far":
            assert type(value) in (int, float), key
    assert "threshold" not in m.summarize(scores, labels)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2, 0.3], [0, 1], "length"),
        ([[0.1, 0.2]], [[0, 1]], "1-D"),
        ([0.1, 0.2], [1, 1], "different"),
        ([0.1, 0.2], [0, 0], "same"),
        ([], [], "same"),
        ([0.1, float("nan")], [0, 1], "finite"),
        ([0.1, float("inf")], [0, 1], "finite"),
        ([0.1, 0.2], [0, 2], "0/1"),
        (["a", "b"], [0, 1], "float"),
    ],
)
def test_bad_input_raises_data_error(scores: object, labels: object, match: str) -> None:
    for fn in (m.roc_curve, m.roc_auc, m.equal_error_rate, m.summarize, m.calibrate_thresholds):
        with pytest.raises(DataError, match=match):
            fn(scores, labels)
    with pytest.raises(DataError, match=match):
        m.threshold_at_far(scores, labels, 0.5)
    with pytest.raises(DataError, match=match):
        m.accuracy_at(scores, labels, 0.5)


def test_data_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        m.roc_auc([0.1], [1])
