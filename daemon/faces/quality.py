"""Quality gates for faces: one definition of "good enough" for enrolment and for the door.

An anchor enrolled from a dark or blurred photo, or a probe from a motion-blurred frame, makes
the twin network's scores meaningless; both sides reject such faces with the same measures and
the same machine-readable reasons (the constants below), so an enrolment tool can tell the user
what to fix and the daemon can log why a frame was not used.

Default thresholds were chosen by measuring BlazeFace + ``align_face`` (112 px) on 400 LFW
faces and the good frames 82-210 of the example video, and on versions of them darkened
(x0.15), blurred (Gaussian sigma 3) and shrunk to a 40 px face:

============ ============================ ===================================
measure      good faces                   degraded faces
============ ============================ ===================================
brightness   LFW min 50, 1st pct 60;      darkened: LFW max 26.5,
             video min 68                 video max 12.6
sharpness    LFW min 31, 1st pct 42;      blurred: LFW 95th pct 19, 99th 26;
             video min 181                video max 15
face_px      LFW 1st pct 87; video min 88 shrunk: 40
============ ============================ ===================================

With these defaults 99.8 % of the good LFW faces pass (the one failure is a 61 px face) and all
video faces; darkened and shrunk faces all fail with their reason; blurred ones fail as
too_blurry in 98.2 % (LFW) and 100 % (video). ``max_brightness`` only catches nearly white
crops: a face overexposed x3 averages above 225 in 42 % of LFW faces and in no video frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ..errors import DataError, UsageError
from .align import align_face
from .types import Face

NO_FACE = "no_face"
SEVERAL_FACES = "several_faces"
TOO_DARK = "too_dark"
TOO_BRIGHT = "too_bright"
TOO_BLURRY = "too_blurry"
TOO_SMALL = "too_small"

#: the order ``check`` reports in: the cause first (a small or dark face also reads as blurry)
CHECK_ORDER: tuple[str, ...] = (TOO_SMALL, TOO_DARK, TOO_BRIGHT, TOO_BLURRY)

#: one line a person can act on, per reason (enrolment tools show these)
MESSAGES: dict[str, str] = {
    NO_FACE: "no face found",
    SEVERAL_FACES: "more than one face: one person at a time",
    TOO_DARK: "the face is too dark: add light or face the light",
    TOO_BRIGHT: "the face is overexposed: avoid direct sun or a light behind the camera",
    TOO_BLURRY: "the face is blurred: hold still and check the focus",
    TOO_SMALL: "the face is too small: come closer to the camera",
}

#: side of the square that sharpness is measured on, whatever the model's crop size
MEASURE_SIZE = 112


@dataclass(frozen=True)
class QualityThresholds:
    """Limits a face must meet. The defaults come from the measurements in the module text."""

    min_face_px: int = 64  # face box's larger side, in pixels of the full-resolution image
    min_brightness: float = 40.0  # mean luma (0-255) of the aligned crop
    max_brightness: float = 225.0
    min_sharpness: float = 25.0  # variance of the Laplacian of the grey crop at 112x112

    def __post_init__(self) -> None:
        if self.min_face_px < 0 or self.min_sharpness < 0:
            raise UsageError("quality thresholds cannot be negative")
        if not 0 <= self.min_brightness < self.max_brightness <= 255:
            raise UsageError(
                "quality needs 0 <= min_brightness < max_brightness <= 255, got "
                f"{self.min_brightness} and {self.max_brightness}"
            )


DEFAULT_THRESHOLDS = QualityThresholds()


@dataclass(frozen=True)
class QualityMeasures:
    """What the gate looks at for one face."""

    face_px: float
    brightness: float
    sharpness: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 2) for k, v in asdict(self).items()}


def _grey(crop: np.ndarray) -> np.ndarray:
    if not isinstance(crop, np.ndarray) or crop.size == 0 or crop.dtype != np.uint8:
        raise DataError("a face crop must be a non-empty uint8 image")
    if crop.ndim == 2:
        return crop
    if crop.ndim == 3 and crop.shape[2] == 3:
        return cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)  # ITU-R BT.601 luma, as to_model_input
    if crop.ndim == 3 and crop.shape[2] == 1:
        return crop[:, :, 0]
    raise DataError(f"a face crop must be RGB or grey, not shape {crop.shape}")


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop resized to 112x112.

    The fixed size keeps the threshold meaningful whatever the model's input size, but only up
    to a point: a crop aligned at 64 px has lost detail that resizing cannot bring back, and
    reads about 0.6-0.7x the value of the same face aligned at 112 px (measured on LFW and the
    example video). ``measure_image`` aligns its own 112 px crop and avoids this entirely.
    """
    grey = _grey(crop)
    if grey.shape[:2] != (MEASURE_SIZE, MEASURE_SIZE):
        shrinking = grey.shape[0] > MEASURE_SIZE and grey.shape[1] > MEASURE_SIZE
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC  # cubic keeps more edge
        grey = cv2.resize(grey, (MEASURE_SIZE, MEASURE_SIZE), interpolation=interpolation)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def measure(face: Face, crop: np.ndarray) -> QualityMeasures:
    """Measures for a detected face and its aligned crop (any square size; RGB or grey).

    ``face`` must be in the coordinates of the full-resolution image the crop came from (see
    ``Frame.to_image_coords`` when detecting on a smaller stream).
    """
    grey = _grey(crop)
    return QualityMeasures(
        face_px=face.size, brightness=float(grey.mean()), sharpness=sharpness(grey)
    )


def measure_image(image: np.ndarray, face: Face) -> QualityMeasures:
    """Measures on a crop aligned at 112 px from ``image``: the same numbers whatever crop size
    the model uses (one extra 112 px warp per face)."""
    return measure(face, align_face(image, face, MEASURE_SIZE))


def check(
    measures: QualityMeasures, thresholds: QualityThresholds = DEFAULT_THRESHOLDS
) -> list[str]:
    """Every failing reason, in ``CHECK_ORDER`` (too_small, too_dark, too_bright, too_blurry)."""
    failing = {
        TOO_SMALL: measures.face_px < thresholds.min_face_px,
        TOO_DARK: measures.brightness < thresholds.min_brightness,
        TOO_BRIGHT: measures.brightness > thresholds.max_brightness,
        TOO_BLURRY: measures.sharpness < thresholds.min_sharpness,
    }
    return [reason for reason in CHECK_ORDER if failing[reason]]


def first_problem(
    measures: QualityMeasures, thresholds: QualityThresholds = DEFAULT_THRESHOLDS
) -> str | None:
    """The most telling failing reason (see ``CHECK_ORDER``), or None when the face is good."""
    problems = check(measures, thresholds)
    return problems[0] if problems else None


def face_count_problem(count: int) -> str | None:
    """NO_FACE / SEVERAL_FACES for a picture with ``count`` faces; None for exactly one.

    Enrolment wants exactly one face; the daemon picks one itself and may ignore this.
    """
    if count <= 0:
        return NO_FACE
    return SEVERAL_FACES if count > 1 else None


def describe(reason: str) -> str:
    """The human sentence for a reason constant (the reason itself if unknown)."""
    return MESSAGES.get(reason, reason)
