"""Put the detector (and face mesh) a model needs into its model folder.

``twinlock export`` calls ``add_assets`` on every new model folder. For a folder exported before
the detector travelled with the model (the shipped ``models/default`` and ``models/compact``),
``twinlock add-detector MODEL_DIR`` does the same in place::

    twinlock add-detector models/default            # detector + face mesh + iris model
    twinlock add-detector models/compact --no-mesh   # detector only

It copies the files (from twinlock's packaged copies, see daemon/faces/assets.py) next to the
tower and records each one's sha256, size and licence notice under ``assets`` in model.json. The
model_id (the tower's hash) does not change, so galleries enrolled with the model stay valid;
bundles made afterwards carry the files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from twinlock.daemon.errors import ModelError
from twinlock.daemon.faces.assets import (
    DETECTOR_ROLE,
    IRIS_ROLE,
    MESH_ROLE,
    Asset,
    add_asset,
    find_model_file,
)
from twinlock.daemon.faces.pipeline import DetectorSpec
from twinlock.daemon.recognition.model import METADATA_FILE, read_metadata
from twinlock.daemon.storage.files import atomic_write_json

logger = logging.getLogger(__name__)

MESH_FILE = "face_landmark.tflite"
IRIS_FILE = "iris_landmark.tflite"
_BLAZEFACE_FILES = {"short": "face_detection_short_range.tflite",
                    "full": "face_detection_full_range.tflite"}


def detector_file(spec: DetectorSpec) -> Path:
    """The installed file of the detector a model records (BlazeFace only: YuNet's .onnx is
    the user's own file, named by path)."""
    if spec.type != "blazeface":
        raise ModelError(f"detector {spec.type!r} has no packaged file to carry; only BlazeFace "
                         "models travel with their detector")
    if spec.model_path:
        return Path(spec.model_path)
    if spec.variant not in _BLAZEFACE_FILES:
        raise ModelError(f"unknown BlazeFace variant {spec.variant!r}")
    return find_model_file(_BLAZEFACE_FILES[spec.variant])


def add_assets(model_dir: Path, spec: DetectorSpec, mesh: bool = True) -> dict[str, Asset]:
    """Copy the detector (and liveness' face mesh and iris model) into ``model_dir``; returns
    role -> Asset."""
    assets = {DETECTOR_ROLE: add_asset(model_dir, detector_file(spec))}
    if mesh:
        assets[MESH_ROLE] = add_asset(model_dir, find_model_file(MESH_FILE))
        assets[IRIS_ROLE] = add_asset(model_dir, find_model_file(IRIS_FILE))
    return assets


def add_detector(model_dir: str | Path, mesh: bool = True) -> dict[str, Any]:
    """Add the detector (and mesh) files to an existing model folder and record them in its
    model.json, rewritten atomically with every other key kept as it was. Returns the assets."""
    model_dir = Path(model_dir)
    path = model_dir / METADATA_FILE
    data = json.loads(path.read_text())
    spec_data = dict(data.get("detector", {}))
    meta = read_metadata(model_dir)  # validates the folder (and any assets it already lists)
    spec = DetectorSpec(**spec_data) if spec_data else meta.detector
    assets = add_assets(model_dir, spec, mesh)
    recorded = dict(data.get("assets", {}))
    recorded.update({role: asset.to_dict() for role, asset in assets.items()})
    data["assets"] = recorded
    if isinstance(data.get("detector"), dict):
        data["detector"]["model_path"] = None  # the folder's copy, not the exporting host's path
    atomic_write_json(path, data, 0o644)
    read_metadata(model_dir)  # the result loads and its hashes check
    logger.info("%s: recorded %s", model_dir, ", ".join(f"{r} {a.file}" for r, a in
                                                        assets.items()))
    return recorded
