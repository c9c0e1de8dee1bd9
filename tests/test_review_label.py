"""``twinlock activity visitors`` and ``activity label`` on real faces (LFW) with the shipped
model: refused attempts grouped into visitors, a group labelled through the enrolment gate, and
``--not`` on an unlock that never makes the door more permissive. Real SQLite files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.recognition.fusion import decision_settings
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.daemon.recognition.scoring import l1_head_scores
from twinlock.daemon.recognition.verify import Verifier
from twinlock.daemon.review.format import ReviewRecord, new_record_id
from twinlock.daemon.review.store import ReviewWriter, encode_crop
from twinlock.trainer.cli import main
from twinlock.trainer.household.anchors import enrolment_analyser, enrolment_face
from twinlock.trainer.household.enroll import export_gallery
from twinlock.trainer.household.enroll_store import EnrolmentStore

T0 = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def door_faces(lfw_dir: Path, door_model: Path) -> dict[str, list[tuple[np.ndarray, bytes]]]:
    """Per person: (embedding, crop JPEG) of each photo, through the door's own frame path."""
    embedder = FaceEmbedder(door_model)
    meta = embedder.meta
    analyser = enrolment_analyser(meta.face_pipeline(meta.detector.build()), embedder,
                                  q.DEFAULT_THRESHOLDS)
    wanted = {"Angelina_Jolie": 4, "Andre_Agassi": 4, "Andy_Roddick": 4, "Aaron_Peirsol": 1,
              "Al_Gore": 1}
    out: dict[str, list[tuple[np.ndarray, bytes]]] = {}
    for person, count in wanted.items():
        faces = []
        for path in sorted((lfw_dir / person).glob("*.jpg")):
            found = enrolment_face(load_image(path), analyser)
            if not isinstance(found, str):
                faces.append((found.embedding, encode_crop(found.crop)))
            if len(faces) == count:
                break
        assert len(faces) == count, person
        out[person] = faces
    return out


def knock(writer: ReviewWriter, when: datetime, embedding: np.ndarray, crop: bytes,
          model_id: str, decision: str = "deny", resident: str | None = None,
          score: float | None = 0.1) -> str:
    record = ReviewRecord(id=new_record_id(writer.door, when), door=writer.door, time=when,
                          decision=decision, bundle_id="b1", model_id=model_id,
                          resident=resident, score=score, embedding=embedding)
    assert writer.append(record, crop)
    return record.id


@pytest.fixture()
def household(tmp_path: Path, door_faces: dict[str, list[tuple[np.ndarray, bytes]]],
              door_model: Path) -> dict[str, object]:
    """Two doors whose refused attempts were fetched: three people came 4 times each (across
    both doors), two came once."""
    model_id = FaceEmbedder(door_model).meta.model_id
    db = tmp_path / "home" / "activity.db"
    enrol_db = tmp_path / "home" / "enrolment.db"
    ids: dict[str, list[str]] = {}
    clock = [T0]
    for door in ("front", "back"):
        writer = ReviewWriter(tmp_path / door, door, 30, 10**8, clock=lambda: clock[0].timestamp())
        for person, faces in door_faces.items():
            for i, (embedding, crop) in enumerate(faces):
                if (i % 2 == 0) == (door == "front"):
                    clock[0] += timedelta(minutes=7)
                    ids.setdefault(person, []).append(
                        knock(writer, clock[0], embedding, crop, model_id))
        assert main(["doors", "add", door, "--to", str(tmp_path / door), "--activity-db",
                     str(db)]) == 0
    assert main(["doors", "sync", "--activity-db", str(db)]) == 0
    return {"db": db, "enrol_db": enrol_db, "ids": ids, "model_id": model_id}


def run(*args: str) -> int:
    return main(list(args))


def visitors(h: dict[str, object], model: Path, capsys: pytest.CaptureFixture[str]
             ) -> list[dict[str, object]]:
    capsys.readouterr()
    assert run("activity", "visitors", "--model", str(model), "--activity-db", str(h["db"]),
               "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_refused_visitors_are_grouped_one_person_each(
        household: dict[str, object], door_model: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    groups = visitors(household, door_model, capsys)
    ids: dict[str, list[str]] = household["ids"]  # type: ignore[assignment]
    person_of = {i: person for person, seen in ids.items() for i in seen}
    # precision: no group mixes two people
    for group in groups:
        assert len({person_of[a] for a in group["attempts"]}) == 1, group  # type: ignore[union-attr]
    # every refused attempt is in one group, largest group first
    assert sorted(a for g in groups for a in g["attempts"]) == sorted(person_of)  # type: ignore[union-attr]
    assert [g["count"] for g in groups] == sorted((g["count"] for g in groups), reverse=True)
    # the three who came 4 times (twice at each door): the door's strictest threshold links
    # all of Andre Agassi's photos (one visitor, seen at both doors) and at least two of each
    # other's (single linkage at door_far_1e-04 trades recall for precision:
    # docs/guide/household.md)
    [andre] = [g for g in groups if set(g["attempts"]) & set(ids["Andre_Agassi"])]  # type: ignore[arg-type]
    assert sorted(andre["attempts"]) == sorted(ids["Andre_Agassi"])  # type: ignore[arg-type]
    assert andre["count"] == 4 and andre["doors"] == ["back", "front"]
    assert andre["first_seen"] < andre["last_seen"]
    for person in ("Angelina_Jolie", "Andy_Roddick"):
        theirs = [g for g in groups if set(g["attempts"]) & set(ids[person])]  # type: ignore[arg-type]
        assert max(g["count"] for g in theirs) >= 2, (person, theirs)  # type: ignore[type-var]
    capsys.readouterr()
    assert run("activity", "visitors", "--model", str(door_model), "--activity-db",
               str(household["db"])) == 0
    assert "4 attempts, first 2026-12-06" in capsys.readouterr().out


def test_labelling_a_group_enrols_its_faces_through_the_gate(
        household: dict[str, object], door_model: Path, lfw_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ids: dict[str, list[str]] = household["ids"]  # type: ignore[assignment]
    groups = visitors(household, door_model, capsys)
    [group] = [g for g in groups if ids["Andre_Agassi"][0] in g["attempts"]]  # type: ignore[operator]
    members: list[str] = group["attempts"]  # type: ignore[assignment]
    common = ["--model", str(door_model), "--activity-db", str(household["db"]),
              "--db", str(household["enrol_db"])]
    assert run("activity", "label", "--group", str(group["group"]), "--as", "Andre",
               *common) == 0
    out = capsys.readouterr().out
    assert out.count("enrolled ") == len(members) >= 3
    assert f"Andre now has {len(members)} anchors" in out
    with EnrolmentStore(household["enrol_db"]) as store:  # type: ignore[arg-type]
        [user] = store.users(str(household["model_id"]))
        assert user.name == "Andre" and user.samples == user.anchors_for_model == len(members)
    # the group's attempts are no longer unknown visitors; the others still are
    left = visitors(household, door_model, capsys)
    remaining = {a for g in left for a in g["attempts"]}  # type: ignore[union-attr]
    assert not remaining & set(members)
    assert len(remaining) == sum(len(v) for v in ids.values()) - len(members)
    # the next bundle carries them: the door now knows the visitor by name on a photo of him
    # it never saw (the fifth usable one; the four knocks were the first four)
    meta = FaceEmbedder(door_model).meta
    analyser = enrolment_analyser(meta.face_pipeline(meta.detector.build()),
                                  FaceEmbedder(door_model), q.DEFAULT_THRESHOLDS)
    fresh = [f for f in (enrolment_face(load_image(p), analyser) for p in sorted(
        (lfw_dir / "Andre_Agassi").glob("*.jpg"))[:12]) if not isinstance(f, str)][4]
    threshold, _, rule = decision_settings(meta.thresholds, meta.default_threshold, meta.metrics)
    with EnrolmentStore(household["enrol_db"]) as store:  # type: ignore[arg-type]
        gallery = export_gallery(store, door_model, tmp_path / "gallery.json")
    verdict = Verifier(gallery, meta.head_weights, meta.head_bias, threshold,
                       fusion=rule).verify(fresh.embedding)
    assert verdict.user == "Andre"
    key = tmp_path / "signing"
    assert run("keygen", "--out", str(key)) == 0
    assert run("bundle", "--model", str(door_model), "--key", f"{key}.key", "--out",
               str(tmp_path / "home.twinlock"), "--db", str(household["enrol_db"])) == 0
    capsys.readouterr()
    # the same face again: the gate refuses it as a near-duplicate, says so, adds nothing
    assert run("activity", "label", members[0], "--as", "Andre", *common) == 1
    out = capsys.readouterr().out
    assert "refused" in out and "(near_duplicate)" in out
    with EnrolmentStore(household["enrol_db"]) as store:  # type: ignore[arg-type]
        assert store.users()[0].samples == len(members)


def test_a_crop_without_a_good_face_is_refused_with_its_reason(
        tmp_path: Path, door_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_id = FaceEmbedder(door_model).meta.model_id
    writer = ReviewWriter(tmp_path / "door", "front", 30, 10**8, clock=T0.timestamp)
    dark = encode_crop(np.full((150, 150, 3), 4, np.uint8))
    rng = np.random.default_rng(0)
    attempt = knock(writer, T0, rng.standard_normal(128).astype(np.float32), dark, model_id)
    db, enrol_db = tmp_path / "activity.db", tmp_path / "enrolment.db"
    run("doors", "add", "front", "--to", str(tmp_path / "door"), "--activity-db", str(db))
    run("doors", "sync", "--activity-db", str(db))
    capsys.readouterr()
    assert run("activity", "label", attempt, "--as", "Bob", "--model", str(door_model),
               "--activity-db", str(db), "--db", str(enrol_db)) == 1
    assert "refused" in capsys.readouterr().out
    with EnrolmentStore(enrol_db) as store:
        assert store.users() == []  # nobody was created


def test_not_on_an_unlock_lists_the_anchors_and_remedies_and_changes_nothing(
        tmp_path: Path, door_model: Path, lfw_dir: Path,
        door_faces: dict[str, list[tuple[np.ndarray, bytes]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    meta = FaceEmbedder(door_model).meta
    enrol_db, db = tmp_path / "enrolment.db", tmp_path / "activity.db"
    photos = sorted((lfw_dir / "Angelina_Jolie").glob("*.jpg"))[:6]
    assert run("enroll", "amelie", "--images", *map(str, photos), "--model", str(door_model),
               "--db", str(enrol_db)) == 0
    with EnrolmentStore(enrol_db) as store:
        anchors_before = store.anchors(meta.model_id)["amelie"].copy()
    # an attempt the door let in as amelie (one of her faces the household now says was not her)
    embedding, crop = door_faces["Angelina_Jolie"][3]
    threshold, _, _ = decision_settings(meta.thresholds, meta.default_threshold, meta.metrics)
    score = float(l1_head_scores(embedding, anchors_before, meta.head_weights,
                                 meta.head_bias).max())
    assert score >= threshold  # the door would have opened
    writer = ReviewWriter(tmp_path / "door", "front", 30, 10**8, clock=T0.timestamp)
    unlock = knock(writer, T0, embedding, crop, meta.model_id, "unlock", "amelie", score)
    deny = knock(writer, T0 + timedelta(minutes=1), embedding, crop, meta.model_id)
    run("doors", "add", "front", "--to", str(tmp_path / "door"), "--activity-db", str(db))
    run("doors", "sync", "--activity-db", str(db))
    common = ["--model", str(door_model), "--activity-db", str(db), "--db", str(enrol_db)]
    capsys.readouterr()
    assert run("activity", "label", deny, "--not", "amelie", *common) == 2
    assert "is a deny, not an unlock as amelie" in capsys.readouterr().err

    enrol_bytes = enrol_db.read_bytes()
    assert run("activity", "label", unlock, "--not", "amelie", "--json", *common) == 0
    report = json.loads(capsys.readouterr().out)
    matched = [a for a in report["anchors"] if a["matched"]]
    assert matched and report["fused_score_now"] >= report["door_threshold"]
    assert [a["score"] for a in report["anchors"]] == sorted(
        (a["score"] for a in report["anchors"]), reverse=True)
    remove, strict = report["remedies"][0], report["remedies"][1]
    assert remove["refuses_this_face"] and remove["samples_removed"]
    assert remove["genuine_acceptance_before"] is not None
    assert remove["genuine_acceptance_after"] <= remove["genuine_acceptance_before"]
    assert "twinlock users strict amelie" in strict["command"] or not strict["refuses_this_face"]
    # reporting changed no anchor and no setting
    with EnrolmentStore(enrol_db) as store:
        np.testing.assert_array_equal(store.anchors(meta.model_id)["amelie"], anchors_before)
        assert store.users()[0].strict_far is None
    del enrol_bytes
    # the pair is kept as a known impostor
    capsys.readouterr()
    run("activity", "show", unlock, "--json", "--activity-db", str(db))
    assert {"kind": "not", "name": "amelie"} in json.loads(capsys.readouterr().out)["labels"]

    # applying the remedy removes the matching anchors: the door gets stricter, never looser
    assert run("activity", "label", unlock, "--not", "amelie", "--apply", "remove-anchors",
               *common) == 0
    with EnrolmentStore(enrol_db) as store:
        after = store.anchors(meta.model_id).get("amelie")
    assert after is None or len(after) < len(anchors_before)
    if after is not None:
        assert float(l1_head_scores(embedding, after, meta.head_weights,
                                    meta.head_bias).max()) < threshold
        assert all(any(np.array_equal(row, old) for old in anchors_before) for row in after)


def test_grouping_thresholds_come_from_the_models_calibration(door_model: Path) -> None:
    """A named threshold is the model's own; one between two named ones lies between them;
    nothing outside the calibration or unnamed is accepted (no guessed number)."""
    from twinlock.daemon.errors import UsageError
    from twinlock.trainer.household.visitors import DEFAULT_THRESHOLD, calibrated_threshold

    thresholds = FaceEmbedder(door_model).meta.thresholds
    assert calibrated_threshold(thresholds, DEFAULT_THRESHOLD) == thresholds[DEFAULT_THRESHOLD]
    middle = calibrated_threshold(thresholds, "door_far_3e-03")
    assert thresholds["door_far_1e-02"] < middle < thresholds["door_far_1e-03"]
    for bad in ("door_far_1e-07", "eer_2", "0.9"):
        with pytest.raises(UsageError):
            calibrated_threshold(thresholds, bad)
