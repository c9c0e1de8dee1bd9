"""An exported TwinLock model folder, loaded for inference on the device.

Layout written by ``twinlock export`` (see trainer/training/export.py)::

    MODEL_DIR/tower.tflite   the tower: uint8 crop in, embedding out (int8 or float32 inside)
    MODEL_DIR/model.json     input size, pixel format, alignment, detector, head weights,
                             calibrated thresholds, provenance and metrics
    MODEL_DIR/*.tflite       the detector (and face mesh) the model was made with: ``assets``
                             in model.json gives each one's sha256, size and licence notice;
                             the detector is loaded from here, checked (see faces/assets.py)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..faces.align import DEFAULT_TEMPLATE, TEMPLATES, to_model_input
from ..faces.assets import DETECTOR_ROLE, Asset, check_asset
from ..faces.pipeline import Detector, DetectorSpec, FacePipeline
from ..runtime import DEFAULT_CHAIN, TFLiteModel
from .scoring import l1_head_scores, l1_pair_scores, postprocess_embeddings
from .thresholds import DEFAULT_PAIR

logger = logging.getLogger(__name__)

__all__ = ["METADATA_FILE", "TOWER_FILE", "FaceEmbedder", "ModelMetadata", "read_metadata",
           "resolve_assets"]

MODEL_FORMAT = "twinlock-model"
MODEL_FORMAT_VERSION = 1
METADATA_FILE = "model.json"
TOWER_FILE = "tower.tflite"


@dataclass
class ModelMetadata:
    """Everything the device needs to use a tower exactly as the trainer meant it."""

    input_size: int
    channels: int
    embedding_dim: int
    head_weights: np.ndarray
    head_bias: float
    alignment_zoom: float = 1.0
    alignment_template: str = DEFAULT_TEMPLATE
    flip_average: bool = False
    l2_normalize: bool = False
    detector: DetectorSpec = field(default_factory=DetectorSpec)
    thresholds: dict[str, float] = field(default_factory=dict)
    default_threshold: str = DEFAULT_PAIR
    quantization: str = "int8"
    architecture: str = ""
    model_id: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: role ("detector", "face_mesh") -> a file in the model folder (faces/assets.py)
    assets: dict[str, Asset] = field(default_factory=dict)
    #: set by read_metadata: the folder the assets were checked in
    folder: Path | None = None

    def asset_path(self, role: str) -> Path | None:
        """The checked file for ``role`` in the model folder, or None when it carries none."""
        if self.folder is None or role not in self.assets:
            return None
        return self.folder / self.assets[role].file

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "model_id": self.model_id,
            "architecture": self.architecture,
            "quantization": self.quantization,
            "tower_file": TOWER_FILE,
            "input": {"size": self.input_size, "channels": self.channels, "dtype": "uint8"},
            "alignment": {"template": self.alignment_template, "zoom": self.alignment_zoom},
            # a detector resolved to this folder's own file is written as it was recorded
            "detector": (replace(self.detector, model_path=None).to_dict()
                         if self.asset_path(DETECTOR_ROLE) is not None
                         and self.detector.model_path == str(self.asset_path(DETECTOR_ROLE))
                         else self.detector.to_dict()),
            "embedding": {
                "dim": self.embedding_dim,
                "flip_average": self.flip_average,
                "l2_normalize": self.l2_normalize,
            },
            "head": {
                "type": "l1-sigmoid",
                "weights": [float(w) for w in self.head_weights],
                "bias": float(self.head_bias),
            },
            "thresholds": self.thresholds,
            "default_threshold": self.default_threshold,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "assets": {role: asset.to_dict() for role, asset in self.assets.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = METADATA_FILE) -> ModelMetadata:
        if data.get("format") != MODEL_FORMAT:
            raise ModelError(f"{source}: not a TwinLock model (format={data.get('format')!r})")
        if data.get("format_version") != MODEL_FORMAT_VERSION:
            raise ModelError(f"{source}: unsupported model format version "
                             f"{data.get('format_version')!r} (this build reads {MODEL_FORMAT_VERSION})")
        try:
            weights = np.asarray(data["head"]["weights"], dtype=np.float32)
            meta = cls(
                input_size=int(data["input"]["size"]),
                channels=int(data["input"]["channels"]),
                embedding_dim=int(data["embedding"]["dim"]),
                head_weights=weights,
                head_bias=float(data["head"]["bias"]),
                alignment_zoom=float(data["alignment"].get("zoom", 1.0)),
                alignment_template=str(data["alignment"].get("template", DEFAULT_TEMPLATE)),
                flip_average=bool(data["embedding"].get("flip_average", False)),
                l2_normalize=bool(data["embedding"].get("l2_normalize", False)),
                detector=DetectorSpec(**data.get("detector", {})),
                thresholds={k: float(v) for k, v in data.get("thresholds", {}).items()},
                default_threshold=str(data.get("default_threshold", DEFAULT_PAIR)),
                quantization=str(data.get("quantization", "")),
                architecture=str(data.get("architecture", "")),
                model_id=str(data.get("model_id", "")),
                metrics=dict(data.get("metrics", {})),
                provenance=dict(data.get("provenance", {})),
                assets={str(role): Asset.from_dict(entry, f"{source}: assets.{role}")
                        for role, entry in dict(data.get("assets", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: malformed model metadata ({exc!r})") from None
        if meta.alignment_template not in TEMPLATES:
            raise ModelError(f"{source}: unknown alignment template "
                             f"{meta.alignment_template!r} (this build knows "
                             f"{', '.join(TEMPLATES)})")
        if weights.shape != (meta.embedding_dim,):
            raise ModelError(f"{source}: head has {weights.shape} weights, expected "
                             f"({meta.embedding_dim},)")
        return meta

    def face_pipeline(self, detector: Detector) -> FacePipeline:
        """The detect -> align path that makes this model's crops (size, zoom, template)."""
        return FacePipeline(detector, self.input_size, self.alignment_zoom,
                            self.alignment_template)

    @property
    def threshold(self) -> float:
        """The calibrated per-anchor score threshold the model recommends."""
        if self.default_threshold not in self.thresholds:
            raise ModelError(f"model has no calibrated threshold {self.default_threshold!r}; "
                             f"has {sorted(self.thresholds)}")
        return self.thresholds[self.default_threshold]


def read_metadata(model_dir: str | Path) -> ModelMetadata:
    path = Path(model_dir) / METADATA_FILE
    if not Path(model_dir).is_dir():
        raise ModelError(f"{model_dir}: model folder not found")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (is {model_dir} a folder made by 'twinlock export'?)")\
            from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    meta = ModelMetadata.from_json(data, str(path))
    return resolve_assets(meta, Path(model_dir))


def resolve_assets(meta: ModelMetadata, model_dir: Path) -> ModelMetadata:
    """Check every asset's sha256 in ``model_dir`` (an altered file is a ModelError) and point
    the detector at the folder's own file unless model.json names another path."""
    for asset in meta.assets.values():
        check_asset(model_dir, asset)
    meta.folder = model_dir
    detector_file = meta.asset_path(DETECTOR_ROLE)
    if detector_file is not None and meta.detector.model_path is None:
        meta.detector = replace(meta.detector, model_path=str(detector_file))
    elif detector_file is None and meta.detector.type == "blazeface":
        logger.warning("%s carries no detector file: using the installed copy (add it with "
                       "'twinlock add-detector %s')", model_dir, model_dir)
    return meta


class FaceEmbedder:
    """Runs the exported tower: aligned RGB crops in, post-processed embeddings out."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1,
                 runtimes: Sequence[str] = DEFAULT_CHAIN) -> None:
        self.model_dir = Path(model_dir)
        self.meta = read_metadata(self.model_dir)
        self.tower = TFLiteModel(self.model_dir / TOWER_FILE, num_threads, runtimes)
        shape = self.tower.inputs[0].shape
        expected = (self.meta.input_size, self.meta.input_size, self.meta.channels)
        if tuple(shape[1:]) != expected:
            raise ModelError(f"{self.model_dir}: tower input {shape} does not match metadata "
                             f"{expected}")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([self.tower.run(x[None])[0] for x in batch], axis=0)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB crops -> (N, D) float32 embeddings."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.shape[1:3] != (self.meta.input_size, self.meta.input_size):
            raise ModelError(f"crops are {crops.shape[1:3]}, model expects "
                             f"{self.meta.input_size}x{self.meta.input_size}")
        x = to_model_input(crops, self.meta.channels)
        plain = self._run(x)
        flipped = self._run(x[:, :, ::-1]) if self.meta.flip_average else None
        return postprocess_embeddings(plain, flipped, self.meta.l2_normalize)

    def scores(self, probe: np.ndarray, anchors: np.ndarray) -> np.ndarray:
        """Same-person probability of one probe embedding against each anchor embedding."""
        return l1_head_scores(probe, anchors, self.meta.head_weights, self.meta.head_bias)

    def pair_scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return l1_pair_scores(a, b, self.meta.head_weights, self.meta.head_bias)
