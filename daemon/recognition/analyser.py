"""The one path a picture takes to a verdict: detect -> select -> quality -> align -> embed -> verify.

The door (``twinlockd run``), ``twinlockd verify``, enrolment, the door-level evaluation and the
benchmarks all call :class:`FrameAnalyser`, so what is timed and measured is what the door runs.
The order matters: the quality gate comes before the model's warp, so a rejected face costs no
alignment and no tower run, and the face is aligned once, at the model's own crop size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ..faces import quality as q
from ..faces.mesh import FaceMesh, Mesh
from ..faces.pipeline import FacePipeline, SelectPolicy, select_face
from ..faces.types import Face
from .model import FaceEmbedder
from .verify import FrameVerdict, Verifier

#: what to do when a picture shows several faces: use the largest, the one nearest the centre
#: (datasets centre the labelled person), check each one, or reject the picture. With "each"
#: every face gets an observation, a quality-refused one included, because the door opens only
#: when every face in view is the verified resident (``door.machine.vetoed``)
MultipleFaces = Literal["largest", "center", "each", "reject"]


@dataclass(frozen=True)
class Rejected:
    """A face (or a picture, ``face`` None, for several faces) that was not scored, and why."""

    face: Face | None
    reason: str  # a quality reason of daemon.faces.quality (too_small, several_faces, ...)
    measures: q.QualityMeasures | None = None


@dataclass(frozen=True)
class Scored:
    """A face that passed the quality gate: its crop, embedding and (with a gallery) verdict."""

    face: Face
    measures: q.QualityMeasures
    crop: np.ndarray  # uint8 RGB at the model's input size
    embedding: np.ndarray  # (D,) float32, post-processed as the model asks
    verdict: FrameVerdict | None = None  # None when the analyser has no gallery (enrolment)
    mesh: Mesh | None = None  # the face mesh, for a verified face when liveness asks for it

    @property
    def evidence(self) -> tuple[bytes, bytes]:
        """Digests of the crop and of the embedding: equal only for identical content, so a
        frozen or replayed picture is recognised as no new evidence (AgreementWindow)."""
        return _digest(self.crop), _digest(self.embedding)


Observation = Rejected | Scored


@dataclass(frozen=True)
class Analysis:
    """What one picture showed: how many faces were found and one observation per face used."""

    faces_found: int
    observations: tuple[Observation, ...]

    @property
    def scored(self) -> list[Scored]:
        return [o for o in self.observations if isinstance(o, Scored)]


class FrameAnalyser:
    """Turns a picture into observations with the model's detector, crop, tower and gallery."""

    def __init__(self, pipeline: FacePipeline, embedder: FaceEmbedder,
                 thresholds: q.QualityThresholds = q.DEFAULT_THRESHOLDS,
                 verifier: Verifier | None = None, multiple: MultipleFaces = "largest",
                 mesh: FaceMesh | None = None) -> None:
        self.pipeline, self.embedder, self.verifier = pipeline, embedder, verifier
        self.thresholds, self.multiple, self.mesh = thresholds, multiple, mesh

    def analyse(self, image: np.ndarray, detect_input: np.ndarray | None = None,
                to_image: Callable[[Face], Face] | None = None,
                want_mesh: bool = False, track: bool = False) -> Analysis:
        """Observations for ``image`` (uint8 RGB or grey).

        ``detect_input``: a smaller picture of the same scene to detect on (a camera's detect
        stream) and ``to_image`` the map of its faces to ``image``'s pixels. ``want_mesh``: run
        the face mesh on faces that verified a resident (liveness evidence), and on no other;
        ``track``: also on the other faces past the quality gate (a resident verified in the open
        attempt: the motion check follows the face from frame to frame, not only across the
        frames that verified).
        """
        found = self.pipeline.detector.detect(image if detect_input is None else detect_input)
        if to_image is not None:
            found = [to_image(face) for face in found]
        if not found:
            return Analysis(0, ())
        if len(found) > 1 and self.multiple == "reject":
            return Analysis(len(found), (Rejected(None, q.SEVERAL_FACES),))
        if self.multiple == "each":
            chosen = found
        else:
            policy: SelectPolicy = "center" if self.multiple == "center" else "largest"
            chosen = [select_face(found, image.shape, policy)]
        observations = tuple(self.observe(image, face, want_mesh) for face in chosen)
        if track and self.mesh is not None:
            observations = tuple(
                replace(o, mesh=self.mesh.landmarks(image, o.face))
                if isinstance(o, Scored) and o.mesh is None else o for o in observations)
        return Analysis(len(found), observations)

    def observe(self, image: np.ndarray, face: Face, want_mesh: bool = False) -> Observation:
        """One face: the quality gate first, then (only if it passes) the model's path."""
        measures = q.measure_image(image, face)
        problem = q.first_problem(measures, self.thresholds)
        if problem is not None:
            return Rejected(face, problem, measures)
        return self.score(image, face, measures, want_mesh)

    def score(self, image: np.ndarray, face: Face, measures: q.QualityMeasures | None = None,
              want_mesh: bool = False) -> Scored:
        """Align once, embed and verify ``face`` whatever its quality (``twinlockd verify``
        shows the score of a face the door would reject; the door itself calls ``observe``)."""
        crop = self.pipeline.align(image, face).crop
        embedding = self.embedder.embed(crop)[0]
        verdict = self.verifier.verify(embedding) if self.verifier is not None else None
        mesh = None
        if want_mesh and self.mesh is not None and verdict is not None and verdict.user:
            mesh = self.mesh.landmarks(image, face)
        return Scored(face, measures or q.measure_image(image, face), crop, embedding, verdict,
                      mesh)


def _digest(array: np.ndarray) -> bytes:
    """Content digest of a crop or an embedding: equal only for identical values."""
    data = np.ascontiguousarray(array)
    return hashlib.blake2b(str((data.dtype, data.shape)).encode() + data.tobytes(),
                           digest_size=16).digest()
