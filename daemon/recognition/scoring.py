"""The twin network's head in numpy: ``sigmoid(w . |e_probe - e_anchor| + b)``.

Running the head outside the model means one tower run per face, however many anchors are
enrolled: a frame is scored against every anchor with one matrix-vector product.
"""

from __future__ import annotations

import numpy as np


def l1_head_scores(
    probe: np.ndarray, anchors: np.ndarray, weights: np.ndarray, bias: float
) -> np.ndarray:
    """Same-person probability of ``probe`` (D,) against each row of ``anchors`` (N, D)."""
    logits = np.abs(anchors - probe[None, :]) @ weights + bias
    return _sigmoid(logits)


def l1_head_matrix(
    probes: np.ndarray, anchors: np.ndarray, weights: np.ndarray, bias: float, chunk: int = 64
) -> np.ndarray:
    """Same-person probability of every probe (N, D) against every anchor (A, D): (N, A).
    Row by row the same numbers as ``l1_head_scores``; for host-side door evaluation."""
    out = np.empty((len(probes), len(anchors)), dtype=np.float32)
    for start in range(0, len(probes), chunk):
        block = probes[start:start + chunk]
        out[start:start + chunk] = _sigmoid(np.abs(anchors[None] - block[:, None]) @ weights
                                            + bias)
    return out


def l1_pair_scores(
    a: np.ndarray, b: np.ndarray, weights: np.ndarray, bias: float, chunk: int = 65536
) -> np.ndarray:
    """Same-person probability for each row pair of ``a`` and ``b`` (N, D); memory-bounded."""
    out = np.empty(len(a), dtype=np.float32)
    for start in range(0, len(a), chunk):
        stop = start + chunk
        out[start:stop] = _sigmoid(np.abs(a[start:stop] - b[start:stop]) @ weights + bias)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))).astype(np.float32)


def unit(vectors: np.ndarray, axis: int = -1) -> np.ndarray:
    """``vectors`` scaled to unit length along ``axis`` (a zero vector stays zero): the one
    normalisation of embeddings, anchors and centres, on the door and in the trainer."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=axis, keepdims=True), 1e-12)


def postprocess_embeddings(
    embeddings: np.ndarray, flipped: np.ndarray | None, l2_normalize: bool
) -> np.ndarray:
    """Combine the tower's outputs into the embedding that gets scored.

    With test-time flip the embeddings of a crop and its mirror image are averaged; with
    ``l2_normalize`` the result is scaled to unit length (for towers trained with a cosine loss).
    Trainer and daemon both call this so the head sees the same numbers on both sides.
    """
    out = embeddings if flipped is None else (embeddings + flipped) / 2.0
    if l2_normalize:
        out = unit(out)
    return out.astype(np.float32, copy=False)
