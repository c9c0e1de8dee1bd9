"""Fitting the twin's head, ``sigmoid(w . |e_a - e_b| + b)``, on a frozen tower's embeddings.

Towers trained with contrastive, triplet or identity (CosFace) losses have no head; the twin
trained with cross-entropy has one, but it saw embeddings without test-time flip averaging. Either
way the head the device uses is fitted here, on the exact embeddings the device computes, by
L2-regularised logistic regression solved with Newton's method (deterministic, no tuning).
"""

from __future__ import annotations

import logging

import numpy as np

from ..data.datasets import sample_pairs

logger = logging.getLogger(__name__)


def fit_l1_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    n_pairs: int = 20000,
    l2: float = 1e-4,
    iterations: int = 25,
) -> tuple[np.ndarray, float]:
    """Logistic regression of same/different on |e_a - e_b| over balanced random pairs."""
    dim = embeddings.shape[1]
    n_pairs = min(n_pairs, max(2000, 40_000_000 // max(dim, 1)))  # bound memory (~320 MB)
    ia, ib, y = sample_pairs(labels, n_pairs, rng)
    x = np.abs(embeddings[ia] - embeddings[ib]).astype(np.float64)
    # scale features so the Newton steps are well conditioned; folded back into w at the end
    scale = np.maximum(x.std(axis=0), 1e-8)
    x = np.hstack([x / scale, np.ones((len(x), 1))])
    y = y.astype(np.float64)
    w = np.zeros(dim + 1)
    reg = np.full(dim + 1, l2)
    reg[-1] = 0.0  # the bias is not regularised
    n = len(x)
    for step in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -40, 40)))
        grad = x.T @ (p - y) / n + reg * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / n + np.diag(reg + 1e-9)
        delta = np.linalg.solve(hess, grad)
        w -= delta
        if np.abs(delta).max() < 1e-6:
            break
    p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -40, 40)))
    loss = -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
    logger.info("head fitted on %d pairs in %d Newton steps, log-loss %.4f", n, step + 1, loss)
    return (w[:-1] / scale).astype(np.float32), float(w[-1])


def temperature_scale(
    weights: np.ndarray, bias: float, logits: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, float]:
    """Rescale a head so its scores are honest probabilities for people it never saw.

    A head fitted on training identities is over-confident on new faces (their embeddings were
    shaped by the very loss that separated the training people), which squeezes every score to
    0 or 1 and thresholds to 0.9999. Platt scaling on validation-identity pairs fits
    ``sigmoid(a * logit + c)`` with same/different weighted equally (a 50/50 prior), then folds
    ``a`` and ``c`` into the head. Ranking, and so AUC, is unchanged when ``a > 0``.
    """
    y = labels.astype(np.float64)
    sample_w = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))
    spread = max(float(np.std(logits)), 1e-6)
    x = np.stack([logits.astype(np.float64) / spread, np.ones(len(logits))], axis=1)

    def loss(params: np.ndarray) -> float:
        z = x @ params
        return float(np.sum(sample_w * (np.logaddexp(0, z) - y * z)))

    # Newton from zero (every p = 0.5: a well-conditioned start) with backtracking, so saturated
    # logits can never make a step explode.
    params = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ params, -40, 40)))
        grad = x.T @ (sample_w * (p - y))
        hess = (x * (sample_w * p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        current, scale = loss(params), 1.0
        while loss(params - scale * step) > current and scale > 1e-6:
            scale /= 2
        params -= scale * step
        if np.abs(scale * step).max() < 1e-9:
            break
    params[0] /= spread
    a, c = float(params[0]), float(params[1])
    if a <= 0:
        logger.warning("temperature scaling found no positive slope (a=%.3g); head left as is", a)
        return weights, bias
    logger.info("head temperature-scaled on %d validation pairs: slope %.3f, offset %.3f",
                len(y), a, c)
    return (weights * a).astype(np.float32), float(bias * a + c)
