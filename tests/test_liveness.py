"""Liveness: the face mesh on real pictures, the blink and parallax measures, the door's attempt
logic with liveness on a fake clock, the real clip through the daemon, and photo attacks made from
real pictures replayed through the daemon (docs/how-it-works/liveness.md)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from daemon_helpers import CLIP, MIRANDA_FRAMES, Doorway, enrol_miranda, scored, write_config

from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.config.schema import Config
from twinlock.daemon.door.actions import LogAction
from twinlock.daemon.door.assemble import liveness_settings
from twinlock.daemon.door.liveness import (
    LivenessSettings,
    LivenessTracker,
    eye_aspect_ratio,
    nose_parallax,
)
from twinlock.daemon.errors import ConfigError
from twinlock.daemon.faces.blazeface import BlazeFaceDetector
from twinlock.daemon.faces.mesh import FaceMesh, Mesh
from twinlock.daemon.recognition.verify import FrameVerdict
from twinlock.daemon.storage.audit import AuditLog
from twinlock.trainer.evaluation.spoof import closed_eyes, run_replay, write_attack_video

REPO = Path(__file__).resolve().parents[1]
#: models/compact: at its door threshold it never opens for the clip's performer, so the
#: liveness of an unlock cannot be shown with it
WEAK_TOWER = "4a2d4b3a1b1b09d7"


# --------------------------------------------------------------------------------------------
# the mesh on real pictures


@pytest.fixture(scope="module")
def portrait(examples_dir: Path) -> np.ndarray:
    image = cv2.imread(str(examples_dir / "lin-manuel-miranda.png"))
    assert image is not None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def mesh_model() -> FaceMesh:
    return FaceMesh(eyes=True)


@pytest.fixture(scope="module")
def detector() -> BlazeFaceDetector:
    return BlazeFaceDetector()


@pytest.fixture(scope="module")
def portrait_mesh(portrait: np.ndarray, mesh_model: FaceMesh,
                  detector: BlazeFaceDetector) -> Mesh:
    faces = detector.detect(portrait)
    assert len(faces) == 1
    return mesh_model.landmarks(portrait, faces[0])


pytestmark = [pytest.mark.data]


def test_mesh_lands_on_the_face_and_sees_open_eyes(portrait_mesh: Mesh,
                                                   detector: BlazeFaceDetector,
                                                   portrait: np.ndarray) -> None:
    x, y, w, h = detector.detect(portrait)[0].box
    xy = portrait_mesh.xy
    assert portrait_mesh.presence > 0.9
    inside = (xy[:, 0] > x - 0.3 * w) & (xy[:, 0] < x + 1.3 * w) & \
        (xy[:, 1] > y - 0.5 * h) & (xy[:, 1] < y + 1.3 * h)
    assert inside.mean() > 0.98
    # nose tip (1) between the eyes' outer corners (33, 263), below them, above the chin (152)
    assert xy[33, 0] < xy[1, 0] < xy[263, 0]
    assert max(xy[33, 1], xy[263, 1]) < xy[1, 1] < xy[152, 1]
    assert 0.2 < eye_aspect_ratio(portrait_mesh.points) < 0.45
    assert portrait_mesh.eye_openness is not None and 0.3 < portrait_mesh.eye_openness < 0.55


@pytest.fixture(scope="module")
def shut_mesh(portrait: np.ndarray, portrait_mesh: Mesh, mesh_model: FaceMesh,
              detector: BlazeFaceDetector) -> Mesh:
    """The portrait with its eyes painted shut (trainer/evaluation/spoof.py), through the mesh again."""
    shut = closed_eyes(portrait, portrait_mesh.points)
    return mesh_model.landmarks(shut, detector.detect(shut)[0])


def test_eyes_painted_shut_read_as_closed_by_the_iris_model_not_the_mesh(
        portrait_mesh: Mesh, shut_mesh: Mesh) -> None:
    """Why blink uses the iris model's eye contours: the mesh's eyelid points hardly move when
    the eyes are shut, the iris model's lids close."""
    assert shut_mesh.eye_openness is not None and portrait_mesh.eye_openness is not None
    assert shut_mesh.eye_openness < 0.6 * portrait_mesh.eye_openness
    assert eye_aspect_ratio(shut_mesh.points) > 0.8 * eye_aspect_ratio(portrait_mesh.points)


def _turned(points: np.ndarray, degrees: float) -> np.ndarray:
    """The mesh turned about the vertical axis through its centre (it has depth: z)."""
    p = points.astype(np.float64)
    c = p.mean(0)
    t = math.radians(degrees)
    x, z = p[:, 0] - c[0], p[:, 2] - c[2]
    out = p.copy()
    out[:, 0] = c[0] + x * math.cos(t) + z * math.sin(t)
    out[:, 2] = c[2] - x * math.sin(t) + z * math.cos(t)
    return out.astype(np.float32)


def _warped(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    xy = cv2.perspectiveTransform(points[None, :, :2].astype(np.float64), homography)[0]
    return np.hstack([xy, points[:, 2:]]).astype(np.float32)


TILTS = [np.array([[0.9, 0.2, 30], [-0.1, 1.1, -20], [0.0005, 0.0003, 1]]),
         np.array([[1.2, 0.0, -40], [0.0, 1.2, 10], [-0.0008, 0.0, 1]]),
         np.array([[math.cos(0.4), -math.sin(0.4), 0], [math.sin(0.4), math.cos(0.4), 0],
                   [0, 0.0009, 1]])]


@pytest.mark.parametrize("homography", TILTS)
def test_a_plane_has_no_parallax(portrait_mesh: Mesh, homography: np.ndarray) -> None:
    assert nose_parallax(portrait_mesh.points, _warped(portrait_mesh.points, homography)) < 1e-4


def test_a_turning_head_has_parallax_growing_with_the_turn(portrait_mesh: Mesh) -> None:
    values = [nose_parallax(portrait_mesh.points, _turned(portrait_mesh.points, d))
              for d in (5, 10, 15, 20)]
    assert values == sorted(values)
    # the default threshold: a turn of about 18 degrees (about 0.01 per degree)
    assert values[2] < LivenessSettings().motion_threshold < values[3]


def test_the_mesh_of_a_tilted_photo_stays_under_the_threshold(
        portrait: np.ndarray, portrait_mesh: Mesh, mesh_model: FaceMesh,
        detector: BlazeFaceDetector) -> None:
    """Real mesh runs on the portrait itself warped by homographies (a print tilted and turned
    in front of the camera): the measured parallax is the mesh's own jitter, under the default
    threshold, though the pictures moved a lot."""
    h, w = portrait.shape[:2]
    centre = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1.0]])
    for angle, zoom, px, py, dx, dy in [(0.3, 0.9, 6e-4, 0, 20, 0), (-0.2, 1.1, 0, -7e-4, -30, 10),
                                        (0.1, 0.8, -6e-4, 4e-4, 0, -20)]:
        c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
        motion = np.array([[c, -s, dx], [s, c, dy], [px, py, 1.0]])
        homography = centre @ motion @ np.linalg.inv(centre)
        warped = cv2.warpPerspective(portrait, homography, (w, h))
        faces = detector.detect(warped)
        assert faces
        moved = mesh_model.landmarks(warped, max(faces, key=lambda f: f.size))
        shift = np.linalg.norm(moved.xy[1] - portrait_mesh.xy[1])
        assert shift > 10  # the face really moved in the frame
        assert nose_parallax(portrait_mesh.points, moved.points) < \
            LivenessSettings().motion_threshold


# --------------------------------------------------------------------------------------------
# the tracker and the door's attempt logic on a fake clock


def _mesh(points: np.ndarray) -> Mesh:
    return Mesh(points.astype(np.float32), 1.0)


def test_tracker_blink_needs_a_dip_and_a_recovery_in_time(portrait_mesh: Mesh,
                                                          shut_mesh: Mesh) -> None:
    closed = shut_mesh
    settings = LivenessSettings(mode="blink")
    blink = LivenessTracker(settings)
    for i, m in enumerate([portrait_mesh] * 5 + [closed] * 2 + [portrait_mesh] * 3):
        blink.add(i / 10, m, i)
    assert blink.passed and blink.blink_frames == [7]
    slow = LivenessTracker(settings)  # eyes shut for 1.0 s: not a blink, nor its last 0.3 s
    for i, m in enumerate([portrait_mesh] * 5 + [closed] * 10 + [portrait_mesh] * 3):
        slow.add(i / 10, m, i)
    assert not slow.passed and slow.min_eye_ratio < 0.6
    assert slow.failure_reason() == "liveness: no blink in 5 s"
    photo = LivenessTracker(settings)
    for i in range(30):
        photo.add(i / 10, portrait_mesh, i)
    assert not photo.passed


def _door(tmp_path: Path, mode: str, **lockout: object) -> tuple[Doorway, LogAction, AuditLog]:
    cfg = Config.model_validate({
        "liveness": {"mode": mode, "timeout_seconds": 3.0},
        "lockout": {"max_failures": 2, "window_seconds": 600, "lockout_seconds": 100,
                    **lockout},
        "action": {"type": "log", "cooldown_seconds": 5.0},
        "verification": {"frames_required": 2, "frame_window": 3, "window_seconds": 3.0},
    })
    action = LogAction()
    door = Doorway(cfg, tmp_path / "audit.db", action)
    return door, action, door.audit


def _knock(door: Doorway, t0: float, points: list[np.ndarray], fps: float = 10.0) -> float:
    """Frames of one resident, matched, with these meshes; returns the time after the last."""
    for i, p in enumerate(points):
        now = t0 + i / fps
        verdict = FrameVerdict("lin", "lin", 0.999, 1.0, 0.999, "lin")
        door.step(now, i, scored(verdict, i + 1000 * int(t0), _mesh(p)))
    return t0 + len(points) / fps


def test_door_opens_when_the_head_turns_within_the_attempt(tmp_path: Path,
                                                           portrait_mesh: Mesh) -> None:
    door, action, audit = _door(tmp_path, "motion")
    turn = [_turned(portrait_mesh.points, d) for d in (0, 0, 0, 6, 12, 18, 24, 26, 26)]
    _knock(door, 100.0, turn)
    assert [u for _, u in action.calls] == ["lin"]
    (unlock,) = audit.query(event="unlock")
    assert unlock.details is not None and unlock.details["liveness"]["passed"] is True
    assert unlock.frame == unlock.details["liveness"]["motion_frames"][1]  # the second one
    assert unlock.frame > 1  # recognition alone agreed at frame 1: liveness made it wait


def test_a_photo_moved_about_fails_liveness_counts_and_locks_out(tmp_path: Path,
                                                                 portrait_mesh: Mesh) -> None:
    door, action, audit = _door(tmp_path, "motion")
    rng = np.random.default_rng(0)
    t = 100.0
    for _ in range(3):  # three attempts, each a print waved about for 4 s
        frames = [_warped(portrait_mesh.points, np.eye(3) + rng.normal(0, [[0.05, 0.05, 20],
                  [0.05, 0.05, 20], [3e-4, 3e-4, 0]])) for _ in range(40)]
        t = _knock(door, t, frames) + 10.0
        door.step(t)
    assert action.calls == []
    denials = audit.query(event="deny")
    assert len(denials) >= 2
    assert all(d.reason.startswith("liveness: no head motion") for d in denials[:2])
    assert denials[0].details is not None and denials[0].details["liveness"]["passed"] is False
    (lockout,) = audit.query(event="lockout")
    assert "2 failed attempts" in lockout.reason
    # locked out: now even a real head turn is refused, with the lockout's reason
    _knock(door, t, [_turned(portrait_mesh.points, d) for d in (0, 0, 10, 20, 26, 26)])
    assert action.calls == []
    assert audit.query(event="deny")[-1].reason == "locked out after repeated failures"


def test_liveness_times_out_from_the_recognition_and_the_face_can_try_again(
        tmp_path: Path, portrait_mesh: Mesh) -> None:
    door, action, audit = _door(tmp_path, "motion")
    still = [portrait_mesh.points] * 35  # 3.5 s still: the 3 s timeout runs out at ~3.1 s
    t = _knock(door, 100.0, still)
    (deny,) = audit.query(event="deny")
    assert deny.reason.startswith("liveness: no head motion") and "in 3 s" in deny.reason
    assert 3.0 <= deny.details["seconds"] <= 3.3  # type: ignore[index]
    assert action.calls == []
    _knock(door, t, [_turned(portrait_mesh.points, d) for d in (0, 0, 10, 20, 26, 26)])
    assert [u for _, u in action.calls] == ["lin"]


def test_mode_off_opens_on_recognition_alone(tmp_path: Path, portrait_mesh: Mesh) -> None:
    door, action, audit = _door(tmp_path, "off")
    assert not door.door.needs_liveness
    _knock(door, 100.0, [portrait_mesh.points] * 3)
    assert [u for _, u in action.calls] == ["lin"]
    assert "liveness" not in (audit.query(event="unlock")[0].details or {})


def _feed(points: list[np.ndarray], fps: float = 10.0,
          settings: LivenessSettings | None = None) -> LivenessTracker:
    tracker = LivenessTracker(settings or LivenessSettings())
    for i, p in enumerate(points):
        tracker.add(i / fps, _mesh(p), i)
    return tracker


def test_two_head_turns_shown_in_turn_are_a_jump_not_a_sweep(portrait_mesh: Mesh) -> None:
    """A slideshow of two pictures of one head, 26 degrees apart, swapped back and forth: the
    parallax between them is a real head's, but it comes all at once. The first version counted
    it; now each swap starts the sweep again and nothing passes. The same turn made gradually
    passes."""
    p = portrait_mesh.points
    left, right = _turned(p, 0), _turned(p, 26)
    swaps = ([left] * 5 + [right] * 5) * 4
    tracker = _feed(swaps)
    assert not tracker.passed and tracker.motion_frames == []
    assert tracker.jumps >= 7 and tracker.largest_step > LivenessSettings().motion_max_step
    assert "jumps" in tracker.failure_reason()
    # the same two poses with one picture half-way between (a crude cross-dissolve): two steps
    # of 13 degrees make up too much of the 26 degree parallax each
    halfway = ([left] * 5 + [_turned(p, 13)] + [right] * 5 + [_turned(p, 13)]) * 3
    assert not _feed(halfway).passed
    turn = [_turned(p, d) for d in (0, 0, 4, 8, 12, 16, 20, 24, 26, 26)]
    gradual = _feed(turn)
    assert gradual.passed and gradual.jumps == 0 and gradual.motion_frames[0] >= 6


def test_the_sweep_starts_again_after_a_gap(portrait_mesh: Mesh) -> None:
    """A turn whose frames are more than motion_max_gap_seconds apart is no continuous sweep
    (what happened in between is unknown): the same turn at 10 fps passes."""
    p = portrait_mesh.points
    turn = [_turned(p, d) for d in (0, 4, 8, 12, 16, 20, 24, 26, 26)]
    slow = _feed(turn, fps=1.0)
    assert not slow.passed and slow.jumps == len(turn) - 1
    assert _feed(turn, fps=10.0).passed


def test_the_first_tracker_passes_the_swap_the_sweep_rule_refuses(portrait_mesh: Mesh) -> None:
    """With the sweep rule off (any step, any share, any gap) the swap passes as it did before
    the rule: the rule, not something else, refuses it."""
    p = portrait_mesh.points
    swaps = ([_turned(p, 0)] * 5 + [_turned(p, 26)] * 5) * 2
    loose = LivenessSettings(motion_max_step=1.0, motion_max_share=1.0, motion_max_gap_seconds=5)
    assert _feed(swaps, settings=loose).passed
    assert not _feed(swaps).passed


# --------------------------------------------------------------------------------------------
# config


def test_liveness_config_defaults_and_bounds() -> None:
    cfg = Config()
    assert cfg.liveness.mode == "motion"
    assert liveness_settings(cfg.liveness) == LivenessSettings()
    shipped = parse_config((REPO / "config.yaml").read_text(), "config.yaml", REPO)
    assert shipped.liveness == cfg.liveness  # config.yaml says what the defaults are
    assert parse_config("liveness:\n  mode: off\n").liveness.mode == "off"  # YAML's false
    with pytest.raises(ConfigError) as err:
        parse_config("liveness:\n  mode: on\n")  # YAML's true: no mode
    assert "liveness.mode" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("liveness:\n  mode: wink\n")
    assert "liveness.mode" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("liveness:\n  blink_closed_ratio: 0.8\n  blink_open_ratio: 0.7\n")
    assert "liveness.blink_open_ratio" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config("liveness:\n  motion_threshold: 0.001\n")
    assert "liveness.motion_threshold" in str(err.value)


def test_verify_says_liveness_was_not_checked(tmp_path: Path, door_model: Path,
                                              examples_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from twinlock.daemon.cli import main

    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    (tmp_path / "empty.yaml").write_text("")
    args = ["verify", str(examples_dir / "lin-manuel-miranda.png"), "--model", str(door_model),
            "--gallery", str(gallery), "--config", str(tmp_path / "empty.yaml")]
    assert main(args) == 0
    assert "liveness not checked" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["liveness"].startswith("not checked")


# --------------------------------------------------------------------------------------------
# the real clip and real-photo attacks through the daemon


def _config(tmp_path: Path, name: str, door_model: Path, gallery: Path, source: str,
            mode: str, **overrides: object) -> Path:
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    sections: dict[str, object] = {
        "camera": {"realtime": True, "fps": 10.0}, "verification": shipped["verification"],
        "liveness": {"mode": mode}, "action": {"type": "log", "cooldown_seconds": 10.0}}
    return write_config(tmp_path / f"{name}.yaml", tmp_path / name, door_model, gallery, source,
                        **(sections | overrides))


@pytest.mark.slow
def test_the_real_clip_opens_with_motion_and_not_with_blink(
        tmp_path: Path, door_model: Path, examples_dir: Path) -> None:
    """The clip (the performer turns his head while singing; he does not blink clearly) through
    the daemon on a simulated clock, the shipped decision: motion opens in his frames, and the
    audit says which frames showed the parallax; blink mode keeps the door shut and says why."""
    from twinlock.daemon.recognition.model import read_metadata

    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    clip = str(examples_dir / CLIP)
    off = run_replay(_config(tmp_path, "off", door_model, gallery, clip, "off"))
    if not [r for r in off if r.event == "unlock"] and \
            read_metadata(door_model).model_id == WEAK_TOWER:
        pytest.skip("the compact tower does not let the clip's performer in at all")
    motion = run_replay(_config(tmp_path, "motion", door_model, gallery, clip, "motion"))
    blink = run_replay(_config(tmp_path, "blink", door_model, gallery, clip, "blink"))
    first_off = next(r for r in off if r.event == "unlock")
    unlocks = [r for r in motion if r.event == "unlock"]
    assert unlocks, "liveness on, the real clip no longer opens the door"
    for r in unlocks:
        assert r.frame in MIRANDA_FRAMES and r.user == "lin"
        live = r.details["liveness"]  # type: ignore[index]
        # liveness passed by this frame (the motion frames follow the face, verified or not)
        assert live["passed"] and live["motion_frames"][1] <= r.frame
        assert all(f in MIRANDA_FRAMES for f in live["motion_frames"])
    assert unlocks[0].frame >= first_off.frame  # liveness can only delay the first unlock
    assert not [r for r in blink if r.event == "unlock"]
    reasons = [r.reason for r in blink if r.event == "deny"]
    assert any(reason.startswith("liveness: no blink") for reason in reasons), reasons


@pytest.mark.slow
def test_photo_attacks_through_the_daemon_are_refused(
        tmp_path: Path, door_model: Path, examples_dir: Path, detector: BlazeFaceDetector,
        mesh_model: FaceMesh, portrait: np.ndarray) -> None:
    """A few sequences of each attack kind, made from the real portrait and a real frame of the
    clip, through the daemon: liveness off, recognition lets them in (so the attacks are real);
    motion on (the default), none opens. benchmarks/liveness.py runs 200 of each kind."""
    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    cap = cv2.VideoCapture(str(examples_dir / CLIP))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 146)
    ok, frame = cap.read()
    assert ok
    sources = {"still": [portrait], "moved": [portrait], "blinked": [portrait],
               "frozen": [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)]}
    opened_without = 0
    for kind, photos in sources.items():
        video = tmp_path / f"{kind}.mp4"
        spans = write_attack_video(video, kind, photos, 3, 60, 10.0, 35, seed=1,
                                   detector=detector, mesh=mesh_model)
        for mode in ("off", "motion"):
            records = run_replay(_config(tmp_path, f"{kind}-{mode}", door_model, gallery,
                                         str(video), mode, lockout={"enabled": False},
                                         action={"type": "log", "cooldown_seconds": 0.0}))
            unlocks = [r for r in records if r.event == "unlock"]
            assert all(any(a <= r.frame <= b for a, b in spans) for r in unlocks)  # type: ignore[operator]
            if mode == "off":
                opened_without += len(unlocks) > 0
            else:
                assert unlocks == [], (kind, [r.frame for r in unlocks])
                assert any(r.reason.startswith("liveness") for r in records
                           if r.event == "deny")
    assert opened_without >= 3, "recognition alone should let most of these attacks in"


def _opened(tmp_path: Path, name: str, door_model: Path, gallery: Path, video: Path,
            spans: list[tuple[int, int]], mode: str) -> list[int]:
    """The attack sequences (indices) the daemon opened for, from the replayed ``video``."""
    records = run_replay(_config(tmp_path, name, door_model, gallery, str(video), mode,
                                 lockout={"enabled": False},
                                 action={"type": "log", "cooldown_seconds": 0.0}))
    unlocks = [r.frame for r in records if r.event == "unlock" and r.frame is not None]
    assert all(any(a <= f <= b for a, b in spans) for f in unlocks)
    return sorted({i for i, (a, b) in enumerate(spans) for f in unlocks if a <= f <= b})


@pytest.fixture(scope="module")
def lfw_residents(tmp_path_factory: pytest.TempPathFactory, door_model: Path, lfw_dir: Path,
                  detector: BlazeFaceDetector, mesh_model: FaceMesh
                  ) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]]]:
    """Three people held out of the model's training (the seeded pairs file its training
    script makes), each enrolled from one photo; for each, two other real photos of them: the
    second of their photos and, of the next five, the one whose head pose differs most from
    it (what an attacker would choose for a slideshow)."""
    from twinlock.daemon.faces import quality as q
    from twinlock.daemon.recognition.gallery import Gallery
    from twinlock.daemon.recognition.model import FaceEmbedder
    from twinlock.trainer.data.pairs import make_pairs_file
    from twinlock.trainer.evaluation.door_eval import held_out_people
    from twinlock.trainer.household.anchors import anchors_from_files

    folder = tmp_path_factory.mktemp("lfw-residents")
    pairs = folder / "holdout_pairs.txt"
    make_pairs_file(lfw_dir, pairs, identities=300, pairs=1000, seed=0)
    embedder = FaceEmbedder(door_model)
    pipeline = embedder.meta.face_pipeline(embedder.meta.detector.build())
    gallery = Gallery(embedder.meta.model_id)

    def read(path: Path) -> np.ndarray:
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)

    def points(image: np.ndarray) -> np.ndarray | None:
        faces = detector.detect(image)
        return mesh_model.landmarks(image, max(faces, key=lambda f: f.size)).points \
            if faces else None

    shown: list[tuple[np.ndarray, np.ndarray]] = []
    for person in held_out_people(pairs, lfw_dir):
        files = sorted((lfw_dir / person).glob("*.jpg"))
        if len(files) < 3:
            continue
        enrolled = anchors_from_files(files[:1], pipeline, embedder, q.QualityThresholds())
        first = read(files[1])
        mesh = points(first)
        others = [(nose_parallax(mesh, m), image) for image in map(read, files[2:7])
                  if mesh is not None and (m := points(image)) is not None]
        if len(enrolled.anchors) != 1 or not others:
            continue
        gallery.add(person, enrolled.anchors, enrolled.sources)
        shown.append((first, max(others, key=lambda x: x[0])[1]))
        if len(shown) == 3:
            break
    assert len(shown) == 3
    gallery.save(folder / "gallery.json")
    return folder / "gallery.json", shown


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["slideshow", "flicker", "crossfade"])
def test_a_slideshow_of_two_photos_of_a_resident_is_refused(
        tmp_path: Path, door_model: Path, detector: BlazeFaceDetector, mesh_model: FaceMesh,
        lfw_residents: tuple[Path, list[tuple[np.ndarray, np.ndarray]]], kind: str) -> None:
    """Issue 20: two real photos of a resident (different head turns) shown in turn every
    0.4-1.0 s and moved by hand opened the door in 18-19 of 20 sequences, the change of pose
    reading as parallax. Held-out LFW people, enrolled from a third photo, through the daemon:
    liveness off, recognition lets them in; motion on, none opens (nor the 0.1-0.25 s flicker,
    nor the cross-dissolve)."""
    gallery, shown = lfw_residents
    video = tmp_path / f"{kind}.mp4"
    spans = write_attack_video(video, kind, [a for a, _ in shown], 6, 60, 10.0, 35, seed=2,
                               detector=detector, mesh=mesh_model, partners=[b for _, b in shown])
    off = _opened(tmp_path, f"{kind}-off", door_model, gallery, video, spans, "off")
    assert len(off) >= 3, off  # recognition alone lets most of them in
    assert _opened(tmp_path, f"{kind}-motion", door_model, gallery, video, spans, "motion") == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mirror", "nosewarp"])
def test_a_photo_and_its_mirror_or_a_nose_warped_copy_are_refused(
        tmp_path: Path, door_model: Path, examples_dir: Path, detector: BlazeFaceDetector,
        mesh_model: FaceMesh, portrait: np.ndarray, kind: str) -> None:
    """Issue 20: the performer's portrait shown in turn with its mirror image (17-18 of 20
    opened) or with a copy whose nose is pushed sideways (5 of 20), moved by hand, through the
    daemon: recognition lets them in, motion refuses them all."""
    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    video = tmp_path / f"{kind}.mp4"
    spans = write_attack_video(video, kind, [portrait], 8, 60, 10.0, 35, seed=3,
                               detector=detector, mesh=mesh_model)
    off = _opened(tmp_path, f"{kind}-off", door_model, gallery, video, spans, "off")
    assert len(off) >= 4, off
    assert _opened(tmp_path, f"{kind}-motion", door_model, gallery, video, spans, "motion") == []


def test_a_grey_camera_delivers_grey_frames_the_door_can_still_match(
        tmp_path: Path, examples_dir: Path, door_model: Path) -> None:
    """``camera.grey`` (an IR / NoIR camera): the replayed real portrait arrives as grey in all
    three channels, and the performer is still recognised from it (benchmarks/grey_input.py
    measures the accuracy this costs on held-out pairs)."""
    from twinlock.daemon.camera.registry import camera_factory
    from twinlock.daemon.recognition.model import FaceEmbedder
    from twinlock.daemon.recognition.verify import Verifier

    cfg = parse_config(yaml.safe_dump({"camera": {
        "type": "replay", "source": str(examples_dir / "lin-manuel-miranda.png"),
        "realtime": False, "grey": True}}))
    camera = camera_factory(cfg)()
    camera.open()
    frame = camera.read()
    camera.close()
    assert frame is not None
    image = frame.image
    assert image.shape[2] == 3 and (image[..., 0] == image[..., 1]).all() \
        and (image[..., 1] == image[..., 2]).all()
    assert image.std() > 20  # a picture, not a blank
    gallery = enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    embedder = FaceEmbedder(door_model)
    meta = embedder.meta
    pipeline = meta.face_pipeline(meta.detector.build())
    aligned, found = pipeline.primary(image)
    assert aligned is not None and found == 1
    verifier = Verifier(gallery, meta.head_weights, meta.head_bias, meta.threshold)
    assert verifier.verify(embedder.embed(aligned.crop)[0]).user == "lin"
