"""Embeddings and pair scores from a Keras tower, post-processed exactly as on the device."""

from __future__ import annotations

import keras
import numpy as np

from twinlock.daemon.faces.align import to_model_input
from twinlock.daemon.recognition.scoring import l1_pair_scores, postprocess_embeddings, unit


def keras_embed(
    tower: keras.Model,
    crops: np.ndarray,
    channels: int,
    flip_average: bool,
    l2_normalize: bool,
    batch_size: int = 256,
) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB crops -> (N, D) float32, the same maths as FaceEmbedder.embed."""
    x = to_model_input(crops, channels).astype(np.float32)
    plain = tower.predict(x, batch_size=batch_size, verbose=0)
    flipped = tower.predict(x[:, :, ::-1], batch_size=batch_size, verbose=0) if flip_average \
        else None
    return postprocess_embeddings(plain, flipped, l2_normalize)


def cosine_pair_scores(emb: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Similarity in [0, 1] from unit-length embeddings, for towers that have no head yet."""
    a, b = unit(emb[ia], axis=1), unit(emb[ib], axis=1)
    return ((a * b).sum(1) + 1.0) / 2.0


def head_pair_scores(emb: np.ndarray, ia: np.ndarray, ib: np.ndarray, weights: np.ndarray,
                     bias: float) -> np.ndarray:
    return l1_pair_scores(emb[ia], emb[ib], weights, bias)
