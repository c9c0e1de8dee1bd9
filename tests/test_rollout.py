"""Which bundle each door runs and what changed since (issue 22: ``twinlock bundle`` lists it,
``twinlock doors list`` marks an outdated door), on real enrolments: residents enrolled from LFW
and the examples' photos with the shipped model, a door's review record labelled into a
resident, real signed bundles deployed to a folder door, real syncs of the door's records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.daemon.review.format import ReviewRecord, new_record_id
from twinlock.daemon.review.store import ReviewWriter, encode_crop
from twinlock.trainer.cli import main
from twinlock.trainer.household.activity import ActivityStore
from twinlock.trainer.household.anchors import enrolment_analyser, enrolment_face
from twinlock.trainer.household.rollout import changes, summarize_bundle

pytestmark = pytest.mark.data


def knock(review: Path, model: Path, photo: Path, when: datetime, bundle_id: str) -> str:
    """One refused attempt at door ``front``, written by the door's own review writer with the
    face cut from ``photo`` as the door cuts it; returns its id."""
    embedder = FaceEmbedder(model)
    meta = embedder.meta
    analyser = enrolment_analyser(meta.face_pipeline(meta.detector.build()), embedder,
                                  q.DEFAULT_THRESHOLDS)
    found = enrolment_face(load_image(photo), analyser)
    assert not isinstance(found, str), found
    writer = ReviewWriter(review, "front", 30, 10**8, clock=lambda: when.timestamp())
    record = ReviewRecord(id=new_record_id("front", when), door="front", time=when,
                          decision="deny", bundle_id=bundle_id, model_id=meta.model_id,
                          resident=None, score=0.1, embedding=found.embedding)
    assert writer.append(record, encode_crop(found.crop))
    return record.id


def test_bundle_lists_what_changed_since_each_doors_bundle_and_doors_list_marks_outdated(
        tmp_path: Path, door_model: Path, lfw_dir: Path, examples_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    enrol, act = tmp_path / "home" / "enrolment.db", tmp_path / "home" / "activity.db"
    model, key = str(door_model), str(tmp_path / "home.key")
    review, spool = tmp_path / "front-review", tmp_path / "spool"
    spool.mkdir()
    george = sorted((lfw_dir / "George_W_Bush").glob("*.jpg"))

    def tw(*args: object) -> str:
        assert main([str(a) for a in args]) == 0, capsys.readouterr()
        return capsys.readouterr().out

    def listed() -> dict[str, object]:
        [row] = json.loads(tw("doors", "list", "--json", "--db", enrol, "--activity-db", act))
        return row

    tw("enroll", "george", "--images", george[0], george[1], "--model", model, "--db", enrol)
    tw("keygen", "--out", tmp_path / "home")
    tw("doors", "add", "front", "--to", review, "--deploy-to", spool, "--activity-db", act)
    info = json.loads(tw("bundle", "--model", model, "--key", key, "--out", tmp_path / "b1.twinlock",
                         "--db", enrol, "--activity-db", act))
    assert info["changes_since"] == ["front: its current bundle is unknown here"]
    assert listed()["outdated"] is None
    out = tw("deploy", tmp_path / "b1.twinlock", "--to", "front", "--activity-db", act)
    b1 = info["bundle_id"]
    assert f"door front now runs bundle {b1}" in out
    assert (spool / "b1.twinlock").is_file()
    row = listed()
    assert (row["bundle_id"], row["bundle_source"], row["outdated"], row["residents"],
            row["changes"]) == (b1, "deploy", False, ["george"], [])
    deployed = datetime.fromisoformat(str(row["deployed_at"]))

    # the household changes: a new resident, a label from the door, a stricter resident
    tw("enroll", "lin", "--images", examples_dir / "lin-manuel-miranda.png", "--model", model,
       "--db", enrol)
    # (made a minute before the deployment: it names b1 and changes nothing of what is known)
    attempt = knock(review, door_model, george[2], deployed - timedelta(minutes=1), b1)
    tw("doors", "sync", "front", "--activity-db", act)
    tw("activity", "label", attempt, "--as", "george", "--model", model, "--db", enrol,
       "--activity-db", act)
    tw("users", "strict", "george", "1e-05", "--db", enrol)
    expected = ["+1 resident (lin, 1 anchor)",
                "george: +1 anchor from labels, strict off -> 1e-05"]
    row = listed()
    assert (row["bundle_id"], row["bundle_source"]) == (b1, "deploy")
    assert row["outdated"] is True and row["changes"] == expected
    text = tw("doors", "list", "--db", enrol, "--activity-db", act)
    assert f"bundle {b1}: OUTDATED: " + "; ".join(expected) in text

    # the next bundle says so, per door, and once deployed the door is up to date again
    assert main(["bundle", "--model", model, "--key", key, "--out",
                 str(tmp_path / "b2.twinlock"), "--db", str(enrol), "--activity-db",
                 str(act)]) == 0
    out, err = capsys.readouterr()
    info2 = json.loads(out)
    assert info2["changes_since"] == ["front: " + "; ".join(expected)]
    assert "since the door's bundle: front: +1 resident (lin, 1 anchor)" in err
    tw("deploy", tmp_path / "b2.twinlock", "--to", "front", "--activity-db", act)
    row = listed()
    assert (row["bundle_id"], row["outdated"], row["residents"]) == (
        info2["bundle_id"], False, ["george", "lin"])

    # a record made before that deployment still names b1: it does not undo it
    knock(review, door_model, george[3], deployed - timedelta(seconds=30), b1)
    tw("doors", "sync", "front", "--activity-db", act)
    assert listed()["bundle_id"] == info2["bundle_id"]
    # a record after it that names b1 (the door was rolled back): the door runs b1 again
    later = datetime.now(UTC) + timedelta(minutes=1)
    knock(review, door_model, george[4], later, b1)
    tw("doors", "sync", "front", "--activity-db", act)
    row = listed()
    assert (row["bundle_id"], row["bundle_source"], row["outdated"]) == (b1, "sync", True)

    # going back from b2 to b1 removes what b2 added
    back = changes(summarize_bundle(tmp_path / "b2.twinlock").summary,
                   summarize_bundle(tmp_path / "b1.twinlock").summary)
    assert back == ["-1 resident (lin)", "george: -1 anchor, strict 1e-05 -> off"]
    tw("users", "remove", "lin", "--db", enrol)
    assert listed()["changes"] == expected[1:]


def test_a_failed_deployment_is_recorded_and_changes_nothing(
        tmp_path: Path, door_model: Path, examples_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    enrol, act = tmp_path / "enrolment.db", tmp_path / "activity.db"
    assert main(["enroll", "lin", "--images", str(examples_dir / "lin-manuel-miranda.png"),
                 "--model", str(door_model), "--db", str(enrol)]) == 0
    assert main(["keygen", "--out", str(tmp_path / "home")]) == 0
    assert main(["doors", "add", "front", "--to", str(tmp_path), "--deploy-to",
                 str(tmp_path / "no-card"), "--activity-db", str(act)]) == 0
    assert main(["bundle", "--model", str(door_model), "--key", str(tmp_path / "home.key"),
                 "--out", str(tmp_path / "b.twinlock"), "--db", str(enrol)]) == 0
    capsys.readouterr()
    assert main(["deploy", str(tmp_path / "b.twinlock"), "--to", "front", "--activity-db",
                 str(act)]) != 0
    assert "does not exist" in capsys.readouterr().err
    with ActivityStore(act) as store:
        door = store.door_bundle("front")
    assert door.bundle_id is None and door.deploy_error and "does not exist" in door.deploy_error


def test_an_older_activity_store_is_upgraded_and_keeps_its_doors(tmp_path: Path) -> None:
    """Schema 2 -> 3 adds where each door's bundle is kept; the doors and attempts stay."""
    import sqlite3

    from twinlock.trainer.household.activity import SCHEMA_VERSION

    db = tmp_path / "activity.db"
    with ActivityStore(db) as store:
        store.add_door("front", str(tmp_path))
    with sqlite3.connect(db) as conn:  # what a schema-2 file holds
        conn.execute("DROP TABLE door_bundles")
        conn.execute("DROP TABLE bundles")
        conn.execute("PRAGMA user_version = 2")
    with ActivityStore(db) as store:
        assert [d.name for d in store.doors()] == ["front"]
        store.note_deploy("front", "m-0123456789ab", None)
        assert store.door_bundle("front").bundle_id == "m-0123456789ab"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


def lin_at_front(tmp_path: Path, door_model: Path, examples_dir: Path
                 ) -> tuple[Path, Path, Path]:
    """Resident lin enrolled, a signing key (home.key) and door ``front`` read from
    ``tmp_path``, deploying to its folder ``spool``: enrolment db, activity db, spool."""
    enrol, act = tmp_path / "enrolment.db", tmp_path / "activity.db"
    spool = tmp_path / "spool"
    spool.mkdir()
    assert main(["enroll", "lin", "--images", str(examples_dir / "lin-manuel-miranda.png"),
                 "--model", str(door_model), "--db", str(enrol)]) == 0
    assert main(["keygen", "--out", str(tmp_path / "home")]) == 0
    assert main(["doors", "add", "front", "--to", str(tmp_path), "--deploy-to", str(spool),
                 "--activity-db", str(act)]) == 0
    return enrol, act, spool


def test_doors_update_bundles_the_residents_now_and_deploys(
        tmp_path: Path, door_model: Path, examples_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    enrol, act, spool = lin_at_front(tmp_path, door_model, examples_dir)
    capsys.readouterr()
    update = ["doors", "update", "front", "--model", str(door_model), "--key",
              str(tmp_path / "home.key"), "--db", str(enrol), "--activity-db", str(act)]
    assert main(update) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "done" not in line][:3] == [
        "build bundle", "sign", "front: copy"]
    [arrived] = spool.iterdir()
    info = summarize_bundle(arrived)
    assert list(info.summary["residents"]) == ["lin"] and f"bundle {info.bundle_id}" in out
    with ActivityStore(act) as store:
        assert store.door_bundle("front").bundle_id == info.bundle_id
    assert not list((tmp_path / "updates").iterdir())  # the built bundle is not kept
    assert main(update[:3]) == 2  # no model, no key


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then let go)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_doors_update_without_names_updates_every_door_past_one_that_is_down(
        tmp_path: Path, door_model: Path, examples_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """One bundle, built and signed once, to every door in turn: ``back`` (an ssh door on a
    closed port) fails first and ``front`` (a folder door) still gets it; both outcomes are
    kept in the activity store and the summary and exit status say one failed."""
    enrol, act, spool = lin_at_front(tmp_path, door_model, examples_dir)
    a = ["--activity-db", str(act)]
    assert main(["doors", "add", "back", "--to", f"ssh://door@127.0.0.1:{closed_port()}/r",
                 "--ssh-option", "-o ConnectTimeout=5 -o ConnectionAttempts=1", *a]) == 0
    capsys.readouterr()
    code = main(["doors", "update", "--model", str(door_model), "--key",
                 str(tmp_path / "home.key"), "--db", str(enrol), *a])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert out.splitlines().count("build bundle") == 1 and out.splitlines().count("sign") == 1
    [summary] = [line for line in err.splitlines() if line.startswith("updated ")]
    assert summary.startswith("updated 1 of 2 doors; failed: back (deploy to ssh://"), summary
    assert "connect" in summary and "\n" not in summary
    assert "back: FAILED: " in err and "front: done: " in out
    [arrived] = spool.iterdir()
    info = summarize_bundle(arrived)
    assert list(info.summary["residents"]) == ["lin"]
    with ActivityStore(act) as store:
        front, back = store.door_bundle("front"), store.door_bundle("back")
    assert (front.bundle_id, front.deploy_error) == (info.bundle_id, None)
    assert back.bundle_id is None and back.deploy_error and "connect" in back.deploy_error
    assert not list((tmp_path / "updates").iterdir())
    capsys.readouterr()  # a name not in the list stops it before any bundle is built
    assert main(["doors", "update", "front", "garage", "--model", str(door_model), "--key",
                 str(tmp_path / "home.key"), "--db", str(enrol), *a]) == 2
    assert "no door called 'garage'" in capsys.readouterr().err and len(list(spool.iterdir())) == 1


def test_doors_list_makes_no_enrolment_store(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    act, enrol = tmp_path / "activity.db", tmp_path / "elsewhere" / "enrolment.db"
    with ActivityStore(act) as store:
        store.add_door("front", str(tmp_path))
        store.note_deploy("front", "m-0123456789ab", None)
        store.record_bundle("m-0123456789ab", 1, "2026-12-06T00:00:00+00:00", "m",
                            {"model_id": "m", "residents": {"lin": {"anchors": {}}}})
    capsys.readouterr()
    assert main(["doors", "list", "--json", "--db", str(enrol), "--activity-db", str(act)]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["residents"], row["outdated"]) == (["lin"], None)
    assert not enrol.parent.exists()


def test_changes_name_the_model_and_threshold_changes() -> None:
    old = {"model_id": "m1", "model_sha256": "a", "tower_sha256": "t",
           "thresholds": {"door_far_1e-03": 0.91, "eer": 0.5},
           "residents": {"ana": {"anchors": {"h1": "a.jpg"}, "strict_far": None}}}
    same_model = {**old, "thresholds": {"door_far_1e-03": 0.93, "eer": 0.5}}
    assert changes(old, same_model) == ["threshold door_far_1e-03: 0.91 -> 0.93"]
    assert changes(old, {**old, "model_id": "m2"}) == ["model m1 -> m2"]
    assert changes(old, {**old, "tower_sha256": "u"}) == ["model m1: its files changed"]
    without_model = {"residents": {"ana": {"anchors": {"h1": "a.jpg", "h2": "b.jpg"}}}}
    assert changes(old, without_model) == ["ana: +1 anchor"]  # the model not compared
    assert changes(old, old) == []


def test_an_update_of_a_door_with_nowhere_to_deploy_fails_before_building(
        tmp_path: Path) -> None:
    from twinlock.daemon.errors import UsageError
    from twinlock.trainer.household.rollout import update_door

    act = tmp_path / "activity.db"
    with ActivityStore(act) as store:
        store.add_door("shed", str(tmp_path))  # read from a folder, no --deploy-to
    steps: list[str] = []
    with pytest.raises(UsageError, match="read from a folder"):
        update_door(act, tmp_path / "enrolment.db", "shed", tmp_path / "no-model",
                    tmp_path / "no.key", tmp_path / "updates", steps.append)
    assert steps == []
