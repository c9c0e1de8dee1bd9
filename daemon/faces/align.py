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


#: dlib's face chip (``get_face_chip_details``: 150 px, padding 0.25) in our four points (eye
#: centres, nose tip, mouth centre): where BlazeFace's landmarks land, on average, in the chips
#: dlib cuts from its own 5-point landmarks, fitted on 500 LFW training faces and mirrored to be
#: left-right symmetric (``benchmarks/chip.py``). On 500 other faces the imported tower's
#: descriptor of our chip is 0.159 (mean Euclidean) from that of dlib's chip, against 0.194 for
#: the points of dlib's mean face shape (``../shared/notes/dlib-resnet.md`` section 4); dlib's
#: same-person threshold is 0.6.
DLIB_TEMPLATE = np.array(
    [[46.88, 47.11], [103.12, 47.11], [75.0, 78.66], [75.0, 108.39]], dtype=np.float64,
) / 150.0

#: every alignment a model can name in model.json (``alignment.template``)
TEMPLATES: dict[str, np.ndarray] = {"arcface-4pt": ARCFACE_TEMPLATE, "dlib-4pt": DLIB_TEMPLATE}
DEFAULT_TEMPLATE = "arcface-4pt"


def template_points(zoom: float = 1.0, template: str = DEFAULT_TEMPLATE) -> np.ndarray:
    """Template in [0, 1]. ``zoom`` < 1 shrinks the face around the centre to keep more context."""
    try:
        points = TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown alignment template {template!r}; "
                         f"known: {', '.join(TEMPLATES)}") from None
    return 0.5 + (points - 0.5) * zoom


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


def align_face(image: np.ndarray, face: Face, size: int, zoom: float = 1.0,
               template: str = DEFAULT_TEMPLATE) -> np.ndarray:
    """Warp ``image`` (uint8 RGB) so the face's landmarks land on the template; size x size x 3."""
    matrix = similarity_transform(face.landmarks, template_points(zoom, template) * size)
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
