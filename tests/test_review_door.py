"""Review records at the door, through the real daemon replaying the real clip: every attempt that
ends leaves a record tied to its audit record, with the attempt's best face crop (JPEG) and
embedding; nothing is written with review off; a review folder that cannot be written never stops
the door. And the whole loop: the door refuses the clip's performer, the household fetches the
door's records, finds him among the unknown visitors, labels him through the enrolment gate,
bundles and installs, and the door opens for him."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_helpers import CLIP, MIRANDA_FRAMES, enrol_miranda, liveness_off, write_config
from gpiozero.pins.mock import MockFactory

from twinlock.daemon.cli import main as twinlockd
from twinlock.daemon.door.review_sink import ReviewSink
from twinlock.daemon.door.service import Daemon
from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.images import decode_image
from twinlock.daemon.recognition.gallery import Gallery, load_gallery
from twinlock.daemon.recognition.model import FaceEmbedder, read_metadata
from twinlock.daemon.recognition.verify import Verifier
from twinlock.daemon.review.format import (
    CROPS_DIR,
    ReviewRecord,
    check_crop,
    parse_record,
)
from twinlock.daemon.storage.audit import AuditLog, AuditRecord
from twinlock.trainer.cli import main as twinlock
from twinlock.trainer.household.anchors import anchors_from_files

pytestmark = [pytest.mark.data, pytest.mark.slow]

DOOR = "front"
PIANIST_FRAMES = range(20, 82)
#: audit events that end an attempt (a lockout's own record follows a refusal already kept)
ENDING_EVENTS = ("unlock", "deny", "quality")


def read_review(folder: Path, dim: int) -> list[ReviewRecord]:
    """Every record of the folder, as the household's reader checks it."""
    records = []
    for day in sorted(folder.glob("*.jsonl")):
        for n, line in enumerate(day.read_bytes().splitlines(keepends=True), 1):
            records.append(parse_record(line, door=DOOR, dim=dim, where=f"{day.name}:{n}"))
    return records


def audit_records(state: Path) -> list[AuditRecord]:
    with AuditLog(state / "audit.db") as audit:
        return audit.query()


def relay_pulses(pins: MockFactory) -> int:
    """How many times the relay's pin went high."""
    return sum(1 for _, state in pins.pin(17).states if state)


def run_door(config: Path) -> Daemon:
    daemon = Daemon(config)
    assert daemon.run() == 0
    return daemon


@pytest.fixture()
def door(tmp_path: Path, door_model: Path, examples_dir: Path) -> Path:
    """The clip's door, every frame seen (no real-time pacing), liveness off (the clip's
    head-turn check is tested in test_liveness.py), review on."""
    enrol_miranda(door_model, examples_dir, tmp_path / "gallery.json")
    return write_config(tmp_path / "config.yaml", tmp_path / "state", door_model,
                        tmp_path / "gallery.json", str(examples_dir / CLIP),
                        camera={"realtime": False},
                        review={"enabled": True, "dir": str(tmp_path / "review"), "door": DOOR},
                        **liveness_off())


def test_every_ended_attempt_leaves_a_review_record_tied_to_its_audit_record(
        door: Path, door_model: Path, tmp_path: Path, mock_pins: MockFactory) -> None:
    run_door(door)
    meta = read_metadata(door_model)
    folder = tmp_path / "review"
    records = read_review(folder, meta.embedding_dim)
    audit = {r.id: r for r in audit_records(tmp_path / "state")}
    ending = {i for i, r in audit.items() if r.event in ENDING_EVENTS}
    assert ending, "the clip ended no attempt"
    # one review record per ended attempt, each naming its own audit record
    assert sorted(r.audit_id for r in records) == sorted(ending)  # type: ignore[type-var]
    for record in records:
        row = audit[record.audit_id]  # type: ignore[index]
        expected = "unlock" if row.event == "unlock" else "deny"
        assert record.decision == expected, (record, row)
        assert record.door == DOOR and record.id.startswith(f"{DOOR}.")
        assert record.model_id == meta.model_id and record.bundle_id is None  # unsigned folder
        assert record.resident == row.user
    # the unlock keeps lin's best-scoring face: a JPEG chip at the tower's crop size and an
    # embedding of the model's size that the door's own verifier names as lin
    unlocks = [r for r in records if r.decision == "unlock"]
    assert unlocks and all(r.resident == "lin" for r in unlocks)
    gallery = load_gallery(tmp_path / "gallery.json")
    verifier = Verifier(gallery, meta.head_weights, meta.head_bias, 0.0)
    for record in unlocks:
        assert record.embedding is not None and record.embedding.shape == (meta.embedding_dim,)
        assert verifier.verify(record.embedding).best_user == "lin"
        assert record.score == pytest.approx(audit[record.audit_id].best_score)  # type: ignore[index]
    for record in unlocks:
        crop = (folder / CROPS_DIR / record.crop_name).read_bytes()
        check_crop(crop, record, record.crop_name)  # the reader's checks: hash, JPEG, size
        image = decode_image(crop, record.crop_name)
        assert image.shape[:2] == (meta.input_size, meta.input_size)  # the tower's own chip
    # private to the daemon and the deploy group
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE((folder / CROPS_DIR).stat().st_mode) == 0o750
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o640
               for p in [*folder.glob("*.jsonl"), *(folder / CROPS_DIR).iterdir()])


def test_with_review_off_nothing_is_written(
        door: Path, tmp_path: Path, mock_pins: MockFactory) -> None:
    cfg = yaml.safe_load(door.read_text())
    cfg["review"]["enabled"] = False
    door.write_text(yaml.safe_dump(cfg))
    daemon = run_door(door)
    assert daemon.review is None
    assert not any(isinstance(s, ReviewSink) for s in daemon.outbox.sinks)
    assert any(r.event == "unlock" for r in audit_records(tmp_path / "state"))
    assert not (tmp_path / "review").exists()


@pytest.mark.parametrize("where", ["missing", "not_a_folder"])
def test_a_review_folder_that_cannot_be_written_never_stops_the_door(
        door: Path, tmp_path: Path, mock_pins: MockFactory, caplog: pytest.LogCaptureFixture,
        where: str) -> None:
    """A folder under a parent that is gone, or under a file (tests run as root, for whom a
    read-only mode is no obstacle: a file in the path stops root too)."""
    if where == "missing":
        folder = tmp_path / "gone" / "review"
    else:
        (tmp_path / "plain").write_text("not a folder")
        folder = tmp_path / "plain" / "review"
    cfg = yaml.safe_load(door.read_text())
    cfg["review"]["dir"] = str(folder)
    door.write_text(yaml.safe_dump(cfg))
    caplog.set_level(logging.WARNING)
    run_door(door)
    unlocks = [r for r in audit_records(tmp_path / "state") if r.event == "unlock"]
    assert unlocks and all(r.user == "lin" and r.frame in MIRANDA_FRAMES for r in unlocks)
    assert relay_pulses(mock_pins) == len(unlocks)  # the door opened each time
    assert mock_pins.pin(17).state is False
    said = [r for r in caplog.records if "cannot write review records" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]  # once, not per attempt
    assert not folder.exists()


# -- the loop ------------------------------------------------------------------------------------

#: residents of the household's door: LFW people, none of them the clip's performer
RESIDENTS = {"amelie": "Angelina_Jolie", "andy": "Andy_Roddick"}


def clip_part(examples_dir: Path, frames: range, folder: Path) -> str:
    """The clip's ``frames`` as pictures in ``folder`` (a replay glob): one visitor's knock. The
    clip shows the pianist (20-81) and then the performer (82-210) with no gap between them, so
    a door replaying the whole of it sees a single attempt, whose best-scoring face is either
    one's."""
    import cv2

    folder.mkdir(parents=True)
    video = cv2.VideoCapture(str(examples_dir / CLIP))
    try:
        index = 0
        while index <= frames[-1]:
            ok, image = video.read()
            assert ok, f"the clip ended before frame {index}"
            if index in frames:
                cv2.imwrite(str(folder / f"{index:04d}.jpg"), image,
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
            index += 1
    finally:
        video.release()
    return str(folder / "*.jpg")


def set_camera(config: Path, source: str) -> None:
    cfg = yaml.safe_load(config.read_text())
    cfg["camera"]["source"] = source
    config.write_text(yaml.safe_dump(cfg))


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    capsys.readouterr()
    assert twinlock(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_the_loop_a_refused_visitor_labelled_at_home_is_let_in_next_time(
        tmp_path: Path, door_model: Path, examples_dir: Path, lfw_dir: Path,
        mock_pins: MockFactory, capsys: pytest.CaptureFixture[str]) -> None:
    enrol_db, activity_db = tmp_path / "home" / "enrolment.db", tmp_path / "home" / "activity.db"
    model = ["--model", str(door_model)]
    # the household: two residents, a signing key, a bundle without the performer
    for name, person in RESIDENTS.items():
        photos = sorted((lfw_dir / person).glob("*.jpg"))[:4]
        assert twinlock(["enroll", name, "--images", *map(str, photos), *model, "--db",
                         str(enrol_db)]) == 0
    assert twinlock(["keygen", "--out", str(tmp_path / "home" / "key")]) == 0
    key, pub = tmp_path / "home" / "key.key", tmp_path / "home" / "key.pub"
    assert twinlock(["bundle", *model, "--key", str(key), "--out", str(tmp_path / "b1.twinlock"),
                     "--db", str(enrol_db)]) == 0
    # the door: the shipped decision (config.yaml's verification section), from the bundle
    shipped = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    state, review = tmp_path / "door", tmp_path / "door" / "review"
    config = write_config(tmp_path / "config.yaml", state, door_model, tmp_path / "unused.json",
                          str(examples_dir / CLIP), camera={"realtime": False},
                          verification=shipped["verification"],
                          review={"enabled": True, "dir": str(review), "door": DOOR},
                          **liveness_off())
    cfg = yaml.safe_load(config.read_text())
    cfg["model"] = {"source": "bundle", "public_key": str(pub)}
    config.write_text(yaml.safe_dump(cfg))
    assert twinlockd(["install-bundle", str(tmp_path / "b1.twinlock"), "--config",
                      str(config)]) == 0

    # 1. the pianist knocks, then the performer: nobody here, the door stays shut and keeps
    # both attempts (visitors who never match are attempts too)
    for who, frames in (("pianist", PIANIST_FRAMES), ("performer", MIRANDA_FRAMES)):
        set_camera(config, clip_part(examples_dir, frames, tmp_path / who))
        daemon = run_door(config)
        assert daemon.matcher is not None and daemon.matcher.users == len(RESIDENTS)
        if who == "pianist":
            pianist_last = max(r.id for r in audit_records(state))
    first = audit_records(state)
    assert not [r for r in first if r.event == "unlock"]
    assert mock_pins.pin(17).state is False and relay_pulses(mock_pins) == 0
    meta = read_metadata(door_model)
    records = {r.id: r for r in read_review(review, meta.embedding_dim)}
    assert len(records) >= 2 and all(r.decision == "deny" and r.resident is None
                                     and r.embedding is not None for r in records.values())

    # 2. the household fetches the door's records (a folder target: the review folder)
    assert twinlock(["doors", "add", DOOR, "--to", str(review), "--activity-db",
                     str(activity_db)]) == 0
    assert twinlock(["doors", "sync", "--activity-db", str(activity_db)]) == 0
    listed = _json(capsys, ["activity", "list", "--activity-db", str(activity_db), "--limit",
                            "0", "--json"])
    assert {a["audit_id"] for a in listed} == {r.id for r in first if r.event in ENDING_EVENTS}
    assert {a["decision"] for a in listed} == {"deny"}

    # 3. his visitor group: the one holding the attempts of his knock (the second run's audit
    # records), and nobody else's
    visitors = _json(capsys, ["activity", "visitors", *model, "--activity-db",
                              str(activity_db), "--json"])
    his_audit = {r.id for r in first if r.event in ENDING_EVENTS and r.id > pianist_last}
    assert his_audit
    groups = [g for g in visitors if any(records[a].audit_id in his_audit for a in g["attempts"])]
    assert len(groups) == 1, visitors
    group = groups[0]
    assert all(records[a].audit_id in his_audit for a in group["attempts"]), group
    # and its face is his: nearer his own photo (the example picture, never seen by the door)
    # than any other visitor's face is
    photo = anchors_from_files([examples_dir / "lin-manuel-miranda.png"],
                               meta.face_pipeline(meta.detector.build()),
                               FaceEmbedder(door_model), q.QualityThresholds())
    his = Gallery(meta.model_id)
    his.add("him", photo.anchors, photo.sources)
    verifier = Verifier(his, meta.head_weights, meta.head_bias, 0.5)

    def likeness(g: dict[str, Any]) -> float:
        return max(verifier.verify(records[a].embedding).best_score  # type: ignore[arg-type]
                   for a in g["attempts"])

    assert likeness(group) > 0.5 > max(likeness(g) for g in visitors if g is not group)
    assert group["doors"] == [DOOR]
    assert len(visitors) >= 2  # the pianist is a visitor of his own

    # 4. labelled as lin through the enrolment gate; the next bundle carries him
    capsys.readouterr()
    assert twinlock(["activity", "label", "--group", str(group["group"]), "--as", "lin", *model,
                     "--activity-db", str(activity_db), "--db", str(enrol_db)]) == 0
    out = capsys.readouterr().out
    assert "enrolled " in out and "lin now has" in out
    assert twinlock(["bundle", *model, "--key", str(key), "--out", str(tmp_path / "b2.twinlock"),
                     "--db", str(enrol_db)]) == 0
    assert twinlockd(["install-bundle", str(tmp_path / "b2.twinlock"), "--config",
                      str(config)]) == 0

    # 5. the door again, on the whole clip: it opens for lin, in his frames only
    set_camera(config, str(examples_dir / CLIP))
    daemon = run_door(config)
    assert daemon.matcher is not None and daemon.matcher.users == len(RESIDENTS) + 1
    second = [r for r in audit_records(state) if r.id > max(r.id for r in first)]
    unlocks = [r for r in second if r.event == "unlock"]
    assert unlocks, "the door did not open for the labelled visitor"
    assert all(r.user == "lin" and r.frame in MIRANDA_FRAMES for r in unlocks)
    assert relay_pulses(mock_pins) == len(unlocks)
    assert mock_pins.pin(17).state is False
    # and its review record says so, under the new bundle
    after = [r for r in read_review(review, meta.embedding_dim)
             if r.audit_id in {u.id for u in unlocks}]
    assert after and all(r.decision == "unlock" and r.resident == "lin" for r in after)
    assert len({r.bundle_id for r in after}) == 1 and after[0].bundle_id is not None
    assert after[0].bundle_id != records[group["attempts"][0]].bundle_id
