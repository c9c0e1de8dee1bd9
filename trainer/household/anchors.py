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
from twinlock.daemon.recognition.analyser import FrameAnalyser, Rejected, Scored
from twinlock.daemon.recognition.model import FaceEmbedder

logger = logging.getLogger(__name__)

UNREADABLE = "unreadable"


@dataclass
class AnchorResult:
    anchors: np.ndarray  # (A, D) float32
    crops: list[np.ndarray] = field(default_factory=list)  # the aligned crops (for thumbnails)
    sources: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


def enrolment_analyser(pipeline: FacePipeline, embedder: FaceEmbedder,
                       thresholds: q.QualityThresholds) -> FrameAnalyser:
    """The door's frame analyser as enrolment uses it: a photo with several faces is refused
    (whose anchor would it be?)."""
    return FrameAnalyser(pipeline, embedder, thresholds, multiple="reject")


def enrolment_face(image: np.ndarray, analyser: FrameAnalyser) -> Scored | str:
    """The one good face of an enrolment photo (face, quality measures, crop, embedding), or
    the reason the photo is refused (no face, several faces, a quality reason)."""
    analysis = analyser.analyse(image)
    if not analysis.observations:
        return q.NO_FACE
    observation = analysis.observations[0]
    return observation.reason if isinstance(observation, Rejected) else observation


def anchor_from_image(image: np.ndarray, pipeline: FacePipeline, embedder: FaceEmbedder,
                      thresholds: q.QualityThresholds) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                str | None]:
    """(embedding, crop, None) for a usable photo with exactly one face, else (None, None, why)."""
    face = enrolment_face(image, enrolment_analyser(pipeline, embedder, thresholds))
    if isinstance(face, str):
        return None, None, face
    return face.embedding, face.crop, None


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
        assert embedding is not None and crop is not None  # no problem: a face was embedded
        embeddings.append(embedding)
        result.crops.append(crop)
        result.sources.append(Path(path).name)
    if embeddings:
        result.anchors = np.stack(embeddings).astype(np.float32)
    return result
