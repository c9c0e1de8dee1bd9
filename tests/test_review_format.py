"""The review record format and the door's writer (daemon/review): what a household accepts,
what it refuses, and how a door keeps its folder bounded. Real face crops from LFW."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from twinlock.daemon.faces.images import load_image
from twinlock.daemon.review.format import (
    CROPS_DIR,
    MAX_CROP_BYTES,
    ReviewRecord,
    ReviewRecordError,
    check_crop,
    check_day_file_name,
    complete_lines,
    encode_record,
    new_record_id,
    parse_record,
)
from twinlock.daemon.review.store import ReviewWriter, encode_crop

DIM = 128
NOW = datetime(2026, 12, 6, 8, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def face_crop(lfw_dir: Path) -> bytes:
    """A real face, cut to a 150 px chip as the door keeps it."""
    image = load_image(lfw_dir / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    chip = cv2.resize(image[60:190, 60:190], (150, 150))
    return encode_crop(chip)


def make_record(door: str = "front", when: datetime = NOW, crop: bytes | None = None,
                **over: object) -> ReviewRecord:
    rng = np.random.default_rng(int(when.timestamp()))
    fields: dict[str, object] = {
        "id": new_record_id(door, when), "door": door, "time": when, "decision": "deny",
        "bundle_id": "20261206-0801", "model_id": "4a2d4b3a1b1b09d7", "audit_id": 17, "resident": None,
        "score": 0.12, "reason": "no resident matched",
        "embedding": rng.standard_normal(DIM).astype(np.float32),
        "crop_sha256": None if crop is None else hashlib.sha256(crop).hexdigest()}
    fields.update(over)
    return ReviewRecord(**fields)  # type: ignore[arg-type]


def line_of(record: ReviewRecord, **patch: object) -> bytes:
    data = json.loads(encode_record(record))
    data.update(patch)
    return (json.dumps(data) + "\n").encode()


def test_a_record_survives_the_round_trip(face_crop: bytes) -> None:
    record = make_record(crop=face_crop, decision="unlock", resident="alice", score=0.97)
    back = parse_record(encode_record(record), door="front", dim=DIM)
    assert back.id == record.id and back.door == "front" and back.decision == "unlock"
    assert back.time == NOW and back.resident == "alice" and back.score == pytest.approx(0.97)
    assert back.bundle_id == "20261206-0801" and back.model_id == "4a2d4b3a1b1b09d7"
    assert back.embedding is not None and back.embedding.dtype == np.float32
    np.testing.assert_array_equal(back.embedding, record.embedding)
    check_crop(face_crop, back, "crop")  # the real JPEG passes


@pytest.mark.parametrize(("patch", "message"), [
    ({"door": "back"}, "from door 'back', not from 'front'"),
    ({"dim": 64}, "64 dimensions, the model has 128"),
    ({"embedding": base64.b64encode(np.full(DIM, np.nan, "<f4").tobytes()).decode()}, "NaN"),
    ({"embedding": base64.b64encode(np.zeros(DIM - 1, "<f4").tobytes()).decode()},
     "bytes, 512 expected"),
    ({"embedding": "!!not base64!!"}, "not base64"),
    ({"resident": "../../etc/passwd"}, "not a valid name"),
    ({"resident": "al ice"}, "not a valid name"),
    ({"id": "front.../../x"}, "not a record id"),
    ({"id": "front/..%2f.0123456789abcdef0123"}, "not a record id"),
    ({"decision": "open"}, "not one of unlock"),
    ({"score": 1.5}, "not a number from 0 to 1"),
    ({"time": "yesterday"}, "not an ISO 8601 time"),
    ({"time": "2026-12-06T08:30:00"}, "no time zone"),
    ({"v": 2}, "format version 2"),
    ({"extra": 1}, "unknown field"),
    ({"reason": "x\x1b[2J"}, "control characters"),
    ({"crop_sha256": "../x"}, "not a sha256"),
])
def test_crafted_records_are_refused_with_the_reason(patch: dict[str, object],
                                                     message: str) -> None:
    line = line_of(make_record(), **patch)
    with pytest.raises(ReviewRecordError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_record(line, door="front", dim=DIM, where="2026-12-06.jsonl:3")


def test_an_id_from_another_door_is_refused_even_when_the_door_field_agrees() -> None:
    line = line_of(make_record(), id=new_record_id("back", NOW))
    with pytest.raises(ReviewRecordError, match="not from 'front'"):
        parse_record(line, door="front", dim=DIM)


def test_nan_written_as_a_json_constant_and_oversize_lines_are_refused() -> None:
    text = encode_record(make_record()).replace(b'"score":0.12', b'"score":NaN')
    with pytest.raises(ReviewRecordError, match="not a JSON record"):
        parse_record(text, door="front")
    with pytest.raises(ReviewRecordError, match="over the 65536 byte limit"):
        parse_record(b"{" + b" " * 70_000 + b"}\n", door="front")


def test_crafted_crops_are_refused(face_crop: bytes) -> None:
    def record_for(data: bytes) -> ReviewRecord:
        return make_record(crop=data)

    truncated = face_crop[: len(face_crop) // 2]
    with pytest.raises(ReviewRecordError, match="not a whole JPEG"):
        check_crop(truncated, record_for(truncated), "crop")
    with pytest.raises(ReviewRecordError, match="does not match the record's sha256"):
        check_crop(face_crop, record_for(face_crop[:-1] + b"\x00"), "crop")
    huge = face_crop + b"\0" * MAX_CROP_BYTES
    with pytest.raises(ReviewRecordError, match="byte limit"):
        check_crop(huge, record_for(huge), "crop")
    big = encode_crop(np.zeros((600, 600, 3), np.uint8))
    with pytest.raises(ReviewRecordError, match="at most 512x512"):
        check_crop(big, record_for(big), "crop")
    png = bytes(cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1])
    with pytest.raises(ReviewRecordError, match="not a whole JPEG"):
        check_crop(png, record_for(png), "crop")


def test_only_whole_lines_are_read_and_offsets_resume() -> None:
    a, b = encode_record(make_record()), encode_record(make_record(decision="lockout"))
    data = a + b + b'{"v":1,"id":'  # the door is writing the third line right now
    lines = list(complete_lines(data))
    assert [line for _, line in lines] == [a, b]
    assert lines[-1][0] == len(a) + len(b)
    # reading again from the first line's end gives the second line, at the same offset
    assert list(complete_lines(data[len(a):], len(a))) == [lines[1]]


def test_day_file_names_are_checked() -> None:
    assert check_day_file_name("2026-12-06.jsonl") == "2026-12-06.jsonl"
    for bad in ("2026-13-01.jsonl", "../2026-12-06.jsonl", "2026-12-06.jsonl.part", "x"):
        with pytest.raises(ReviewRecordError):
            check_day_file_name(bad)


# -- the door's writer ----------------------------------------------------------------------------


def test_the_writer_appends_a_record_and_its_crop(tmp_path: Path, face_crop: bytes) -> None:
    folder = tmp_path / "review"
    writer = ReviewWriter(folder, "front", retention_days=7, max_bytes=10_000_000,
                          clock=NOW.timestamp)
    first, second = make_record(), make_record(decision="unlock", resident="alice", score=0.9)
    assert writer.append(first, face_crop) and writer.append(second, None)
    day = folder / "2026-12-06.jsonl"
    lines = day.read_bytes().splitlines(keepends=True)
    assert len(lines) == 2
    back = parse_record(lines[0], door="front", dim=DIM)
    assert back.id == first.id and back.crop_sha256 == hashlib.sha256(face_crop).hexdigest()
    crop = folder / CROPS_DIR / f"{first.id}.jpg"
    assert crop.read_bytes() == face_crop
    check_crop(crop.read_bytes(), back, "crop")
    assert parse_record(lines[1], door="front").crop_sha256 is None
    assert oct(day.stat().st_mode & 0o777) == "0o640"
    assert oct(folder.stat().st_mode & 0o777) == "0o750"


def test_records_in_a_setgid_folder_get_its_group(tmp_path: Path, face_crop: bytes) -> None:
    """The installer gives the review folder's parent to the deploy group with the setgid bit:
    the folders the writer makes keep it, so every record and crop (crops/ too) gets that group
    and the household's fetch over the deploy account can read them."""
    import os
    import stat

    group = os.getgid() + 4242  # any group but the writer's own
    if os.geteuid() != 0:
        pytest.skip("giving a folder another group needs root")
    os.chown(tmp_path, -1, group)
    os.chmod(tmp_path, 0o2750)
    folder = tmp_path / "review"
    writer = ReviewWriter(folder, "front", retention_days=7, max_bytes=10_000_000,
                          clock=NOW.timestamp)
    record = make_record()
    assert writer.append(record, face_crop)
    made = [folder, folder / CROPS_DIR, folder / "2026-12-06.jsonl",
            folder / CROPS_DIR / f"{record.id}.jpg"]
    assert [p.stat().st_gid for p in made] == [group] * 4
    assert all(p.stat().st_mode & stat.S_ISGID for p in made[:2])
    assert [oct(p.stat().st_mode & 0o777) for p in made] == ["0o750", "0o750", "0o640", "0o640"]


def test_the_writer_refuses_another_doors_record(tmp_path: Path) -> None:
    writer = ReviewWriter(tmp_path, "front", retention_days=7, max_bytes=10**7)
    with pytest.raises(ReviewRecordError, match="given to door 'front'"):
        writer.append(make_record(door="back"), None)


def test_retention_deletes_old_days_and_their_crops(tmp_path: Path, face_crop: bytes) -> None:
    now = [NOW.timestamp()]
    writer = ReviewWriter(tmp_path, "front", retention_days=2, max_bytes=10**7,
                          clock=lambda: now[0])
    old = make_record(when=NOW - timedelta(days=5))
    now[0] = old.time.timestamp()
    assert writer.append(old, face_crop)
    now[0] = NOW.timestamp()
    fresh = make_record()
    assert writer.append(fresh, face_crop)
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["2026-12-06.jsonl"]
    assert not (tmp_path / CROPS_DIR / f"{old.id}.jpg").exists()
    assert (tmp_path / CROPS_DIR / f"{fresh.id}.jpg").exists()


def test_the_size_cap_deletes_the_oldest_day_first(tmp_path: Path, face_crop: bytes) -> None:
    one = len(encode_record(make_record(crop=face_crop))) + len(face_crop)
    now = [0.0]
    writer = ReviewWriter(tmp_path, "front", retention_days=30, max_bytes=int(2.5 * one),
                          clock=lambda: now[0])
    days = [NOW - timedelta(days=d) for d in (2, 1, 0)]
    records = [make_record(when=d) for d in days]
    for record in records:
        now[0] = record.time.timestamp()
        assert writer.append(record, face_crop)
    names = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert names == ["2026-12-05.jsonl", "2026-12-06.jsonl"]  # the oldest day went
    assert not (tmp_path / CROPS_DIR / f"{records[0].id}.jpg").exists()
    assert writer.used_bytes() <= writer.max_bytes


def test_a_full_or_read_only_folder_keeps_the_door_going_and_says_so_once(
        tmp_path: Path, face_crop: bytes, caplog: pytest.LogCaptureFixture) -> None:
    one = len(encode_record(make_record(crop=face_crop))) + len(face_crop)
    writer = ReviewWriter(tmp_path / "r", "front", retention_days=30, max_bytes=one + 10,
                          clock=NOW.timestamp)
    caplog.set_level(logging.WARNING)
    assert writer.append(make_record(), face_crop)
    assert not writer.append(make_record(), face_crop)  # today's records fill the cap
    assert not writer.append(make_record(), face_crop)
    warnings = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(warnings) == 1
    blocked = tmp_path / "not-a-folder"  # a folder that cannot be made (root or not)
    blocked.write_text("x")
    writer = ReviewWriter(blocked / "review", "front", retention_days=30, max_bytes=10**7,
                          clock=NOW.timestamp)
    caplog.clear()
    assert not writer.append(make_record(), face_crop)
    assert not writer.append(make_record(), face_crop)
    assert len([r for r in caplog.records if "cannot write review" in r.getMessage()]) == 1
