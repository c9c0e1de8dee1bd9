"""The twin's head on frozen embeddings: fitted by logistic regression, then made honest."""

from __future__ import annotations

import numpy as np

from twinlock.daemon.recognition.scoring import l1_pair_scores
from twinlock.trainer.stats import metrics
from twinlock.trainer.training.head import fit_l1_head, temperature_scale


def _clusters(rng: np.random.Generator, people: int, per: int, spread: float) -> tuple:
    centres = rng.normal(size=(people, 16))
    labels = np.repeat(np.arange(people), per)
    emb = centres[labels] + spread * rng.normal(size=(len(labels), 16))
    return emb.astype(np.float32), labels


def test_fitted_head_separates_people_it_never_saw() -> None:
    rng = np.random.default_rng(0)
    emb, labels = _clusters(rng, 40, 5, 0.3)
    w, b = fit_l1_head(emb, labels, rng, n_pairs=4000)
    assert w.shape == (16,) and np.all(np.isfinite(w))
    new_emb, new_labels = _clusters(np.random.default_rng(1), 20, 4, 0.3)
    ia, ib = np.triu_indices(len(new_labels), 1)
    scores = l1_pair_scores(new_emb[ia], new_emb[ib], w, b)
    y = (new_labels[ia] == new_labels[ib]).astype(np.float32)
    assert metrics.roc_auc(scores, y) > 0.95
    assert scores[y == 1].mean() > 0.5 > scores[y == 0].mean()  # label 1 = same person


def test_temperature_scaling_tames_an_overconfident_head_without_reranking() -> None:
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(500), np.zeros(5000)]
    honest = np.where(y == 1, rng.normal(1.0, 1.0, len(y)), rng.normal(-1.0, 1.0, len(y)))
    logits = 40.0 * honest  # a head 40 times too sure of itself: scores saturate at 0 and 1
    w, b = np.array([40.0], np.float32), 0.0
    w2, b2 = temperature_scale(w, b, logits, y)
    slope = float(w2[0] / w[0])
    assert 0.5 / 40 < slope < 2.0 / 40  # recovers roughly the honest scale (about 1/40 * 2)
    after = 1 / (1 + np.exp(-(slope * logits + b2)))
    # the ranking of the honest logits survives (the saturated original had lost it to ties)
    assert abs(metrics.roc_auc(after, y) - metrics.roc_auc(honest, y)) < 1e-9
    _, eer_threshold = metrics.equal_error_rate(after, y)
    assert 0.3 < eer_threshold < 0.7  # balanced prior: the EER point sits near p = 0.5
