"""Tests for twinlock.daemon.faces: detection, landmarks, alignment and the detector spec.

Detectors run on real photos (LFW, ORL, the face_recognition examples): a preprocessing mistake
here silently ruins every model trained or run behind it, and only real faces show it.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_data

from twinlock.daemon.errors import DetectorError, ModelError, TwinLockError, UsageError
from twinlock.daemon.faces.align import (
    align_face,
    similarity_transform,
    template_points,
    to_model_input,
)
from twinlock.daemon.faces.blazeface import VARIANTS, BlazeFaceDetector, find_model_file
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.faces.pipeline import DetectorSpec, FacePipeline
from twinlock.daemon.faces.types import Face
from twinlock.daemon.faces.yunet import YuNetDetector

#: the first LFW images in sorted order; each shows one frontal face and nobody else
LFW_SINGLE = (
    "AJ_Cook/AJ_Cook_0001.jpg",
    "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
    "Aaron_Patterson/Aaron_Patterson_0001.jpg",
    "Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
    "Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
    "Aaron_Pena/Aaron_Pena_0001.jpg",
)
YUNET_FILE = ("face_detection_yunet", "face_detection_yunet_2023mar.onnx")


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def blazeface(request: pytest.FixtureRequest) -> BlazeFaceDetector:
    """Both BlazeFace variants: each has its own anchors and input size to get right."""
    return BlazeFaceDetector(request.param)


@pytest.fixture(scope="module")
def short_detector() -> BlazeFaceDetector:
    return BlazeFaceDetector("short")


@pytest.fixture(scope="module")
def yunet() -> YuNetDetector:
    return YuNetDetector(require_data(*YUNET_FILE))


@pytest.fixture(scope="module")
def lfw_images(lfw_dir: Path) -> dict[str, np.ndarray]:
    return {name: load_image(lfw_dir / name) for name in LFW_SINGLE}


def _check_landmarks(face: Face) -> None:
    """Eyes above nose above mouth, image-left eye left of image-right eye, all inside the box."""
    (elx, ely), (erx, ery), (nx, ny), (_mx, my) = face.landmarks.astype(float)
    assert elx < erx, f"eyes swapped: {face.landmarks.tolist()}"
    assert max(ely, ery) < ny < my, f"eyes/nose/mouth out of order: {face.landmarks.tolist()}"
    assert elx < nx < erx, "nose not between the eyes"
    x, y, w, h = face.box
    assert w > 0 and h > 0
    for px, py in face.landmarks:
        assert x < px < x + w and y < py < y + h, f"landmark {(px, py)} outside box {face.box}"
    # a 250x250 LFW face has eyes 30-60 px apart; a scale bug shows up here
    assert 25 < face.eye_distance < 70, face.eye_distance


# --------------------------------------------------------------------------------------------------
# BlazeFace
# --------------------------------------------------------------------------------------------------


def test_blazeface_one_face_per_lfw_image(
    blazeface: BlazeFaceDetector, lfw_images: dict[str, np.ndarray]
) -> None:
    for name, image in lfw_images.items():
        faces = blazeface.detect(image)
        assert len(faces) == 1, f"{blazeface.name} found {len(faces)} faces in {name}"
        face = faces[0]
        assert 0.5 <= face.score <= 1.0
        assert face.landmarks.shape == (4, 2) and face.landmarks.dtype == np.float32
        _check_landmarks(face)
        # deep-funneled LFW centres the face: its box centre is near the image centre
        cx, cy = face.center
        assert abs(cx - 125) < 30 and abs(cy - 125) < 30, (name, face.box)


def test_blazeface_two_people(blazeface: BlazeFaceDetector, examples_dir: Path) -> None:
    image = load_image(examples_dir / "two_people.jpg")
    faces = blazeface.detect(image)
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    left, right = sorted(faces, key=lambda f: f.center[0])
    # one person on each half of the picture, boxes apart
    assert left.center[0] < image.shape[1] / 2 < right.center[0]
    assert left.box[0] + left.box[2] < right.box[0]
    for face in faces:
        (elx, ely), (erx, ery), (_nx, ny), (_mx, my) = face.landmarks.astype(float)
        assert elx < erx and max(ely, ery) < ny < my


def test_blazeface_finds_nothing_in_blank_or_noise(blazeface: BlazeFaceDetector) -> None:
    rng = np.random.default_rng(0)
    assert blazeface.detect(np.full((250, 250, 3), 128, np.uint8)) == []
    assert blazeface.detect(np.zeros((480, 640, 3), np.uint8)) == []
    assert blazeface.detect(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) == []


def test_blazeface_letterbox_maps_back_to_image_pixels(
    blazeface: BlazeFaceDetector, lfw_images: dict[str, np.ndarray]
) -> None:
    """A 640x480 frame is letterboxed to the square input; landmarks must come back in frame pixels.

    Reference: the same frame padded to a square by hand (no letterbox left for the detector to
    undo). The face is small at this scale, so only the hand-padded square gives a tight check.
    """
    for index, (ox, oy) in enumerate([(300, 150), (20, 210), (390, 0)]):
        image = lfw_images[LFW_SINGLE[index]]
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[oy:oy + 250, ox:ox + 250] = image
        square = np.zeros((640, 640, 3), np.uint8)
        square[80:560] = frame
        (in_frame,) = blazeface.detect(frame)
        (in_square,) = blazeface.detect(square)
        np.testing.assert_allclose(in_frame.landmarks, in_square.landmarks - [0, 80], atol=2.0)
        np.testing.assert_allclose(
            np.array(in_frame.box[:2]), np.array(in_square.box[:2]) - [0, 80], atol=2.0
        )
        # and the face is where it was pasted (coarse: it is ~50 px wide in the model's input)
        (alone,) = blazeface.detect(image)
        np.testing.assert_allclose(in_frame.landmarks, alone.landmarks + [ox, oy], atol=12.0)


class RecordingModel:
    """Wraps the detector's real TFLiteModel and keeps the last input it was given."""

    def __init__(self, model: object) -> None:
        self._model = model
        self.outputs = model.outputs  # type: ignore[attr-defined]
        self.last_input: np.ndarray | None = None

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        self.last_input = arrays[0].copy()
        return self._model.run(*arrays)  # type: ignore[attr-defined]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_blazeface_input_is_rgb_in_minus_one_to_one(variant: str) -> None:
    """MediaPipe's face detectors take RGB scaled to [-1, 1]: pure red must be (1, -1, -1)."""
    detector = BlazeFaceDetector(variant)
    recorder = RecordingModel(detector.model)
    detector.model = recorder  # type: ignore[assignment]
    image = np.zeros((250, 250, 3), np.uint8)
    image[..., 0] = 255
    image[:125, :, 2] = 255  # top half magenta, to check the rows are not flipped either
    detector.detect(image)
    size = VARIANTS[variant].input_size
    tensor = recorder.last_input
    assert tensor is not None and tensor.shape == (1, size, size, 3) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, size // 4, size // 2], [1.0, -1.0, 1.0])
    np.testing.assert_allclose(tensor[0, 3 * size // 4, size // 2], [1.0, -1.0, -1.0])


def test_orl_grey_pgm_through_load_image(orl_dir: Path, short_detector: BlazeFaceDetector) -> None:
    path = orl_dir / "s1" / "1.pgm"
    image = load_image(path)
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image.dtype == np.uint8 and image.shape == (*grey.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], grey)
    faces = short_detector.detect(image)
    assert len(faces) == 1
    (elx, ely), (erx, ery), (_nx, ny), (_mx, my) = faces[0].landmarks.astype(float)
    assert elx < erx and max(ely, ery) < ny < my


# --------------------------------------------------------------------------------------------------
# YuNet
# --------------------------------------------------------------------------------------------------


def test_yunet_agrees_with_blazeface_on_eyes(
    yunet: YuNetDetector, blazeface: BlazeFaceDetector, lfw_images: dict[str, np.ndarray]
) -> None:
    """Two independent detectors put the eyes in the same place: both landmark mappings are right.

    Their eye definitions differ slightly (YuNet's eyes sit a little wider apart), so each eye
    may differ by a few pixels; the midpoint between the eyes agrees more closely.
    """
    for name, image in lfw_images.items():
        (by_yunet,) = yunet.detect(image)
        (by_blaze,) = blazeface.detect(image)
        _check_landmarks(by_yunet)
        eye_gap = np.linalg.norm(by_yunet.landmarks[:2] - by_blaze.landmarks[:2], axis=1)
        assert eye_gap.max() < 8.0, (name, eye_gap)
        mid_gap = np.linalg.norm(
            by_yunet.landmarks[:2].mean(0) - by_blaze.landmarks[:2].mean(0)
        )
        assert mid_gap < 6.0, (name, mid_gap)


def test_yunet_two_people_and_blank(yunet: YuNetDetector, examples_dir: Path) -> None:
    assert len(yunet.detect(load_image(examples_dir / "two_people.jpg"))) == 2
    assert yunet.detect(np.full((240, 320, 3), 128, np.uint8)) == []


def test_yunet_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="nothing.onnx"):
        YuNetDetector(tmp_path / "nothing.onnx")


# --------------------------------------------------------------------------------------------------
# alignment
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "zoom", "tolerance"), [(112, 1.0, 0.09), (112, 0.8, 0.05)])
def test_align_round_trip_puts_eyes_on_template(
    short_detector: BlazeFaceDetector,
    lfw_images: dict[str, np.ndarray],
    size: int,
    zoom: float,
    tolerance: float,
) -> None:
    """Detect, align, detect again on the crop: the eyes must sit on the template points.

    A transposed, inverted or mis-scaled transform moves them by tens of pixels. The tolerance
    covers the 4-point fit's residual and detector noise on a tightly cropped face.
    """
    target = template_points(zoom) * size
    for name, image in lfw_images.items():
        (face,) = short_detector.detect(image)
        crop = align_face(image, face, size, zoom)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        again = short_detector.detect(crop)
        assert len(again) == 1, f"{name}: {len(again)} faces on the aligned crop"
        error = np.linalg.norm(again[0].landmarks[:2] - target[:2], axis=1)
        assert error.max() < tolerance * size, (name, error)


def test_pipeline_primary_and_faces(
    short_detector: BlazeFaceDetector, lfw_images: dict[str, np.ndarray], examples_dir: Path
) -> None:
    pipeline = FacePipeline(short_detector, crop_size=96)
    aligned, count = pipeline.primary(lfw_images[LFW_SINGLE[0]])
    assert count == 1 and aligned is not None and aligned.crop.shape == (96, 96, 3)
    assert pipeline.primary(np.zeros((100, 100, 3), np.uint8)) == (None, 0)
    two = load_image(examples_dir / "two_people.jpg")
    assert len(pipeline.faces(two)) == 2
    largest, count = pipeline.primary(two, "largest")
    assert count == 2
    assert largest.face.size == max(f.size for f in short_detector.detect(two))


def _rotation(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


@pytest.mark.parametrize(("angle", "scale", "shift"), [(0.0, 1.0, (0, 0)), (23.0, 0.37, (41, -7)),
                                                       (-150.0, 2.5, (-3.5, 120.25))])
def test_similarity_transform_recovers_known_transform(
    angle: float, scale: float, shift: tuple[float, float]
) -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 250, (4, 2))
    expected = np.hstack([scale * _rotation(angle), np.array(shift, float)[:, None]])
    dst = src @ expected[:, :2].T + expected[:, 2]
    matrix = similarity_transform(src, dst)
    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix, expected, atol=1e-9)
    # and it is what cv2.warpAffine / cv2.transform understand
    mapped = cv2.transform(src[None].astype(np.float64), matrix)[0]
    np.testing.assert_allclose(mapped, dst, atol=1e-9)


def test_similarity_transform_never_reflects() -> None:
    """A mirrored face must not be 'aligned' by flipping it back: the fit stays a rotation."""
    src = template_points() * 112
    mirrored = src.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]  # a perfect reflection would map src onto this exactly
    matrix = similarity_transform(src, mirrored)
    linear = matrix[:, :2]
    assert np.linalg.det(linear) > 0
    # rotation times a positive scale: columns orthogonal, equal length
    assert abs(linear[:, 0] @ linear[:, 1]) < 1e-9
    assert np.isclose(np.linalg.norm(linear[:, 0]), np.linalg.norm(linear[:, 1]))
    # a reflection would fit exactly; the best rotation cannot
    mapped = src @ linear.T + matrix[:, 2]
    assert np.abs(mapped - mirrored).max() > 1.0


def test_similarity_transform_is_least_squares_on_noisy_points() -> None:
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (20, 2))
    expected = np.hstack([1.7 * _rotation(-12.0), np.array([[5.0], [9.0]])])
    dst = src @ expected[:, :2].T + expected[:, 2] + rng.normal(0, 0.01, src.shape)
    np.testing.assert_allclose(similarity_transform(src, dst), expected, atol=0.01)


def test_template_zoom_shrinks_around_centre() -> None:
    full, small = template_points(1.0), template_points(0.5)
    np.testing.assert_allclose(small - 0.5, (full - 0.5) * 0.5)
    assert ((full > 0) & (full < 1)).all()


def test_to_model_input_grey_matches_opencv() -> None:
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    crops[0, :4, :4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]
    grey = to_model_input(crops, 1)
    assert grey.shape == (3, 40, 40, 1) and grey.dtype == np.uint8
    for crop, out in zip(crops, grey, strict=True):
        reference = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        assert np.abs(out[..., 0].astype(int) - reference.astype(int)).max() <= 1
    # red and blue are weighted differently: catches an RGB/BGR swap
    assert grey[0, 0, 0, 0] == 76 and grey[0, 0, 2, 0] == 29
    # rounded, not truncated, like OpenCV: 0.587 * 255 = 149.7 -> 150
    assert grey[0, 0, 1, 0] == 150 and grey[0, 0, 3, 0] == 255
    mean_gap = np.abs(grey[..., 0].astype(float) - [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY)
                                                   for c in crops]).mean()
    assert mean_gap < 0.05, mean_gap
    # a single crop works too, colour passes through untouched
    assert to_model_input(crops[0], 1).shape == (40, 40, 1)
    assert to_model_input(crops, 3) is crops
    with pytest.raises(ValueError):
        to_model_input(crops, 2)


# --------------------------------------------------------------------------------------------------
# building detectors and finding their files
# --------------------------------------------------------------------------------------------------


def test_detector_spec_builds_each_detector() -> None:
    assert isinstance(DetectorSpec().build(), BlazeFaceDetector)
    full = DetectorSpec(variant="full").build()
    assert isinstance(full, BlazeFaceDetector) and full.name == "blazeface-full"
    yunet_path = require_data(*YUNET_FILE)
    built = DetectorSpec(type="yunet", model_path=str(yunet_path)).build()
    assert isinstance(built, YuNetDetector)
    assert DetectorSpec(**DetectorSpec(variant="full").to_dict()) == DetectorSpec(variant="full")
    assert DetectorSpec().describe() == "blazeface:short:bundled:0.5"


def test_detector_spec_errors() -> None:
    with pytest.raises(UsageError, match="unknown detector type 'haar'"):
        DetectorSpec(type="haar").build()  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="model path"):
        DetectorSpec(type="yunet").build()
    with pytest.raises(DetectorError, match="unknown BlazeFace variant 'medium'"):
        DetectorSpec(variant="medium").build()


def test_blazeface_bad_model_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model.tflite"
    with pytest.raises(ModelError, match="no_such_model.tflite.*not found"):
        BlazeFaceDetector("short", model_path=missing)
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(ModelError, match="garbage.tflite"):
        BlazeFaceDetector("short", model_path=garbage)


def test_blazeface_model_of_the_other_variant_is_refused() -> None:
    """The full-range file with the short-range anchors would decode nonsense boxes."""
    full_file = find_model_file(VARIANTS["full"].file)
    with pytest.raises(DetectorError, match="expected 896"):
        BlazeFaceDetector("short", model_path=full_file)


def test_find_model_file_missing_says_where_it_comes_from() -> None:
    with pytest.raises(DetectorError) as caught:
        find_model_file("no_such_detector.tflite")
    message = str(caught.value)
    assert isinstance(caught.value, TwinLockError)
    assert "no_such_detector.tflite" in message
    assert "twinlock add-detector" in message and "model folder" in message


def test_find_model_file_finds_both_variants() -> None:
    for options in VARIANTS.values():
        path = find_model_file(options.file)
        assert path.is_file() and path.name == options.file and path.parent.name == "data"
