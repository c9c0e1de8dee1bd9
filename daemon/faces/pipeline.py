"""Detector choice and the one detect -> select -> align path used by trainer and daemon."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from ..errors import UsageError
from .align import DEFAULT_TEMPLATE, align_face
from .types import Face

logger = logging.getLogger(__name__)

SelectPolicy = Literal["largest", "center"]

#: BlazeFace's standard file per variant (blazeface.VARIANTS; that module needs LiteRT and cv2)
_BLAZEFACE_FILES = {"short": "face_detection_short_range.tflite",
                    "full": "face_detection_full_range.tflite"}

#: score thresholds that work for each detector (YuNet's from the OpenCV zoo's examples)
DEFAULT_SCORE: dict[str, float] = {"blazeface": 0.5, "yunet": 0.7}


class Detector(Protocol):
    @property
    def name(self) -> str: ...

    def detect(self, image: np.ndarray) -> list[Face]: ...


@dataclass(frozen=True)
class DetectorSpec:
    """How to build a detector; part of a model's metadata so the daemon detects as trained."""

    type: Literal["blazeface", "yunet"] = "blazeface"
    variant: str = "short"  # BlazeFace only: "short" (door distance) or "full"
    model_path: str | None = None  # required for YuNet; optional override for BlazeFace
    score_threshold: float | None = None  # None: the detector's own default (see DEFAULT_SCORE)

    @property
    def threshold(self) -> float:
        return DEFAULT_SCORE.get(self.type, 0.5) if self.score_threshold is None else self.score_threshold

    def build(self, num_threads: int = 1) -> Detector:
        """The detector this spec names, through :data:`DETECTORS` (keyed by ``type``)."""
        builder = DETECTORS.get(self.type)
        if builder is None:
            raise UsageError(f"unknown detector type {self.type!r}; use "
                             f"{' or '.join(repr(name) for name in DETECTORS)}")
        return builder(self, num_threads)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """A short stable text identifying this detector setup (cache keys, logs)."""
        model = Path(self.model_path).name if self.model_path else "bundled"
        if self.type == "blazeface" and model == _BLAZEFACE_FILES.get(self.variant):
            model = "bundled"  # the standard file, in a model folder or installed
        variant = f":{self.variant}" if self.type == "blazeface" else ""
        return f"{self.type}{variant}:{model}:{self.threshold:g}"


def _blazeface(spec: DetectorSpec, num_threads: int) -> Detector:
    from .blazeface import BlazeFaceDetector  # needs LiteRT: imported only when chosen

    return BlazeFaceDetector(spec.variant, spec.model_path, spec.threshold,
                             num_threads=num_threads)


def _yunet(spec: DetectorSpec, num_threads: int) -> Detector:
    if not spec.model_path:
        raise UsageError("the YuNet detector needs a model path (detector.model_path)")
    from .yunet import YuNetDetector

    return YuNetDetector(spec.model_path, spec.threshold)


#: detector ``type`` -> a builder taking the spec and the thread count; a new detector is a
#: module of its own and one line here
DETECTORS: dict[str, Callable[[DetectorSpec, int], Detector]] = {
    "blazeface": _blazeface, "yunet": _yunet,
}


@dataclass(frozen=True)
class AlignedFace:
    face: Face
    crop: np.ndarray  # uint8 RGB, size x size x 3


def select_face(faces: list[Face], image_shape: tuple[int, ...], policy: SelectPolicy) -> Face:
    """The face to use when several are found: the largest, or the one nearest the centre
    (datasets such as LFW centre the labelled person)."""
    if policy == "largest":
        return max(faces, key=lambda f: f.size)
    cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
    return min(faces, key=lambda f: (f.center[0] - cx) ** 2 + (f.center[1] - cy) ** 2)


def detect_one(detector: Detector, image: np.ndarray,
               policy: SelectPolicy = "largest") -> tuple[Face | None, int]:
    """(the face ``policy`` chooses, or None; the number of faces found): detect, then select.
    The door's pipeline, the trainer's canvases and its teacher all find their face here, so a
    training crop comes from the face the door would have chosen."""
    found = detector.detect(image)
    if not found:
        return None, 0
    return select_face(found, image.shape, policy), len(found)


class FacePipeline:
    """Find faces in an RGB image and return aligned crops at the model's input size."""

    def __init__(self, detector: Detector, crop_size: int, zoom: float = 1.0,
                 template: str = DEFAULT_TEMPLATE) -> None:
        self.detector = detector
        self.crop_size = crop_size
        self.zoom = zoom
        self.template = template

    def align(self, image: np.ndarray, face: Face) -> AlignedFace:
        return AlignedFace(face, align_face(image, face, self.crop_size, self.zoom, self.template))

    def faces(self, image: np.ndarray) -> list[AlignedFace]:
        """Every detected face, aligned, best detection score first."""
        return [self.align(image, face) for face in self.detector.detect(image)]

    def primary(
        self, image: np.ndarray, policy: SelectPolicy = "largest"
    ) -> tuple[AlignedFace | None, int]:
        """(the chosen face aligned or None, number of faces found)."""
        face, found = detect_one(self.detector, image, policy)
        return (None, 0) if face is None else (self.align(image, face), found)
