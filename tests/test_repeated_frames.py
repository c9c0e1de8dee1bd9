"""Frames identical to the one before are no new evidence: a still picture never opens the door.

(Liveness is a separate matter; this only stops one frozen picture from counting k times.)
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from daemon_helpers import CLIP, enrol_miranda, liveness_off, write_config

from twinlock.daemon.config.loader import load_config
from twinlock.daemon.door.assemble import build_matcher
from twinlock.daemon.door.rules import AgreementWindow
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.storage.audit import AuditLog

A, B, C = (b"crop-a", b"emb-a"), (b"crop-b", b"emb-b"), (b"crop-c", b"emb-c")


def test_repeated_evidence_gets_no_vote() -> None:
    window = AgreementWindow(3, 5, 3.0)
    assert [window.add(t * 0.1, "lin", A) for t in range(10)] == [None] * 10
    assert window.repeats == 9
    window.clear()  # a new attempt: the frozen picture still counts once in all
    assert window.add(2.0, "lin", A) is None and window.repeats == 10
    assert [window.add(2.1 + t * 0.1, "lin", (B, C)[t % 2]) for t in range(6)] == [None] * 6
    assert window.repeats == 14  # two photos in turn: two votes, however long
    assert window.add(2.8, "lin", (b"crop-d", b"emb-d")) == "lin"  # three different frames


def test_a_frame_identical_in_crop_or_in_embedding_is_a_repeat() -> None:
    window = AgreementWindow(2, 5, 3.0)
    window.add(0.0, "lin", (b"crop-1", b"emb-1"))
    assert window.add(0.1, "lin", (b"crop-2", b"emb-1")) is None  # same embedding
    assert window.add(0.2, "lin", (b"crop-2", b"emb-3")) is None  # same crop
    assert window.add(0.3, "lin", (b"crop-4", b"emb-4")) == "lin"
    assert window.repeats == 2


@pytest.mark.data
@pytest.mark.slow
def test_a_still_picture_of_the_resident_never_opens_the_door(
        tmp_path: Path, door_model: Path, examples_dir: Path) -> None:
    """The same frame of the resident 30 times (a still photo on a frozen or replayed feed):
    verified in every frame, yet no unlock. The clip's own frames of the resident open."""
    moving, still = tmp_path / "moving", tmp_path / "still"
    moving.mkdir()
    still.mkdir()
    video = cv2.VideoCapture(str(examples_dir / CLIP))
    for index in range(211):
        ok, image = video.read()
        assert ok
        if index >= 82:
            cv2.imwrite(str(moving / f"{index:04d}.png"), image)
    video.release()
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")

    def config(frames: Path) -> Path:
        return write_config(tmp_path / f"{frames.name}.yaml", tmp_path / f"state-{frames.name}",
                            door_model, tmp_path / "gallery.json", str(frames),
                            camera={"realtime": False}, action={"type": "log"},
                            **liveness_off())

    matcher = build_matcher(load_config(config(moving)))
    for path in sorted(moving.iterdir()):  # the frame that matches the resident best
        image = load_image(path)
        found = matcher.analyser.analyse(image).scored
        if found and found[0].verdict is not None and found[0].verdict.user == "lin":
            break
    else:
        pytest.fail("no frame of the clip verifies as the resident")
    for i in range(30):
        (still / f"{i:04d}.png").symlink_to(path)

    def replay(frames: Path) -> AuditLog:
        daemon = Daemon(config(frames))
        assert daemon.run() == 0
        return AuditLog(tmp_path / f"state-{frames.name}" / "audit.db")

    with replay(still) as audit:
        assert not audit.query(event="unlock")
        denied = audit.query(event="deny")
    assert denied and denied[-1].details["verified_frames"] == 30, \
        "the still frame verifies as the resident every time"
    with replay(moving) as audit:
        assert [r.user for r in audit.query(event="unlock")][:1] == ["lin"]
