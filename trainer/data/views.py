"""Two views of one augmented face for online distillation: the student's crop and the teacher's
chip, cut from the same augmented sample.

Function matching (Beyer et al. 2022, ``../shared/notes/dlib-resnet.md`` section 5) needs the
teacher and the student to look at *the same* augmented view, so the teacher's outputs are
computed online, never cached. Both crops come from the door's own alignment
(``daemon.faces.align``): each image is detected once (``faces.pipeline.detect_one``, the door's
detect-then-select) and warped by ``align_face`` onto a
*canvas*, the teacher's template with a margin around it. The door's similarity transforms from
the landmarks to the student's and the teacher's templates are kept as canvas -> crop matrices.
In the graph, one random transform ``T`` per sample (flip, rotation, scale, shift) is composed
with each matrix, so both crops are ``crop(view) = canvas(T^-1 M^-1 p)`` of the same view; the
same lighting change and the same mixup partner and weight are then applied to both.

Canvases are made once per image list and cached like the crops (``$TWINLOCK_CACHE/canvases``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from twinlock.daemon.errors import DataError
from twinlock.daemon.faces.align import align_face, similarity_transform, template_points
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.faces.pipeline import DetectorSpec, SelectPolicy, detect_one
from twinlock.daemon.storage.files import atomic_writer

from .crops import cache_dir, files_key
from .datasets import is_image_file

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)

#: bump when canvas-making code changes pixels or matrices, to invalidate caches
VIEW_CODE_VERSION = 1
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})


@dataclass(frozen=True)
class ViewSpec:
    """The two crops (student, teacher), the canvas both are cut from, and how faces are found."""

    student_size: int
    student_template: str = "dlib-4pt"
    student_zoom: float = 1.0
    teacher_size: int = 150
    teacher_template: str = "dlib-4pt"
    canvas_size: int = 176
    #: the canvas is the teacher's template zoomed out by this (room for shifts and rotations)
    canvas_zoom: float = 0.8
    detector: DetectorSpec = field(default_factory=DetectorSpec)
    policy: SelectPolicy = "center"

    def key(self) -> str:
        return (f"views-v{VIEW_CODE_VERSION}|{self.detector.describe()}|{self.policy}|"
                f"{self.student_size}:{self.student_template}:{self.student_zoom:g}|"
                f"{self.teacher_size}:{self.teacher_template}|{self.canvas_size}:"
                f"{self.canvas_zoom:g}")


@dataclass
class Canvases:
    """One aligned canvas per usable image, with the door's canvas -> crop matrices."""

    pixels: np.ndarray  # (N, C, C, 3) uint8 RGB
    to_student: np.ndarray  # (N, 2, 3) float32: canvas coordinates -> student crop coordinates
    to_teacher: np.ndarray  # (N, 2, 3) float32: canvas coordinates -> teacher chip coordinates
    sources: list[str]  # file (or "video#frame") of each canvas

    def __len__(self) -> int:
        return len(self.pixels)

    def subset(self, idx: np.ndarray) -> Canvases:
        return Canvases(self.pixels[idx], self.to_student[idx], self.to_teacher[idx],
                        [self.sources[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence[Canvases]) -> Canvases:
        return Canvases(np.concatenate([p.pixels for p in parts]),
                        np.concatenate([p.to_student for p in parts]),
                        np.concatenate([p.to_teacher for p in parts]),
                        [s for p in parts for s in p.sources])


def _after(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """2x3 affine ``second`` o ``first`` (apply ``first``, then ``second``)."""
    a = np.vstack([first, [0.0, 0.0, 1.0]])
    b = np.vstack([second, [0.0, 0.0, 1.0]])
    return (b @ a)[:2]


def _invert(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]


def face_views(image: np.ndarray, landmarks: np.ndarray,
               spec: ViewSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canvas, canvas -> student, canvas -> teacher) for one face, all by the door's maths."""
    from twinlock.daemon.faces.types import Face

    face = Face((0.0, 0.0, 1.0, 1.0), np.asarray(landmarks, np.float32), 1.0)
    canvas = align_face(image, face, spec.canvas_size, spec.canvas_zoom, spec.teacher_template)
    to_canvas = similarity_transform(
        face.landmarks, template_points(spec.canvas_zoom, spec.teacher_template) * spec.canvas_size)
    to_student = similarity_transform(
        face.landmarks, template_points(spec.student_zoom, spec.student_template) * spec.student_size)
    to_teacher = similarity_transform(
        face.landmarks, template_points(1.0, spec.teacher_template) * spec.teacher_size)
    back = _invert(to_canvas)
    return canvas, _after(back, to_student), _after(back, to_teacher)


def _frames(path: Path, every: int) -> Iterator[tuple[str, np.ndarray]]:
    """RGB frames of a video file, one in ``every``."""
    capture = cv2.VideoCapture(str(path))
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                yield f"{path}#{index}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def list_unlabelled(roots: Sequence[str | Path]) -> list[Path]:
    """Image files under each root (any depth) and video files, sorted; a root may be a file."""
    found: list[Path] = []
    for root in map(Path, roots):
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found.extend(p for p in sorted(root.rglob("*"))
                         if p.is_file() and (is_image_file(p) or p.suffix.lower() in VIDEO_SUFFIXES))
        else:
            raise DataError(f"unlabelled data not found: {root}")
    return found


def make_canvases(paths: Sequence[Path], spec: ViewSpec, use_cache: bool = True,
                  progress: bool = True, video_every: int = 2) -> Canvases:
    """Detect one face per image (or video frame) and make its canvas; faceless ones are left out.

    Cached by every file's path, size and mtime plus ``spec``.
    """
    paths = [Path(p) for p in paths]
    cache_file = cache_dir() / "canvases" / \
        f"{files_key(f'{spec.key()}|video/{video_every}', paths)}.npz"
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file) as data:
                result = Canvases(data["pixels"], data["to_student"], data["to_teacher"],
                                  list(data["sources"]))
            logger.info("%d canvases loaded from cache %s", len(result), cache_file)
            return result
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("ignoring unreadable canvas cache %s (%s)", cache_file, exc)
    detector = spec.detector.build(1)
    pixels, to_s, to_t, sources = [], [], [], []
    skipped = 0

    def samples() -> Iterator[tuple[str, np.ndarray | None]]:
        for path in paths:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                yield from _frames(path, video_every)
                continue
            try:
                yield str(path), load_image(path)
            except DataError as exc:
                logger.debug("skipping %s", exc)
                yield str(path), None

    for source, image in tqdm(samples(), desc="canvases", unit="img", disable=not progress,
                              mininterval=2.0):
        face = None if image is None else detect_one(detector, image, spec.policy)[0]
        if face is None:
            skipped += 1
            continue
        canvas, student, teacher = face_views(image, face.landmarks, spec)
        pixels.append(canvas)
        to_s.append(student)
        to_t.append(teacher)
        sources.append(source)
    if not pixels:
        raise DataError(f"no face found in any of {len(paths)} files")
    logger.info("canvases: %d faces, %d files or frames without one", len(pixels), skipped)
    result = Canvases(np.stack(pixels), np.stack(to_s).astype(np.float32),
                      np.stack(to_t).astype(np.float32), sources)
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(cache_file, None) as handle:
            np.savez(handle, pixels=result.pixels, to_student=result.to_student,
                     to_teacher=result.to_teacher, sources=np.array(result.sources))
    return result


# -- in the graph ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewAugment:
    """How far each view is pushed from the door's crop (function matching wants it strong)."""

    flip: bool = True
    rotation_deg: float = 12.0
    scale: float = 0.15  # zoom in [1 - scale, 1 + scale]
    shift: float = 0.08  # of the canvas side, each axis
    brightness: float = 30.0  # additive, pixel units
    contrast: float = 0.3  # multiplicative about mid-grey
    colour: float = 0.1  # per-channel gain in [1 - c, 1 + c]
    grey: float = 0.1  # probability of a grey view (ORL, Yale, IR cameras)
    mixup: float = 0.5  # probability that a view is blended with another face
    mixup_alpha: float = 1.0  # blend weight ~ Beta(a, a)

    @staticmethod
    def none() -> ViewAugment:
        return ViewAugment(False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def random_transforms(batch: int, canvas_size: int, aug: ViewAugment) -> tf.Tensor:
    """(B, 3, 3) view transforms ``T`` on canvas coordinates: flip, rotate, zoom, shift, about
    the canvas centre."""
    import tensorflow as tf

    c = (canvas_size - 1) / 2.0

    def uniform(limit: float) -> tf.Tensor:
        return tf.random.uniform([batch], -limit, limit)

    flip = tf.where(tf.random.uniform([batch]) < (0.5 if aug.flip else 0.0), -1.0, 1.0)
    angle = uniform(aug.rotation_deg * math.pi / 180.0)
    zoom = 1.0 + uniform(aug.scale)
    tx, ty = uniform(aug.shift * canvas_size), uniform(aug.shift * canvas_size)
    cos, sin = tf.cos(angle) * zoom, tf.sin(angle) * zoom
    # T = translate(c + t) @ R*zoom @ diag(flip, 1) @ translate(-c)
    a00, a01 = cos * flip, -sin
    a10, a11 = sin * flip, cos
    b0 = c + tx - (a00 * c + a01 * c)
    b1 = c + ty - (a10 * c + a11 * c)
    zeros, ones = tf.zeros([batch]), tf.ones([batch])
    return tf.reshape(tf.stack([a00, a01, b0, a10, a11, b1, zeros, zeros, ones], axis=1),
                      [batch, 3, 3])


def _warp(canvas: tf.Tensor, to_crop: tf.Tensor, transforms: tf.Tensor, size: int) -> tf.Tensor:
    """crop(p) = canvas((M T)^-1 p): the crop the door would cut from the transformed canvas."""
    import tensorflow as tf

    batch = tf.shape(canvas)[0]
    bottom = tf.tile(tf.constant([[[0.0, 0.0, 1.0]]]), [batch, 1, 1])
    forward = tf.concat([to_crop, bottom], axis=1) @ transforms
    inverse = tf.linalg.inv(forward)
    inverse = inverse / inverse[:, 2:3, 2:3]
    flat = tf.reshape(inverse, [batch, 9])[:, :8]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=canvas, transforms=flat, output_shape=tf.constant([size, size]), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")


def make_views(canvas: tf.Tensor, to_student: tf.Tensor, to_teacher: tf.Tensor, spec: ViewSpec,
               aug: ViewAugment) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of canvases -> (student crops, teacher chips), float32 0..255, one augmented
    view per sample seen by both."""
    import tensorflow as tf

    canvas = tf.cast(canvas, tf.float32)
    batch = tf.shape(canvas)[0]
    transforms = random_transforms(batch, spec.canvas_size, aug)
    student = _warp(canvas, to_student, transforms, spec.student_size)
    teacher = _warp(canvas, to_teacher, transforms, spec.teacher_size)

    def per_sample(shape: list[int], low: float, high: float) -> tf.Tensor:
        return tf.random.uniform(shape, low, high)

    contrast = per_sample([batch, 1, 1, 1], 1.0 - aug.contrast, 1.0 + aug.contrast)
    brightness = per_sample([batch, 1, 1, 1], -aug.brightness, aug.brightness)
    gain = per_sample([batch, 1, 1, 3], 1.0 - aug.colour, 1.0 + aug.colour)
    grey = tf.random.uniform([batch, 1, 1, 1]) < aug.grey
    weights = tf.constant([0.299, 0.587, 0.114])
    lam = _mixup_weights(batch, aug)

    def light_and_mix(x: tf.Tensor) -> tf.Tensor:
        x = ((x - 127.5) * contrast + 127.5 + brightness) * gain
        luma = tf.reduce_sum(x * weights, axis=-1, keepdims=True)
        x = tf.where(grey, tf.broadcast_to(luma, tf.shape(x)), x)
        x = tf.clip_by_value(x, 0.0, 255.0)
        return lam * x + (1.0 - lam) * tf.roll(x, shift=1, axis=0)

    return light_and_mix(student), light_and_mix(teacher)


def _mixup_weights(batch: tf.Tensor, aug: ViewAugment) -> tf.Tensor:
    """(B, 1, 1, 1) weight of each sample's own view; 1 where it is not mixed. The rest comes
    from the batch's previous sample (a different face, in a shuffled batch)."""
    import tensorflow as tf

    if aug.mixup <= 0:
        return tf.ones([batch, 1, 1, 1])
    a = tf.random.gamma([batch], aug.mixup_alpha)
    b = tf.random.gamma([batch], aug.mixup_alpha)
    lam = a / (a + b)
    mixed = tf.random.uniform([batch]) < aug.mixup
    return tf.reshape(tf.where(mixed, lam, tf.ones([batch])), [batch, 1, 1, 1])
