"""Landmarks -> similarity transform onto a canonical template -> square uint8 crop.

This is THE preprocessing of TwinLock: the trainer builds its crops with it and the daemon uses
it on every frame, so a model always sees faces exactly as it was trained on them.
"""

from __future__ import annotations

import cv2
import numpy as np

from .types import Face

#: the widely used ArcFace 112x112 five-point template (eyes, nose, mouth corners) reduced to our
#: four points (mouth corners averaged) and expressed in [0, 1] crop coordinates.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [56.1396, 92.2848]],
    dtype=np.float64,
) / 112.0


def template_points(zoom: float = 1.0) -> np.ndarray:
    """Template in [0, 1]. ``zoom`` < 1 shrinks the face around the centre to keep more context."""
    return 0.5 + (ARCFACE_TEMPLATE - 0.5) * zoom


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's closed form: deterministic, unlike OpenCV's RANSAC-based estimators.
    Returns a 2x3 matrix for ``cv2.warpAffine``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var_s = (s ** 2).sum() / len(src)
    scale = np.trace(np.diag(sig) @ sign) / var_s if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def align_face(image: np.ndarray, face: Face, size: int, zoom: float = 1.0) -> np.ndarray:
    """Warp ``image`` (uint8 RGB) so the face's landmarks land on the template; size x size x 3."""
    matrix = similarity_transform(face.landmarks, template_points(zoom) * size)
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def to_model_input(crops: np.ndarray, channels: int) -> np.ndarray:
    """RGB crops (N, S, S, 3) or (S, S, 3) -> the model's pixel format (grey when channels == 1)."""
    if channels == 3:
        return crops
    if channels != 1:
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as cv2 does
    grey = np.rint(crops.astype(np.float32) @ weights)
    return np.clip(grey, 0, 255).astype(np.uint8)[..., None]
