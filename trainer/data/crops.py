"""Aligned face crops for whole datasets, made once and cached on disk.

Crops come from the daemon's own detect -> align path (``twinlock.daemon.faces``), so training,
evaluation and the door all see faces the same way. Detection is the slow part of preparing data;
the cache makes it happen once per dataset, detector and crop size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from twinlock.daemon.errors import DataError
from twinlock.daemon.faces.align import DEFAULT_TEMPLATE, TEMPLATES
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.faces.pipeline import DetectorSpec, FacePipeline, SelectPolicy
from twinlock.daemon.storage.files import atomic_writer

logger = logging.getLogger(__name__)

#: bump when the crop-making code changes in a way that changes pixels, to invalidate caches
CROP_CODE_VERSION = 2

OK, NO_FACE, UNREADABLE = 0, 1, 2
STATUS_NAMES = {OK: "ok", NO_FACE: "no face", UNREADABLE: "unreadable"}


@dataclass(frozen=True)
class CropSpec:
    """Everything that decides the pixels of a crop."""

    size: int
    zoom: float = 1.0
    detector: DetectorSpec = field(default_factory=DetectorSpec)
    policy: SelectPolicy = "center"
    template: str = DEFAULT_TEMPLATE

    def key(self) -> str:
        # the default template keeps its old key, so existing caches stay valid; others carry
        # their points, so editing a template's numbers can never reuse stale crops
        template = "" if self.template == DEFAULT_TEMPLATE else \
            f"|{self.template}:{np.round(TEMPLATES[self.template], 5).tolist()}"
        return (f"v{CROP_CODE_VERSION}|{self.detector.describe()}|{self.size}|{self.zoom:g}|"
                f"{self.policy}{template}")


@dataclass
class CropResult:
    """Crops for a list of image paths; ``status[i]`` says why image i has no crop."""

    crops: np.ndarray  # (N, S, S, 3) uint8; zeros where status != OK
    status: np.ndarray  # (N,) uint8
    n_faces: np.ndarray  # (N,) faces found per image

    @property
    def ok(self) -> np.ndarray:
        return self.status == OK

    def counts(self) -> dict[str, int]:
        return {name: int((self.status == code).sum()) for code, name in STATUS_NAMES.items()} | {
            "several faces": int((self.n_faces > 1).sum())
        }


def cache_dir() -> Path:
    """``$TWINLOCK_CACHE`` or ``~/.cache/twinlock``."""
    env = os.environ.get("TWINLOCK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "twinlock"


def files_key(prefix: str, paths: Sequence[Path]) -> str:
    """Cache key for a computation over ``paths``: ``prefix`` (what is computed and how) plus
    each file's resolved path, size and mtime, so an edited or replaced image invalidates it."""
    digest = hashlib.sha256(prefix.encode())
    for path in paths:
        try:
            st = path.stat()
            digest.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()[:24]


def make_crops(
    paths: Sequence[Path],
    spec: CropSpec,
    use_cache: bool = True,
    progress: bool = True,
    num_threads: int = 1,
) -> CropResult:
    """Detect and align one face per image (the one ``spec.policy`` picks)."""
    paths = [Path(p) for p in paths]
    cache_file = cache_dir() / "crops" / f"{files_key(spec.key(), paths)}.npz"
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file) as data:
                result = CropResult(data["crops"], data["status"], data["n_faces"])
            logger.info("crops for %d images loaded from cache %s", len(paths), cache_file)
            return result
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("ignoring unreadable crop cache %s (%s)", cache_file, exc)
    pipeline = FacePipeline(spec.detector.build(num_threads), spec.size, spec.zoom, spec.template)
    crops = np.zeros((len(paths), spec.size, spec.size, 3), dtype=np.uint8)
    status = np.full(len(paths), OK, dtype=np.uint8)
    n_faces = np.zeros(len(paths), dtype=np.int16)
    for i, path in enumerate(tqdm(paths, desc="detect+align", unit="img", disable=not progress,
                                  mininterval=1.0)):
        try:
            image = load_image(path)
        except DataError as exc:
            logger.debug("skipping %s", exc)
            status[i] = UNREADABLE
            continue
        aligned, n_faces[i] = pipeline.primary(image, spec.policy)
        if aligned is None:
            status[i] = NO_FACE
        else:
            crops[i] = aligned.crop
    counts = CropResult(crops, status, n_faces).counts()
    logger.info("crops: %s", ", ".join(f"{v} {k}" for k, v in counts.items()))
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(cache_file, 0o644) as handle:  # a killed run leaves no torn cache
            np.savez(handle, crops=crops, status=status, n_faces=n_faces)
    return CropResult(crops, status, n_faces)
