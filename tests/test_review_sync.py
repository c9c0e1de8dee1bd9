"""``twinlock doors`` and ``twinlock activity list/show``: a door's review folder fetched into the
household's activity store, from a folder and over a real sshd on 127.0.0.1 (the deploy tests'
throw-away server). Real face crops (LFW), real SQLite files."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_deploy_ssh import Door, door  # noqa: F401  (the sshd fixture)

from twinlock.daemon.faces.images import load_image
from twinlock.daemon.review.format import CROPS_DIR, ReviewRecord, encode_record, new_record_id
from twinlock.daemon.review.store import ReviewWriter, encode_crop
from twinlock.trainer.cli import main
from twinlock.trainer.household.activity import SCHEMA_VERSION, ActivityStore

DIM = 128
T0 = datetime(2026, 12, 5, 22, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def faces(lfw_dir: Path) -> list[bytes]:
    """Real faces as door chips (150 px JPEG)."""
    out = []
    for person in sorted(p.name for p in lfw_dir.iterdir() if p.is_dir())[:4]:
        path = min((lfw_dir / person).glob("*.jpg"))
        out.append(encode_crop(cv2.resize(load_image(path)[60:190, 60:190], (150, 150))))
    return out


def record(name: str, when: datetime, decision: str = "deny", resident: str | None = None,
           score: float | None = 0.2) -> ReviewRecord:
    rng = np.random.default_rng(int(when.timestamp()))
    return ReviewRecord(id=new_record_id(name, when), door=name, time=when, decision=decision,
                        bundle_id="b-20261205", model_id="4a2d4b3a1b1b09d7", audit_id=1,
                        resident=resident, score=score,
                        embedding=rng.standard_normal(DIM).astype(np.float32))


def fill(folder: Path, name: str, faces: list[bytes], count: int, start: datetime = T0
         ) -> list[ReviewRecord]:
    """A door's review folder, written by the door's own writer (across midnight: two days)."""
    now = [start.timestamp()]
    writer = ReviewWriter(folder, name, retention_days=30, max_bytes=10**8, clock=lambda: now[0])
    out = []
    for i in range(count):
        when = start + timedelta(hours=i)
        now[0] = when.timestamp()
        rec = record(name, when, "unlock" if i % 3 == 0 else "deny",
                     "alice" if i % 3 == 0 else None, 0.95 if i % 3 == 0 else 0.1)
        assert writer.append(rec, faces[i % len(faces)])
        out.append(rec)
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file on the door: size, mtime and hash (a fetch must change none of them)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dump(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, door, time, decision, resident, score, embedding, crop "
                            "FROM attempts ORDER BY id").fetchall()


def cli(db: Path, *args: str) -> int:
    return main([*args, "--activity-db", str(db)])


def test_sync_from_a_folder_is_idempotent_and_changes_nothing_on_the_door(
        tmp_path: Path, faces: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    review = tmp_path / "door-review"
    written = fill(review, "front", faces, 5)
    db = tmp_path / "household" / "activity.db"
    assert cli(db, "doors", "add", "front", "--to", str(review)) == 0
    before = snapshot(review)
    assert cli(db, "doors", "sync", "front") == 0
    assert "front: 5 new attempts" in capsys.readouterr().out
    assert snapshot(review) == before
    first = dump(db)
    assert cli(db, "doors", "sync") == 0
    assert "front: 0 new attempts (0 read" in capsys.readouterr().out
    assert dump(db) == first and len(first) == 5
    # the store: private, versioned
    assert db.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3

    assert cli(db, "activity", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [r.id for r in reversed(written)]  # newest first
    assert cli(db, "activity", "list", "--decision", "unlock", "--json") == 0
    unlocks = json.loads(capsys.readouterr().out)
    assert {r["resident"] for r in unlocks} == {"alice"} and len(unlocks) == 2
    assert cli(db, "activity", "list", "--since", "2026-12-06T00:30", "--json") == 0
    assert {r["id"] for r in json.loads(capsys.readouterr().out)} == {
        r.id for r in written if r.time >= datetime(2026, 12, 6, 0, 30, tzinfo=UTC)}
    assert cli(db, "activity", "list", "--door", "back") == 0
    assert "no attempts" in capsys.readouterr().out

    crop_file = tmp_path / "face.jpg"
    assert cli(db, "activity", "show", written[1].id, "--crop-out", str(crop_file)) == 0
    out = capsys.readouterr().out
    assert f"id: {written[1].id}" in out and "embedding_dim: 128" in out
    assert crop_file.read_bytes() == faces[1]
    assert (review / CROPS_DIR / f"{written[1].id}.jpg").read_bytes() == faces[1]
    with ActivityStore(db) as store:
        back = store.attempt(written[1].id)
    assert back.embedding is not None
    np.testing.assert_array_equal(back.embedding, written[1].embedding)


def test_sync_resumes_and_leaves_a_line_being_written_for_the_next(
        tmp_path: Path, faces: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    review = tmp_path / "review"
    fill(review, "front", faces, 2)
    db = tmp_path / "activity.db"
    cli(db, "doors", "add", "front", "--to", str(review))
    assert cli(db, "doors", "sync") == 0
    later = fill(review, "front", faces, 2, start=T0 + timedelta(hours=3))
    day = review / later[-1].day_file
    line = encode_record(record("front", T0 + timedelta(hours=5)))
    with day.open("ab") as handle:  # the door is in the middle of writing a third record
        handle.write(line[:40])
    assert cli(db, "doors", "sync") == 0
    assert "front: 2 new attempts" in capsys.readouterr().out
    with day.open("ab") as handle:
        handle.write(line[40:])
    assert cli(db, "doors", "sync") == 0
    assert "front: 1 new attempts" in capsys.readouterr().out
    assert len(dump(db)) == 5


def test_crafted_records_are_refused_and_nothing_of_them_is_stored(
        tmp_path: Path, faces: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    review = tmp_path / "review"
    good = fill(review, "front", faces, 2)
    day = review / good[0].day_file
    crops = review / CROPS_DIR

    def crafted(rec: ReviewRecord, crop: bytes | None, **patch: object) -> ReviewRecord:
        sha = hashlib.sha256(crop).hexdigest() if crop is not None else None
        rec = ReviewRecord(**{**rec.__dict__, "crop_sha256": sha})
        data = json.loads(encode_record(rec)) | patch
        with day.open("ab") as handle:
            handle.write((json.dumps(data) + "\n").encode())
        if crop is not None:
            (crops / f"{data['id']}.jpg").write_bytes(crop)
        return rec

    t = T0 + timedelta(minutes=30)
    crafted(record("back", t), faces[0])  # another door's record
    crafted(record("front", t), faces[0], dim=64)  # wrong size for its bytes
    short = ReviewRecord(**{**record("front", t).__dict__,
                            "embedding": np.ones(64, np.float32)})
    crafted(short, faces[0])  # well-formed, but not the dimension of the door's model
    crafted(record("front", t), faces[0], resident="../../../etc/cron.d/x")
    truncated = faces[0][:1000]
    crafted(record("front", t), truncated)
    crafted(record("front", t), None, crop_sha256="0" * 64)  # a crop that is not there
    with day.open("ab") as handle:
        handle.write(b'{"v":1,"id":"front.' + b"0" * 20 + b'","door":"front", "x": NaN}\n')
    db = tmp_path / "household" / "activity.db"
    cli(db, "doors", "add", "front", "--to", str(review))
    before = snapshot(review)
    assert cli(db, "doors", "sync", "front") == 0
    out = capsys.readouterr().out
    assert "front: 2 new attempts" in out and "7 refused" in out
    assert "not from 'front'" in out
    assert "256 expected for 64 float32 values" in out
    assert "embedding has 64 dimensions, model 4a2d4b3a1b1b09d7 has 128" in out
    assert "not a valid name" in out
    assert "not a whole JPEG" in out
    assert "is missing on the door" in out
    assert "not a JSON record" in out
    assert {row[0] for row in dump(db)} == {r.id for r in good}
    assert snapshot(review) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["activity.db", "activity.db-shm",
                                                           "activity.db-wal"]


def test_doors_list_remove_and_bad_targets(tmp_path: Path, faces: list[bytes],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "activity.db"
    assert cli(db, "doors", "add", "Front Door", "--to", str(tmp_path)) == 2
    assert "door name 'Front Door' is not valid" in capsys.readouterr().err
    assert cli(db, "doors", "add", "front", "--to", "ftp://door/x") == 2
    assert "unsupported scheme" in capsys.readouterr().err
    assert cli(db, "doors", "add", "front", "--to", str(tmp_path / "missing")) == 0
    assert cli(db, "doors", "add", "front", "--to", str(tmp_path)) == 2
    assert "already in the list" in capsys.readouterr().err
    assert cli(db, "doors", "sync", "front") != 0
    assert "review folder" in capsys.readouterr().err
    assert cli(db, "doors", "list", "--json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["name"] == "front" and "does not exist" in row["last_error"]
    assert cli(db, "doors", "remove", "front") == 0
    assert cli(db, "doors", "list") == 0
    assert "no doors yet" in capsys.readouterr().out
    assert cli(db, "doors", "remove", "front") == 2


def test_sync_over_ssh_fetches_the_same_records_and_changes_nothing(
        door: Door, tmp_path: Path, faces: list[bytes],  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    review = tmp_path / "var lib" / "review"  # a space in the path on the door
    review.parent.mkdir()
    written = fill(review, "porch", faces, 6)
    db = tmp_path / "activity.db"
    options = [f"--ssh-option={' '.join(door.options)}"]
    assert cli(db, "doors", "add", "porch", "--to", door.url(review), "-i", str(door.key),
               *options) == 0
    before = snapshot(review)
    assert cli(db, "doors", "sync", "porch") == 0
    assert "porch: 6 new attempts" in capsys.readouterr().out
    assert snapshot(review) == before
    stored = dump(db)
    assert {row[0] for row in stored} == {r.id for r in written}
    by_id = {row[0]: row for row in stored}
    for i, rec in enumerate(written):
        assert by_id[rec.id][7] == faces[i % len(faces)]
    # resumable and idempotent over ssh as well
    fill(review, "porch", faces, 1, start=T0 + timedelta(hours=7))
    assert cli(db, "doors", "sync") == 0
    assert "porch: 1 new attempts" in capsys.readouterr().out
    assert cli(db, "doors", "sync") == 0
    assert "porch: 0 new attempts" in capsys.readouterr().out
    assert len(dump(db)) == 7


def test_sync_over_ssh_with_a_key_the_door_refuses_says_why(
        door: Door, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    db = tmp_path / "activity.db"
    cli(db, "doors", "add", "porch", "--to", door.url(tmp_path), "-i", str(door.wrong_key),
        f"--ssh-option={' '.join(door.options)}")
    assert cli(db, "doors", "sync", "porch") != 0
    err = capsys.readouterr().err
    assert "step 'connect'" in err and "did not accept any of our keys" in err


def test_deploy_takes_a_doors_name(door: Door, tmp_path: Path, door_model: Path,  # noqa: F811
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``twinlock deploy BUNDLE --to NAME`` reaches the door with its own target, key and ssh
    options from the list."""
    db = tmp_path / "activity.db"
    spool = tmp_path / "spool"
    spool.mkdir()
    assert cli(db, "doors", "add", "porch", "--to", door.url(tmp_path / "review"), "-i",
               str(door.key), f"--ssh-option={' '.join(door.options)}", "--deploy-to",
               door.url(f"{spool}/")) == 0
    bundle = tmp_path / "home-20261206.twinlock"  # a real one: the door's bundle is recorded
    assert main(["keygen", "--out", str(tmp_path / "home")]) == 0
    assert main(["bundle", "--model", str(door_model), "--key", str(tmp_path / "home.key"),
                 "--out", str(bundle), "--db", str(tmp_path / "enrolment.db")]) == 0
    marker = tmp_path / "reloaded"
    assert main(["deploy", str(bundle), "--to", "porch", "--reload-command",
                 f"touch {marker}", "--activity-db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "door porch: ssh://" in out and "door porch now runs bundle" in out
    assert (spool / bundle.name).read_bytes() == bundle.read_bytes()
    assert marker.exists()
    # a name that is no door stays what it was: a folder that does not exist
    assert main(["deploy", str(bundle), "--to", "garage", "--activity-db", str(db)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_doors_deploy_target_defaults_to_its_hosts_drop_folder(tmp_path: Path) -> None:
    from twinlock.daemon.errors import UsageError
    from twinlock.trainer.household.doors import deploy_target_of

    with ActivityStore(tmp_path / "activity.db") as store:
        store.add_door("porch", "ssh://pi@door.local:2222/var/lib/twinlock/review/")
        store.add_door("shed", str(tmp_path))
        assert deploy_target_of(store.door("porch")) == \
            "ssh://pi@door.local:2222/var/spool/twinlock/"
        with pytest.raises(UsageError, match="read from a folder"):
            deploy_target_of(store.door("shed"))


def test_an_oversize_line_is_refused_and_the_records_after_it_are_still_taken(
        tmp_path: Path, faces: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    review = tmp_path / "review"
    first = fill(review, "front", faces, 1)
    day = review / first[0].day_file
    with day.open("ab") as handle:
        handle.write(b'{"v":1,"pad":"' + b"x" * 200_000 + b'"}\n')
    later = fill(review, "front", faces, 1, start=T0 + timedelta(minutes=5))
    db = tmp_path / "activity.db"
    cli(db, "doors", "add", "front", "--to", str(review))
    capsys.readouterr()
    assert cli(db, "doors", "sync") == 0
    out = capsys.readouterr().out
    assert "front: 2 new attempts" in out and "over the 65536 byte limit" in out
    assert {row[0] for row in dump(db)} == {first[0].id, later[0].id}
