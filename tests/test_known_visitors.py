"""Known visitors who are not residents (the postman): ``twinlock activity label --group G
--not-resident NAME`` on real faces (LFW, the shipped model), the same household function the
page's Visitors "Not a resident" calls; and the activity store's upgrade that holds the marks."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.daemon.review.format import ReviewRecord, new_record_id
from twinlock.daemon.review.store import ReviewWriter, encode_crop
from twinlock.trainer.cli import main
from twinlock.trainer.household import activity
from twinlock.trainer.household.activity import ActivityStore
from twinlock.trainer.household.anchors import enrolment_analyser, enrolment_face
from twinlock.trainer.household.enroll_store import EnrolmentStore
from twinlock.trainer.household.visitors import cross_logits, logit, threshold_of

T0 = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)


def test_a_schema_1_store_is_upgraded_and_keeps_its_attempts(tmp_path: Path) -> None:
    db = tmp_path / "activity.db"
    with sqlite3.connect(db) as conn:  # a store as the first release wrote it
        for statement in activity._SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO attempts (id, door, time, decision, fetched) VALUES "
                     "('front.1', 'front', '2026-12-06T07:00:00.000+00:00', 'deny', 'now')")
        conn.execute("PRAGMA user_version = 1")
    db.chmod(0o600)
    with ActivityStore(db) as store:
        assert [a.id for a in store.attempts()] == ["front.1"]
        assert store.mark_visitor(["front.1"], "postman") == 1
        assert store.visitor_marks() == {"front.1": "postman"}
        with pytest.raises(Exception, match="no attempt"):
            store.mark_visitor(["front.2"], "postman")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 2


def cli(db: Path, enrol_db: Path, *args: str) -> int:
    return main([*args, "--activity-db", str(db), "--db", str(enrol_db)])


@pytest.mark.data
def test_not_resident_from_the_cli_names_his_next_knock_and_enrols_nobody(
        tmp_path: Path, lfw_dir: Path, door_model: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    embedder = FaceEmbedder(door_model)
    meta = embedder.meta
    analyser = enrolment_analyser(meta.face_pipeline(meta.detector.build()), embedder,
                                  q.DEFAULT_THRESHOLDS)
    faces = [f for f in (enrolment_face(load_image(p), analyser)
                         for p in sorted((lfw_dir / "Colin_Powell").glob("*.jpg"))[:8])
             if not isinstance(f, str)]
    # two photos the head links at the grouping threshold: the later must group with the first
    logits = cross_logits(*(2 * [np.stack([f.embedding for f in faces])]), meta.head_weights,
                          meta.head_bias)
    np.fill_diagonal(logits, -np.inf)
    i, j = np.unravel_index(int(np.argmax(logits)), logits.shape)
    assert logits[i, j] >= logit(threshold_of(meta)[1])
    db, enrol_db = tmp_path / "home" / "activity.db", tmp_path / "home" / "enrolment.db"
    when = [T0]
    writer = ReviewWriter(tmp_path / "front", "front", 30, 10**8,
                          clock=lambda: when[0].timestamp())

    def knock(face: object, decision: str = "deny") -> str:
        when[0] += timedelta(hours=1)
        record = ReviewRecord(id=new_record_id("front", when[0]), door="front", time=when[0],
                              decision=decision, bundle_id="b1", model_id=meta.model_id,
                              resident="Colin" if decision == "unlock" else None, score=0.1,
                              embedding=face.embedding)  # type: ignore[attr-defined]
        assert writer.append(record, encode_crop(face.crop))  # type: ignore[attr-defined]
        assert cli(db, enrol_db, "doors", "sync") == 0
        return record.id

    def groups() -> list[dict[str, object]]:
        capsys.readouterr()
        assert cli(db, enrol_db, "activity", "visitors", "--model", str(door_model),
                   "--json") == 0
        return json.loads(capsys.readouterr().out)

    assert cli(db, enrol_db, "doors", "add", "front", "--to", str(tmp_path / "front")) == 0
    first = knock(faces[i])
    assert [(g["attempts"], g["known_visitor"]) for g in groups()] == [([first], None)]
    capsys.readouterr()
    assert cli(db, enrol_db, "activity", "label", "--group", first, "--not-resident", "postman",
               "--model", str(door_model), "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"known_visitor": "postman",
                                                   "attempts": [first]}
    later = knock(faces[j])
    assert [(g["attempts"], g["known_visitor"]) for g in groups()] == [([first, later],
                                                                         "postman")]
    with EnrolmentStore(enrol_db) as store:
        assert not store.users()  # nobody enrolled: no door changes
    # a wrong unlock is not a visitor to mark (--not NAME is for that)
    unlock = knock(faces[i], "unlock")
    assert cli(db, enrol_db, "activity", "label", unlock, "--not-resident",
               "--model", str(door_model)) != 0
    assert "only refused attempts" in capsys.readouterr().err
    # undone: the group is an unknown visitor again
    assert cli(db, enrol_db, "activity", "label", "--group", later, "--unmark",
               "--model", str(door_model)) == 0
    assert [(g["attempts"], g["known_visitor"]) for g in groups()] == [([first, later], None)]
