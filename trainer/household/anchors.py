"""Photos of a person -> anchors (embeddings of good face crops), with a reason for every reject.

Enrolment on the host and ``twinlockd verify`` share this, so an anchor is made by exactly the
detector, alignment, quality gate and tower the door uses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twinlock.daemon.errors import DataError
from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.faces.pipeline import FacePipeline
from twinlock.daemon.recognition.model import FaceEmbedder

logger = logging.getLogger(__name__)

UNREADABLE = "unreadable"


@dataclass
class AnchorResult:
    anchors: np.ndarray  # (A, D) float32
    crops: list[np.ndarray] = field(default_factory=list)  # the aligned crops (for thumbnails)
    sources: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


def anchor_from_image(image: np.ndarray, pipeline: FacePipeline, embedder: FaceEmbedder,
                      thresholds: q.QualityThresholds) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                str | None]:
    """(embedding, crop, None) for a usable photo with exactly one face, else (None, None, why)."""
    faces = pipeline.detector.detect(image)
    problem = q.face_count_problem(len(faces))
    if problem is not None:
        return None, None, problem
    face = faces[0]
    problem = q.first_problem(q.measure_image(image, face), thresholds)
    if problem is not None:
        return None, None, problem
    crop = pipeline.align(image, face).crop
    return embedder.embed(crop)[0], crop, None


def anchors_from_files(paths: Sequence[Path], pipeline: FacePipeline, embedder: FaceEmbedder,
                       thresholds: q.QualityThresholds) -> AnchorResult:
    embeddings, result = [], AnchorResult(np.zeros((0, embedder.meta.embedding_dim), np.float32))
    for path in paths:
        try:
            image = load_image(path)
        except DataError as exc:
            result.rejected.append((str(path), UNREADABLE))
            logger.info("rejected %s: %s", path, exc)
            continue
        embedding, crop, problem = anchor_from_image(image, pipeline, embedder, thresholds)
        if problem is not None:
            result.rejected.append((str(path), problem))
            logger.info("rejected %s: %s", path, q.describe(problem))
            continue
        embeddings.append(embedding)
        result.crops.append(crop)
        result.sources.append(Path(path).name)
    if embeddings:
        result.anchors = np.stack(embeddings).astype(np.float32)
    return result
