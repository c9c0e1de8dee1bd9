"""YuNet face detection through OpenCV's ``cv2.FaceDetectorYN`` (needs a model file path).

YuNet is more robust than BlazeFace to small and turned faces. The ONNX file is not shipped with
TwinLock: the user configures a path (tests use ``../shared/data/face_detection_yunet``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from ..errors import DetectorError
from .types import Face

logger = logging.getLogger(__name__)


class YuNetDetector:
    """Detect faces with landmarks in a uint8 RGB image."""

    def __init__(
        self,
        model_path: str | Path,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        top_k: int = 50,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise DetectorError(f"YuNet model not found: {path}")
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), score_threshold, nms_threshold, top_k
            )
        except cv2.error as exc:
            raise DetectorError(f"{path}: OpenCV cannot load this YuNet model: {exc}") from exc
        self.model_path = path
        self._input_size: tuple[int, int] = (320, 320)

    @property
    def name(self) -> str:
        return "yunet"

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image`` (uint8 RGB, H x W x 3), best score first."""
        h, w = image.shape[:2]
        if (w, h) != self._input_size:
            self._net.setInputSize((w, h))
            self._input_size = (w, h)
        _, rows = self._net.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if rows is None:
            return []
        faces = []
        for row in rows:
            pts = row[4:14].reshape(5, 2)
            # YuNet: right eye (image left), left eye, nose tip, right and left mouth corners
            landmarks = np.stack([pts[0], pts[1], pts[2], (pts[3] + pts[4]) / 2]).astype(np.float32)
            faces.append(Face(
                box=(float(row[0]), float(row[1]), float(row[2]), float(row[3])),
                landmarks=landmarks,
                score=float(row[14]),
            ))
        faces.sort(key=lambda f: -f.score)
        return faces
