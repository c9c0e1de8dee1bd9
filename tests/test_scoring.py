"""Tests for twinlock.daemon.recognition.scoring: the twin network's L1 head and embedding post-processing.

The daemon scores in numpy what the trainer's Keras head computes; these checks pin the maths
against direct, one-anchor-at-a-time computations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from twinlock.daemon.recognition.scoring import (
    l1_head_scores,
    l1_pair_scores,
    postprocess_embeddings,
    unit,
)


def direct_score(a: np.ndarray, b: np.ndarray, weights: np.ndarray, bias: float) -> float:
    """sigmoid(w . |a - b| + b), element by element in plain Python floats."""
    logit = sum(float(w) * abs(float(x) - float(y)) for w, x, y in zip(weights, a, b, strict=True))
    return 1.0 / (1.0 + math.exp(-(logit + bias)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_l1_head_scores_match_per_anchor_computation(rng: np.random.Generator) -> None:
    dim, anchors_n = 16, 9
    probe = rng.normal(size=dim).astype(np.float32)
    anchors = rng.normal(size=(anchors_n, dim)).astype(np.float32)
    weights = rng.normal(scale=0.3, size=dim).astype(np.float32)
    bias = -0.8
    scores = l1_head_scores(probe, anchors, weights, bias)
    assert scores.shape == (anchors_n,) and scores.dtype == np.float32
    expected = [direct_score(probe, anchor, weights, bias) for anchor in anchors]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(scores, 6))) == anchors_n  # really different per anchor


def test_l1_head_scores_ordering_and_extremes(rng: np.random.Generator) -> None:
    """Identical embeddings score sigmoid(bias); with positive weights, farther means lower."""
    dim = 8
    probe = rng.normal(size=dim).astype(np.float32)
    weights = -np.abs(rng.normal(size=dim)).astype(np.float32)  # trained heads: distance lowers
    anchors = np.stack([probe, probe + 0.1, probe + 1.0, probe + 1e6]).astype(np.float32)
    scores = l1_head_scores(probe, anchors, weights, 2.0)
    assert scores[0] == pytest.approx(1.0 / (1.0 + math.exp(-2.0)), rel=1e-6)
    assert scores[0] > scores[1] > scores[2] > scores[3]
    assert np.isfinite(scores).all() and scores[3] >= 0.0  # huge distances: no overflow warning


def test_l1_head_scores_single_anchor(rng: np.random.Generator) -> None:
    probe = rng.normal(size=4).astype(np.float32)
    anchors = rng.normal(size=(1, 4)).astype(np.float32)
    weights = np.ones(4, np.float32)
    (score,) = l1_head_scores(probe, anchors, weights, 0.0)
    assert score == pytest.approx(direct_score(probe, anchors[0], weights, 0.0), rel=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 7, 50, 1000])
def test_l1_pair_scores_chunking_is_invisible(rng: np.random.Generator, chunk: int) -> None:
    n, dim = 50, 12
    a = rng.normal(size=(n, dim)).astype(np.float32)
    b = rng.normal(size=(n, dim)).astype(np.float32)
    weights = rng.normal(scale=0.5, size=dim).astype(np.float32)
    bias = 0.25
    unchunked = 1.0 / (1.0 + np.exp(-(np.abs(a - b) @ weights + bias)))
    scores = l1_pair_scores(a, b, weights, bias, chunk=chunk)
    assert scores.shape == (n,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, unchunked, rtol=1e-6, atol=1e-7)
    # the same as the default (one chunk here) up to float32 rounding: BLAS sums blocks of
    # different sizes in different orders, so the last bits may differ, never more
    whole = l1_pair_scores(a, b, weights, bias)
    np.testing.assert_allclose(scores, whole, rtol=1e-6, atol=0)
    # and pair i is scored against pair i only
    for i in (0, n // 2, n - 1):
        assert scores[i] == pytest.approx(direct_score(a[i], b[i], weights, bias), rel=1e-5)


def test_l1_pair_scores_empty() -> None:
    empty = np.zeros((0, 4), np.float32)
    assert l1_pair_scores(empty, empty, np.ones(4, np.float32), 0.0).shape == (0,)


def test_l1_pair_and_head_agree(rng: np.random.Generator) -> None:
    probe = rng.normal(size=6).astype(np.float32)
    anchors = rng.normal(size=(5, 6)).astype(np.float32)
    weights = rng.normal(size=6).astype(np.float32)
    np.testing.assert_allclose(
        l1_pair_scores(np.repeat(probe[None], 5, axis=0), anchors, weights, 0.1, chunk=2),
        l1_head_scores(probe, anchors, weights, 0.1),
        rtol=1e-6,
    )


def test_postprocess_flip_average(rng: np.random.Generator) -> None:
    plain = rng.normal(size=(3, 5)).astype(np.float32)
    flipped = rng.normal(size=(3, 5)).astype(np.float32)
    out = postprocess_embeddings(plain, flipped, l2_normalize=False)
    assert out.dtype == np.float32 and out.shape == (3, 5)
    np.testing.assert_allclose(out, (plain + flipped) / 2, rtol=1e-6)
    # without a flipped copy the embeddings pass through unchanged
    np.testing.assert_array_equal(postprocess_embeddings(plain, None, False), plain)


def test_postprocess_l2_normalise(rng: np.random.Generator) -> None:
    plain = rng.normal(scale=10.0, size=(4, 8)).astype(np.float32)
    out = postprocess_embeddings(plain, None, l2_normalize=True)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    # direction is kept: each row is a positive multiple of the input
    for row_in, row_out in zip(plain, out, strict=True):
        np.testing.assert_allclose(row_out, row_in / np.linalg.norm(row_in), rtol=1e-5)


def test_postprocess_flip_then_normalise(rng: np.random.Generator) -> None:
    """Average first, then normalise (normalising each copy first gives a different vector)."""
    plain = rng.normal(size=(2, 6)).astype(np.float32)
    flipped = 3.0 * rng.normal(size=(2, 6)).astype(np.float32)
    out = postprocess_embeddings(plain, flipped, l2_normalize=True)
    mean = (plain + flipped) / 2
    np.testing.assert_allclose(out, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-5)


def test_postprocess_zero_vector_stays_finite() -> None:
    out = postprocess_embeddings(np.zeros((2, 4), np.float32), None, l2_normalize=True)
    assert np.isfinite(out).all() and (out == 0).all()


def test_postprocess_single_embedding(rng: np.random.Generator) -> None:
    vector = rng.normal(size=5).astype(np.float32)
    out = postprocess_embeddings(vector, vector[::-1].copy(), l2_normalize=True)
    assert out.shape == (5,)
    assert np.linalg.norm(out) == pytest.approx(1.0, rel=1e-6)


def test_unit_along_either_axis(rng: np.random.Generator) -> None:
    """Rows (embeddings) and columns (CosFace's class centres) both come out unit length, and a
    zero vector stays zero: the one normalisation the door and the trainer share."""
    vectors = rng.normal(size=(3, 6)).astype(np.float32)
    vectors[1] = 0.0
    rows = unit(vectors, axis=1)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), [1.0, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(rows[2], vectors[2] / np.linalg.norm(vectors[2]), rtol=1e-6)
    columns = unit(vectors, axis=0)
    np.testing.assert_allclose(np.linalg.norm(columns, axis=0), np.ones(6), rtol=1e-6)
    np.testing.assert_allclose(unit(vectors[0]), rows[0], rtol=1e-6)
