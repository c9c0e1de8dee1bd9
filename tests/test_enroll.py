"""Tests for enrolment (trainer/household/enroll.py) and its store (trainer/household/enroll_store.py) on real faces.

Photos come from face_recognition_examples; camera enrolment replays frames 82-210 of the
example clip (Lin-Manuel Miranda alone in frame) through ReplayCamera on a simulated clock, so
the min interval and the timeout are checked in video time without waiting for it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from twinlock.daemon.camera.replay import ReplayCamera
from twinlock.daemon.errors import UsageError
from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.align import align_face
from twinlock.daemon.faces.images import decode_image, load_image
from twinlock.daemon.faces.pipeline import DetectorSpec
from twinlock.daemon.recognition.gallery import load_gallery
from twinlock.daemon.recognition.model import FaceEmbedder, read_metadata
from twinlock.trainer.household.enroll import (
    DUPLICATE_COSINE,
    NEAR_DUPLICATE,
    UNREADABLE,
    CaptureProgress,
    enroll_from_camera,
    enroll_from_images,
    export_gallery,
    fit_crop,
    reembed,
)
from twinlock.trainer.household.enroll_store import THUMBNAIL_PX, EnrolmentStore, default_path

CLIP = "short_hamilton_clip.mp4"
MIRANDA_FIRST, MIRANDA_LAST = 82, 210
CLIP_FPS = 29.97
OTHER_MODEL_ID = "test-other-model"


class FakeClock:
    """Monotonic time that only moves when someone sleeps: replay paces frames in video time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EnrolmentStore]:
    with EnrolmentStore(tmp_path / "state" / "enrolment.db") as opened:
        yield opened


@pytest.fixture(scope="module")
def miranda_frames(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames 82-210 of the clip as PNG files (lossless): the replay folder camera plays them."""
    folder = tmp_path_factory.mktemp("miranda-frames")
    camera = ReplayCamera(examples_dir / CLIP, realtime=False)
    camera.open()
    try:
        while (frame := camera.read()) is not None:
            if MIRANDA_FIRST <= frame.source_index <= MIRANDA_LAST:
                cv2.imwrite(str(folder / f"frame_{frame.source_index:04d}.png"),
                            frame.image[:, :, ::-1])
    finally:
        camera.close()
    assert len(list(folder.iterdir())) == MIRANDA_LAST - MIRANDA_FIRST + 1
    return folder


@pytest.fixture(scope="module")
def other_model(door_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/default re-exported under another model_id (same tower)."""
    folder = tmp_path_factory.mktemp("models") / "other"
    shutil.copytree(door_model, folder)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["model_id"] != OTHER_MODEL_ID
    meta["model_id"] = OTHER_MODEL_ID
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def obama_photos(examples_dir: Path) -> list[Path]:
    return [examples_dir / "obama.jpg", examples_dir / "obama2.jpg"]


def replay(folder: Path, clock: FakeClock) -> ReplayCamera:
    return ReplayCamera(folder, realtime=True, fps=CLIP_FPS, clock=clock, sleep=clock.sleep)


def clip_frame(source: str) -> int:
    """Clip frame number of a camera sample source 'camera:replay:<folder>#<position>'."""
    assert source.startswith("camera:replay:"), source
    return MIRANDA_FIRST + int(source.rsplit("#", 1)[1])


# --------------------------------------------------------------------------------------------
# photos


def test_obama_enrols_from_two_photos(store: EnrolmentStore, examples_dir: Path,
                                      door_model: Path) -> None:
    report = enroll_from_images(store, "obama", obama_photos(examples_dir), door_model)
    model_id = read_metadata(door_model).model_id
    assert report.accepted == ["obama.jpg", "obama2.jpg"]
    assert report.rejected == []
    assert (report.user, report.model_id, report.anchors) == ("obama", model_id, 2)
    assert [(u.name, u.samples, u.anchors_for_model) for u in store.users(model_id)] == \
        [("obama", 2, 2)]

    embedder = FaceEmbedder(door_model)
    anchors = store.anchors(model_id)
    assert list(anchors) == ["obama"]
    assert anchors["obama"].shape == (2, embedder.meta.embedding_dim)
    assert anchors["obama"].dtype == np.float32
    # the stored crop is lossless: embedding it again gives the stored anchor exactly
    stored = store.samples_missing_anchor("no-such-model")
    assert [s.source for s in stored] == ["obama.jpg", "obama2.jpg"]
    for sample, anchor in zip(stored, anchors["obama"], strict=True):
        crop = sample.crop()
        assert crop.shape == (embedder.meta.input_size, embedder.meta.input_size, 3)
        np.testing.assert_allclose(embedder.embed(crop)[0], anchor, atol=1e-6)
    a, b = anchors["obama"] / np.linalg.norm(anchors["obama"], axis=1, keepdims=True)
    assert a @ b < DUPLICATE_COSINE  # two real photos are two anchors

    infos = store.samples("obama")
    assert infos[0].quality["brightness"] >= q.DEFAULT_THRESHOLDS.min_brightness
    assert infos[0].quality["face_px"] >= q.DEFAULT_THRESHOLDS.min_face_px
    thumb = decode_image(store.thumbnail(infos[0].id))
    assert thumb.shape == (THUMBNAIL_PX, THUMBNAIL_PX, 3)


def test_a_copy_of_an_enrolled_photo_is_a_near_duplicate(
        store: EnrolmentStore, examples_dir: Path, door_model: Path, tmp_path: Path) -> None:
    enroll_from_images(store, "obama", obama_photos(examples_dir), door_model)
    copy = tmp_path / "copy.jpg"
    shutil.copyfile(examples_dir / "obama.jpg", copy)
    resaved = tmp_path / "resaved.jpg"  # the same picture re-compressed
    image = load_image(examples_dir / "obama2.jpg")
    cv2.imwrite(str(resaved), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])

    report = enroll_from_images(store, "Obama", [copy, resaved], door_model)
    assert report.rejected == [("copy.jpg", NEAR_DUPLICATE), ("resaved.jpg", NEAR_DUPLICATE)]
    assert report.accepted == []
    assert report.anchors == 2
    assert [(u.name, u.samples) for u in store.users()] == [("obama", 2)]


def test_the_same_photo_twice_in_one_call_is_kept_once(
        store: EnrolmentStore, examples_dir: Path, door_model: Path) -> None:
    photo = examples_dir / "obama.jpg"
    report = enroll_from_images(store, "obama", [photo, photo], door_model)
    assert report.accepted == ["obama.jpg"]
    assert report.rejected == [("obama.jpg", NEAR_DUPLICATE)]


def _two_people(examples: Path, tmp: Path) -> Path:
    return examples / "two_people.jpg"


def _dark(examples: Path, tmp: Path) -> Path:
    image = load_image(examples / "obama.jpg")
    path = tmp / "dark.png"
    cv2.imwrite(str(path), np.rint(image[:, :, ::-1] * 0.1).astype(np.uint8))
    return path


def _text(examples: Path, tmp: Path) -> Path:
    path = tmp / "notes.jpg"
    path.write_text("not a photo at all\n")
    return path


def _blank(examples: Path, tmp: Path) -> Path:
    path = tmp / "blank.png"
    cv2.imwrite(str(path), np.full((480, 640, 3), 128, np.uint8))
    return path


@pytest.mark.parametrize(("make", "reason"), [
    (_two_people, q.SEVERAL_FACES),
    (_dark, q.TOO_DARK),
    (_text, UNREADABLE),
    (_blank, q.NO_FACE),
])
def test_bad_photos_are_refused_with_their_reason(
        store: EnrolmentStore, examples_dir: Path, door_model: Path, tmp_path: Path,
        make: Callable[[Path, Path], Path], reason: str) -> None:
    path = make(examples_dir, tmp_path)
    report = enroll_from_images(store, "someone", [path], door_model)
    assert report.rejected == [(path.name, reason)]
    assert report.accepted == [] and report.anchors == 0
    assert store.users() == []  # nothing kept: no user created


def test_max_samples_caps_a_user(store: EnrolmentStore, examples_dir: Path,
                                 door_model: Path) -> None:
    report = enroll_from_images(store, "obama", obama_photos(examples_dir), door_model,
                                max_samples=1)
    assert report.accepted == ["obama.jpg"]
    assert report.rejected == [("obama2.jpg", "too_many")]


# --------------------------------------------------------------------------------------------
# camera


def test_camera_enrolment_keeps_spread_frames_of_miranda(
        store: EnrolmentStore, miranda_frames: Path, door_model: Path) -> None:
    clock = FakeClock()
    updates: list[CaptureProgress] = []
    report = enroll_from_camera(store, "lin", replay(miranda_frames, clock), door_model,
                                count=5, min_interval_s=0.7, timeout_s=60,
                                progress=updates.append, clock=clock)
    assert report.stopped == "count"
    assert len(report.accepted) == 5 and report.anchors == 5
    frames = [clip_frame(source) for source in report.accepted]
    assert all(MIRANDA_FIRST <= f <= MIRANDA_LAST for f in frames)
    gaps = np.diff(frames) / CLIP_FPS
    assert gaps.min() >= 0.7, gaps
    assert [(u.name, u.samples) for u in store.users()] == [("lin", 5)]
    # progress after every frame: counts only grow, and the last one is the final state
    assert len(updates) == report.seen
    kept = [u.kept for u in updates]
    assert kept == sorted(kept) and kept[-1] == 5
    assert all(u.count == 5 and u.timeout_s == 60 for u in updates)


def test_camera_enrolment_refuses_an_unchanged_pose(
        store: EnrolmentStore, miranda_frames: Path, door_model: Path, tmp_path: Path) -> None:
    still = tmp_path / "still"
    still.mkdir()
    for i in range(8):  # a person who does not move: the same picture again and again
        shutil.copyfile(miranda_frames / "frame_0150.png", still / f"f{i}.png")
    clock = FakeClock()
    report = enroll_from_camera(store, "lin", replay(still, clock), door_model, count=5,
                                min_interval_s=0.0, clock=clock)
    assert report.stopped == "camera_ended"
    assert len(report.accepted) == 1
    assert report.reasons == {NEAR_DUPLICATE: 7}


def test_camera_enrolment_stops_at_the_timeout(
        store: EnrolmentStore, miranda_frames: Path, door_model: Path) -> None:
    clock = FakeClock()
    report = enroll_from_camera(store, "lin", replay(miranda_frames, clock), door_model,
                                count=20, min_interval_s=0.7, timeout_s=2.0, clock=clock)
    assert report.stopped == "timeout"
    assert 1 <= len(report.accepted) <= 3  # at most one per 0.7 s in 2 s
    assert clock.now == pytest.approx(2.0, abs=1.5 / CLIP_FPS)


def test_progress_returning_false_cancels(
        store: EnrolmentStore, miranda_frames: Path, door_model: Path) -> None:
    clock = FakeClock()
    report = enroll_from_camera(store, "lin", replay(miranda_frames, clock), door_model,
                                progress=lambda p: p.seen < 3, clock=clock)
    assert (report.stopped, report.seen) == ("cancelled", 3)


# --------------------------------------------------------------------------------------------
# the store


def test_store_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "enrol" / "enrolment.db"
    with EnrolmentStore(path) as opened:
        opened.add_user("alice")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
        for suffix in ("-wal", "-shm"):
            companion = Path(f"{path}{suffix}")
            if companion.exists():
                assert stat.S_IMODE(companion.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    path.chmod(0o644)  # copied around with loose rights: reopening makes it private again
    EnrolmentStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_default_path_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("TWINLOCK_ENROL_DB", str(tmp_path / "x.db"))
    assert default_path() == tmp_path / "x.db"
    monkeypatch.delenv("TWINLOCK_ENROL_DB")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_path() == tmp_path / ".local" / "share" / "twinlock" / "enrolment.db"


def test_rename_and_remove_users(store: EnrolmentStore, examples_dir: Path,
                                 door_model: Path) -> None:
    model_id = read_metadata(door_model).model_id
    enroll_from_images(store, "obama", obama_photos(examples_dir), door_model)
    enroll_from_images(store, "biden", [examples_dir / "biden.jpg"], door_model)

    assert store.rename_user("OBAMA", "Barack Obama") == "Barack Obama"
    assert sorted(store.anchors(model_id)) == ["Barack Obama", "biden"]
    assert [s.user for s in store.samples("barack obama")] == ["Barack Obama"] * 2
    with pytest.raises(UsageError, match="already exists"):
        store.rename_user("Barack Obama", "Biden")
    with pytest.raises(UsageError, match="no user"):
        store.rename_user("nobody", "somebody")

    assert store.remove_user("barack obama") == 2
    assert [u.name for u in store.users()] == ["biden"]
    assert list(store.anchors(model_id)) == ["biden"]
    assert len(store.samples()) == 1
    conn = sqlite3.connect(store.path)  # the cascades reached every table
    try:
        assert conn.execute("SELECT COUNT(*) FROM anchors").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 1
    finally:
        conn.close()
    with pytest.raises(UsageError, match="no user"):
        store.remove_user("Barack Obama")


@pytest.mark.parametrize("name", ["", "x" * 65, "../etc", "a;b", " lead", "trail ", "...",
                                  "tab\there"])
def test_bad_user_names_are_usage_errors(store: EnrolmentStore, name: str) -> None:
    with pytest.raises(UsageError):
        store.add_user(name)


def test_good_user_names(store: EnrolmentStore) -> None:
    for name in ("Ana-María O.Neil_2", "x" * 64, "李 雷"):
        assert store.add_user(name) == name
    with pytest.raises(UsageError, match="already exists"):
        store.add_user("ana-maría o.neil_2")


# --------------------------------------------------------------------------------------------
# models and the gallery


def test_anchors_are_per_model(store: EnrolmentStore, examples_dir: Path, door_model: Path,
                               other_model: Path) -> None:
    default_id = read_metadata(door_model).model_id
    enroll_from_images(store, "obama", obama_photos(examples_dir), door_model)
    assert store.anchors(OTHER_MODEL_ID) == {}
    assert len(store.samples_missing_anchor(OTHER_MODEL_ID)) == 2
    assert store.users(OTHER_MODEL_ID)[0].anchors_for_model == 0

    assert reembed(store, other_model) == 2
    assert reembed(store, other_model) == 0
    # same tower, same stored crops: the re-made anchors equal those made from the photos
    np.testing.assert_allclose(store.anchors(OTHER_MODEL_ID)["obama"],
                               store.anchors(default_id)["obama"], atol=1e-6)

    # biden is enrolled with the other model only: the default model's gallery lacks him
    report = enroll_from_images(store, "biden", [examples_dir / "biden.jpg"], other_model)
    assert report.model_id == OTHER_MODEL_ID and report.anchors == 1
    assert sorted(store.gallery(OTHER_MODEL_ID).users) == ["biden", "obama"]
    default_gallery = store.gallery(default_id)
    assert default_gallery.model_id == default_id
    assert list(default_gallery.users) == ["obama"]
    assert reembed(store, door_model) == 1
    assert sorted(store.gallery(default_id).users) == ["biden", "obama"]


def test_export_gallery_is_read_back_by_the_daemon(
        store: EnrolmentStore, examples_dir: Path, other_model: Path, door_model: Path,
        tmp_path: Path) -> None:
    enroll_from_images(store, "obama", obama_photos(examples_dir), door_model)
    out = tmp_path / "door" / "gallery.json"
    written = export_gallery(store, other_model, out)  # re-embeds for the other model first
    loaded = load_gallery(out)
    assert loaded.model_id == written.model_id == read_metadata(other_model).model_id
    assert list(loaded.users) == ["obama"]
    np.testing.assert_allclose(loaded.users["obama"].anchors,
                               store.anchors(OTHER_MODEL_ID)["obama"], atol=1e-6)
    assert loaded.users["obama"].sources == ["obama.jpg", "obama2.jpg"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    store.remove_user("obama")  # removing the last resident must reach the door too
    assert export_gallery(store, other_model, out).users == {}
    assert load_gallery(out).users == {}


def test_fit_crop_reframes_like_aligning_again(examples_dir: Path) -> None:
    image = load_image(examples_dir / "obama.jpg")
    face = DetectorSpec().build().detect(image)[0]
    for (size, zoom), (new_size, new_zoom) in [((112, 1.0), (64, 0.9)), ((64, 1.0), (64, 0.8))]:
        crop = align_face(image, face, size, zoom)
        direct = align_face(image, face, new_size, new_zoom)
        fitted = fit_crop(crop, zoom, new_size, new_zoom)
        naive = cv2.resize(crop, (new_size, new_size), interpolation=cv2.INTER_AREA)
        m = new_size // 6  # the centre: zooming out replicates the border
        err = np.abs(fitted[m:-m, m:-m].astype(float) - direct[m:-m, m:-m]).mean()
        naive_err = np.abs(naive[m:-m, m:-m].astype(float) - direct[m:-m, m:-m]).mean()
        assert err < 10 and err < naive_err / 2, (err, naive_err)


def test_fit_crop_reframes_across_alignment_templates(examples_dir: Path) -> None:
    """A crop stored for an arcface-framed model, re-framed for a dlib-chip model, looks like the
    dlib chip aligned from the photo wherever the stored crop has pixels."""
    image = load_image(examples_dir / "obama.jpg")
    face = DetectorSpec().build().detect(image)[0]
    stored = align_face(image, face, 112, 0.8)  # arcface template, zoomed out
    direct = align_face(image, face, 150, 1.0, "dlib-4pt")
    fitted = fit_crop(stored, 0.8, 150, 1.0, "arcface-4pt", "dlib-4pt")
    unchanged = cv2.resize(stored, (150, 150), interpolation=cv2.INTER_LINEAR)
    centre = (slice(45, 115), slice(40, 110))  # eyes to mouth: inside the stored crop
    err = np.abs(fitted[centre].astype(float) - direct[centre]).mean()
    naive = np.abs(unchanged[centre].astype(float) - direct[centre]).mean()
    assert err < 10 and err < naive / 2, (err, naive)
    assert fit_crop(direct, 1.0, 150, 1.0, "dlib-4pt", "dlib-4pt") is direct


def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path, examples_dir: Path) -> None:
    """Stores made before crops recorded their template keep their samples, as arcface crops."""
    import sqlite3

    path = tmp_path / "old.db"
    with EnrolmentStore(path) as store:
        store.add_user("ann")
        crop = np.zeros((64, 64, 3), np.uint8)
        store.add_sample("ann", "a.jpg", crop, crop, {"blur": 1.0})
    conn = sqlite3.connect(path)  # make it what version 1 wrote
    conn.execute("ALTER TABLE samples DROP COLUMN crop_template")
    conn.execute("ALTER TABLE users DROP COLUMN strict_far")  # v3's
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with EnrolmentStore(path) as store:
        (sample,) = store.stored_samples("ann")
        assert sample.crop_template == "arcface-4pt" and sample.source == "a.jpg"
        store.add_sample("ann", "b.jpg", crop, crop, {"blur": 1.0}, crop_template="dlib-4pt")
        assert [s.crop_template for s in store.stored_samples("ann")] == [
            "arcface-4pt", "dlib-4pt"]
        assert [u.strict_far for u in store.users()] == [None]  # v3: the door's threshold
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    conn.close()
