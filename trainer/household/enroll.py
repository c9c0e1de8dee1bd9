"""Enrolment: a few good photos (or camera frames) of a resident become anchors for one model.

Every face goes through ``twinlock.trainer.household.anchors.enrolment_face`` (the door's frame analyser): the door's own detector,
alignment, quality gate and tower, so an anchor is made exactly as the door will see a probe.
On top of the door's gate, enrolment refuses faces that add nothing: a face whose embedding is
almost the same as one the resident already has (the same photo twice, a re-saved copy, a camera
frame of an unchanged pose) is ``near_duplicate``. Several copies of one picture would count as
several anchors in the door's "share of anchors that agree" vote without being more evidence.

Anchors belong to one model (``model_id``). Samples keep their aligned crops, so changing the
model re-embeds them (``reembed``) instead of mixing embeddings of two models.

The near-duplicate threshold (cosine similarity of the embeddings, ``DUPLICATE_COSINE`` = 0.98,
i.e. an L2 distance of unit vectors below 0.2) was measured with models/default (compact, 64 px)
on the example photos and 700 LFW people:

==================================================  =====================================
pair                                                cosine similarity
==================================================  =====================================
a byte-identical copy, or a PNG re-save             1.0000
the photo re-saved as JPEG (quality 90, 70, 50)     0.987 - 0.999 (5 photos)
the photo scaled to 0.9, 0.8, 0.6                   0.979 - 0.999 (one 0.979, rest >= 0.992)
the photo shifted 2 px                              0.984 - 0.991
two different LFW photos of one person (2,359)      max 0.974 (a burst of two near-identical
                                                    shots), then 0.965; 99.9th pct 0.951
video frames of one person 0.7 s apart (108)        max 0.90
==================================================  =====================================

The threshold sits between the two groups: copies and re-encodes are caught, two real photos
are kept. The same number may not suit a very different model; it is a parameter.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from twinlock.daemon.camera.frame import Camera, validate_frame
from twinlock.daemon.errors import DataError, ModelError, UsageError
from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.align import (
    DEFAULT_TEMPLATE,
    align_face,
    similarity_transform,
    template_points,
)
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.recognition.analyser import FrameAnalyser
from twinlock.daemon.recognition.fusion import door_calibration, strict_threshold
from twinlock.daemon.recognition.gallery import Gallery, User, check_user_threshold
from twinlock.daemon.recognition.model import FaceEmbedder, read_metadata
from twinlock.daemon.recognition.scoring import unit
from twinlock.trainer.household.anchors import UNREADABLE, enrolment_analyser, enrolment_face

from .enroll_store import THUMBNAIL_PX, EnrolmentStore, check_name

logger = logging.getLogger(__name__)

NEAR_DUPLICATE = "near_duplicate"
TOO_MANY = "too_many"
#: every reason a photo or frame can be refused with (the daemon's gate first)
REASONS: tuple[str, ...] = (q.NO_FACE, q.SEVERAL_FACES, *q.CHECK_ORDER, UNREADABLE,
                            NEAR_DUPLICATE, TOO_MANY)
MESSAGES: dict[str, str] = {
    **q.MESSAGES,
    UNREADABLE: "not a readable image file",
    NEAR_DUPLICATE: "almost the same as a face already kept: use another photo, or turn the "
                    "head a little",
    TOO_MANY: "this user already has the most samples allowed: remove some first",
}

#: cosine similarity above which two faces of one resident count as the same picture
DUPLICATE_COSINE = 0.98
#: the thumbnail keeps a little more of the head than the model's crop (people look at it)
THUMBNAIL_ZOOM = 0.8


def describe(reason: str) -> str:
    """One sentence a person can act on, for any reason in ``REASONS``."""
    return MESSAGES.get(reason, reason)


@dataclass
class EnrolReport:
    """What one enrolment did: kept sources, refused (source, reason) pairs, anchors held now."""

    user: str
    model_id: str
    accepted: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    anchors: int = 0  # anchors the user now has for this model (earlier ones included)
    sample_ids: list[int] = field(default_factory=list)
    seen: int = 0  # photos / camera frames read
    stopped: str = ""  # camera only: "count", "timeout", "camera_ended" or "cancelled"

    @property
    def reasons(self) -> Counter[str]:
        """How often each reason came up (camera enrolment refuses many frames)."""
        return Counter(reason for _, reason in self.rejected)


@dataclass(frozen=True)
class CaptureProgress:
    """Handed to the progress callback after every camera frame."""

    kept: int
    count: int
    seen: int
    last_reason: str | None  # why the last examined frame was refused; None if it was kept
    elapsed_s: float
    timeout_s: float


ProgressCallback = Callable[[CaptureProgress], object]


@dataclass
class _Candidate:
    embedding: np.ndarray
    crop: np.ndarray
    thumbnail: np.ndarray
    quality: dict[str, Any]


class _Enroller:
    """The door's model and detector, loaded once per enrolment."""

    def __init__(self, model_dir: str | Path, thresholds: q.QualityThresholds,
                 detector: bool = True) -> None:
        self.embedder = FaceEmbedder(model_dir)
        self.meta = self.embedder.meta
        if not self.meta.model_id:
            raise ModelError(f"{model_dir}: the model has no model_id; re-export it")
        self.model_id = self.meta.model_id
        self.thresholds = thresholds
        self.analyser: FrameAnalyser | None = None
        if detector:
            pipeline = self.meta.face_pipeline(self.meta.detector.build())
            self.analyser = enrolment_analyser(pipeline, self.embedder, thresholds)

    def examine(self, image: np.ndarray) -> tuple[_Candidate | None, str | None]:
        """(candidate, None) for one good face, else (None, reason)."""
        assert self.analyser is not None
        found = enrolment_face(image, self.analyser)
        if isinstance(found, str):
            return None, found
        face = found.face
        quality: dict[str, Any] = {
            **found.measures.to_dict(),
            "detector_score": round(float(face.score), 4),
            "face_box": [round(float(v), 1) for v in face.box],
            "image_size": [int(image.shape[1]), int(image.shape[0])],
            "detector": self.meta.detector.describe(),
            "thresholds": asdict(self.thresholds),
        }
        thumbnail = align_face(image, face, THUMBNAIL_PX, self.meta.alignment_zoom * THUMBNAIL_ZOOM)
        return _Candidate(found.embedding, found.crop, thumbnail, quality), None

    def embed_stored(self, crop: np.ndarray, crop_zoom: float,
                     crop_template: str = DEFAULT_TEMPLATE) -> np.ndarray:
        crop = fit_crop(crop, crop_zoom, self.meta.input_size, self.meta.alignment_zoom,
                        crop_template, self.meta.alignment_template)
        return self.embedder.embed(crop)[0]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return unit(np.asarray(vectors, dtype=np.float32))


class KeptFaces:
    """Unit embeddings of the user's faces so far (stored and new), for the duplicate check.

    Public because the door-level evaluation (evaluation/door_eval.py) refuses near-duplicate
    photos with this same check when it seats residents.
    """

    def __init__(self, existing: np.ndarray | None, threshold: float) -> None:
        self.threshold = threshold
        self.rows: list[np.ndarray] = [] if existing is None else list(_unit(existing))

    def is_duplicate(self, embedding: np.ndarray) -> bool:
        if not self.rows:
            return False
        similarity = np.stack(self.rows) @ _unit(embedding)
        best = float(similarity.max())
        logger.debug("closest kept face: cosine %.4f", best)
        return best > self.threshold

    def add(self, embedding: np.ndarray) -> None:
        self.rows.append(_unit(embedding))


def fit_crop(crop: np.ndarray, crop_zoom: float, size: int, zoom: float,
             crop_template: str = DEFAULT_TEMPLATE, template: str = DEFAULT_TEMPLATE
             ) -> np.ndarray:
    """A stored aligned crop re-framed for a model with another input size, zoom or template.

    Both crops put the same landmarks on a template, so the similarity transform from the one
    template to the other re-frames the crop (with one template, a centred scaling). Enlarging
    (a bigger input or a tighter zoom) cannot add the detail the photo had, and zooming out or
    changing template invents a border: such anchors are weaker than ones made from the photos,
    so this is logged.
    """
    have = crop.shape[0]
    if have == size and abs(crop_zoom - zoom) < 1e-9 and crop_template == template:
        return crop
    matrix = similarity_transform(template_points(crop_zoom, crop_template) * have,
                                  template_points(zoom, template) * size)
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    if scale > 1.0 + 1e-9 or zoom < crop_zoom or crop_template != template:
        logger.warning("re-framing a stored %d px %s crop (zoom %g) for a %d px %s model (zoom "
                       "%g): re-enrol from photos for the best anchors", have, crop_template,
                       crop_zoom, size, template, zoom)
    return cv2.warpAffine(crop, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def _existing_anchors(store: EnrolmentStore, enroller: _Enroller, name: str) -> np.ndarray | None:
    """The user's anchors for this model (made now from stored crops where missing)."""
    if not store.has_user(name):
        return None
    for sample in store.samples_missing_anchor(enroller.model_id, user=name):
        store.set_anchor(sample.id, enroller.model_id,
                         enroller.embed_stored(sample.crop(), sample.crop_zoom,
                                               sample.crop_template))
    return store.anchors(enroller.model_id, user=name).get(_stored_name(store, name))


def _stored_name(store: EnrolmentStore, name: str) -> str:
    folded = name.casefold()
    for user in store.users():
        if user.name.casefold() == folded:
            return user.name
    return name


def _sample_count(store: EnrolmentStore, name: str) -> int:
    return len(store.samples(name)) if store.has_user(name) else 0


def _keep(store: EnrolmentStore, enroller: _Enroller, name: str, source: str,
          candidate: _Candidate, report: EnrolReport) -> None:
    stored = store.add_user(name, exist_ok=True)
    report.user = stored
    sample_id = store.add_sample(stored, source, candidate.crop, candidate.thumbnail,
                                 candidate.quality, crop_zoom=enroller.meta.alignment_zoom,
                                 crop_template=enroller.meta.alignment_template)
    store.set_anchor(sample_id, enroller.model_id, candidate.embedding)
    report.accepted.append(source)
    report.sample_ids.append(sample_id)


def _finish(store: EnrolmentStore, report: EnrolReport) -> EnrolReport:
    held = store.anchors(report.model_id, user=report.user).get(report.user)
    report.anchors = 0 if held is None else len(held)
    logger.info("enrolled %s for model %s: %d kept, %d refused, %d anchors held",
                report.user, report.model_id, len(report.accepted), len(report.rejected),
                report.anchors)
    return report


def enroll_from_images(store: EnrolmentStore, name: str, image_paths: Sequence[str | Path],
                       model_dir: str | Path,
                       thresholds: q.QualityThresholds = q.DEFAULT_THRESHOLDS,
                       max_samples: int = 20,
                       duplicate_cosine: float = DUPLICATE_COSINE) -> EnrolReport:
    """Enrol ``name`` (new, or adding to an existing user) from photos, one face each.

    Every photo is kept or refused with a reason from ``REASONS``; a user is created only when a
    photo is kept. The user holds at most ``max_samples`` samples in all.
    """
    name = check_name(name)
    if not image_paths:
        raise UsageError("no photos given to enrol")
    if max_samples < 1:
        raise UsageError(f"max_samples must be at least 1, not {max_samples}")
    enroller = _Enroller(model_dir, thresholds)
    report = EnrolReport(_stored_name(store, name), enroller.model_id)
    kept = KeptFaces(_existing_anchors(store, enroller, name), duplicate_cosine)
    room = max_samples - _sample_count(store, name)
    for path in image_paths:
        source = Path(path).name
        report.seen += 1
        if room <= 0:
            report.rejected.append((source, TOO_MANY))
            continue
        try:
            image = load_image(path)
        except DataError as exc:
            report.rejected.append((source, UNREADABLE))
            logger.info("refused %s: %s", path, exc)
            continue
        candidate, reason = enroller.examine(image)
        if candidate is not None and kept.is_duplicate(candidate.embedding):
            candidate, reason = None, NEAR_DUPLICATE
        if candidate is None:
            assert reason is not None
            report.rejected.append((source, reason))
            logger.info("refused %s: %s", source, describe(reason))
            continue
        _keep(store, enroller, name, source, candidate, report)
        kept.add(candidate.embedding)
        room -= 1
    return _finish(store, report)


def enroll_from_camera(store: EnrolmentStore, name: str, camera: Camera, model_dir: str | Path,
                       count: int = 5, min_interval_s: float = 0.7, timeout_s: float = 60.0,
                       progress: ProgressCallback | None = None,
                       thresholds: q.QualityThresholds = q.DEFAULT_THRESHOLDS,
                       max_samples: int = 20, duplicate_cosine: float = DUPLICATE_COSINE,
                       clock: Callable[[], float] = time.monotonic) -> EnrolReport:
    """Capture up to ``count`` good faces of ``name`` from ``camera`` without a key press.

    A frame is kept when it shows exactly one face that passes the door's quality gate, comes at
    least ``min_interval_s`` (frame time stamps) after the last kept one, and is not a
    near-duplicate of a face the user already has, so the anchors spread over time and pose.
    Stops at ``count``, after ``timeout_s`` (``clock``), when the camera's source ends, or when
    ``progress`` returns False; ``progress`` gets a ``CaptureProgress`` after every frame. Opens
    and closes ``camera``; camera faults (``CameraError``) propagate, samples kept so far stay.
    """
    name = check_name(name)
    if count < 1 or min_interval_s < 0 or not timeout_s > 0:
        raise UsageError("camera enrolment needs count >= 1, min_interval_s >= 0, timeout_s > 0")
    enroller = _Enroller(model_dir, thresholds)
    report = EnrolReport(_stored_name(store, name), enroller.model_id)
    room = max_samples - _sample_count(store, name)
    if room <= 0:
        raise UsageError(f"{report.user} already has {max_samples} samples: remove some first")
    if count > room:
        logger.info("capturing %d faces, not %d: %s may hold %d samples", room, count,
                    report.user, max_samples)
        count = room
    kept = KeptFaces(_existing_anchors(store, enroller, name), duplicate_cosine)
    last_kept: float | None = None
    last_reason: str | None = None
    start = clock()
    camera.open()
    try:
        while True:
            if len(report.accepted) >= count:
                report.stopped = "count"
                break
            if clock() - start >= timeout_s:
                report.stopped = "timeout"
                break
            frame = camera.read()
            if frame is None:
                report.stopped = "camera_ended"
                break
            report.seen += 1
            number = frame.index if frame.source_index is None else frame.source_index
            source = f"camera:{camera.name}#{number}"
            if validate_frame(frame) is not None:
                last_reason = UNREADABLE
                report.rejected.append((source, UNREADABLE))
            elif last_kept is None or frame.timestamp - last_kept >= min_interval_s:
                candidate, reason = enroller.examine(frame.image)
                if candidate is not None and kept.is_duplicate(candidate.embedding):
                    candidate, reason = None, NEAR_DUPLICATE
                if candidate is None:
                    assert reason is not None
                    last_reason = reason
                    report.rejected.append((source, reason))
                else:
                    _keep(store, enroller, name, source, candidate, report)
                    kept.add(candidate.embedding)
                    last_kept, last_reason = frame.timestamp, None
                    logger.info("kept %s (%d of %d)", source, len(report.accepted), count)
            if progress is not None:
                state = CaptureProgress(len(report.accepted), count, report.seen, last_reason,
                                        clock() - start, timeout_s)
                if progress(state) is False:
                    report.stopped = "cancelled"
                    break
    finally:
        camera.close()
    return _finish(store, report)


def reembed(store: EnrolmentStore, model_dir: str | Path) -> int:
    """Make anchors with the model in ``model_dir`` for every sample that lacks one; returns how
    many were made. Anchors of other models are left as they are, never mixed in."""
    model_id = read_metadata(model_dir).model_id
    if not model_id:
        raise ModelError(f"{model_dir}: the model has no model_id; re-export it")
    missing = store.samples_missing_anchor(model_id)
    if not missing:
        return 0
    enroller = _Enroller(model_dir, q.DEFAULT_THRESHOLDS, detector=False)
    for sample in missing:
        store.set_anchor(sample.id, model_id, enroller.embed_stored(
            sample.crop(), sample.crop_zoom, sample.crop_template))
    logger.info("made %d anchors for model %s from stored crops", len(missing), model_id)
    return len(missing)


def strict(user: User, far: float, metrics: dict[str, Any]) -> User:
    """Give ``user`` the threshold that holds a stranger's chance of passing for them to
    ``far`` per knock, from the model's door calibration (``strict_threshold``: past the
    strictest measured rung it is extrapolated, and said so). For a resident with a look-alike
    sister or twin; what it costs them is measured in ``benchmarks/lookalikes.py``."""
    try:
        value, extrapolated = strict_threshold(door_calibration(metrics), far)
    except ModelError as exc:
        raise ModelError(f"user {user.name}: {exc}") from None
    user.threshold, user.strict_far = check_user_threshold(user.name, value), far
    logger.log(logging.WARNING if extrapolated else logging.INFO,
               "user %s: own threshold %.6f for a false-accept target of %g per knock%s",
               user.name, value, far, " (extrapolated past the model's strictest measured "
               "rung: not a measured rate)" if extrapolated else "")
    return user


def export_gallery(store: EnrolmentStore, model_dir: str | Path, out_path: str | Path) -> Gallery:
    """Write the door's gallery for the model in ``model_dir`` (re-embedding where needed).

    Every user with samples is in it; an empty gallery is written too, so that removing the
    last resident reaches the door.
    """
    reembed(store, model_dir)
    meta = read_metadata(model_dir)
    model_id = meta.model_id
    gallery = store.gallery(model_id)
    for user in store.users(model_id):
        if user.name not in gallery.users:
            logger.warning("user %s has no samples and is left out of the gallery", user.name)
        elif user.strict_far is not None:
            strict(gallery.users[user.name], user.strict_far, meta.metrics)
    if not gallery.users:
        logger.warning("the gallery for model %s has no users: the door will open for no one",
                       model_id)
    gallery.save(Path(out_path))
    logger.info("gallery for model %s written to %s: %d users", model_id, out_path,
                len(gallery.users))
    return gallery
