"""The review record format, shared by the door (which writes it) and the household (which reads it).

A door with ``review:`` on keeps, per finished attempt, one line of JSON in a file per UTC day
(``YYYY-MM-DD.jsonl``, append-only) and the attempt's best face crop as ``crops/<id>.jpg``. Why
this shape:

- **Fetching is resumable and idempotent, and never changes the door.** A day file only grows,
  so the household remembers, per door and day file, how many bytes it has taken (whole lines
  only: a line still being written has no newline yet). Fetching again from that offset gives
  the same records; records carry a stable id, so a record taken twice is stored once. Reading
  needs nothing but read access (``tail -c``/``cat``/``tar`` over the SSH deploy account, or a
  mounted folder).
- **Old days go first.** Retention and the size cap delete whole day files (and their crops),
  oldest first, so what is left is always a contiguous run of days.
- **The reader trusts nothing.** A door may be compromised, a card may be swapped: every field
  is checked (names, sizes, finite numbers, the embedding's dimension, the crop's hash, size and
  pixels) before anything is stored, and a record that names another door than the one being
  fetched is refused. :class:`ReviewRecordError` says which file, line and field.

The embedding is little-endian float32, base64 in the line; the crop is the tower's own aligned
chip (the face the door scored), a small JPEG. Both identify a person: the folder is private to
the daemon's user and the deploy group.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ..errors import DataError
from ..faces.images import decode_image, image_size

FORMAT_VERSION = 1
#: the decision a record stands for, as a field (nothing parses reason text). ``remote``: the
#: door opened on a remote command (MQTT); nobody's face was scored, so it has no crop and no
#: embedding
DECISIONS = ("unlock", "deny", "liveness", "lockout", "remote")
#: decisions that never carry a face
FACELESS_DECISIONS = ("remote",)
#: a door's name: what the household calls it and what every record id starts with
DOOR_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
#: ``<door>.<12 hex: ms since 1970><8 hex: random>``: unique, sorts by time within a door
RECORD_ID_RE = re.compile(r"([a-z0-9][a-z0-9-]{0,31})\.([0-9a-f]{12})([0-9a-f]{8})")
DAY_FILE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})\.jsonl")
#: bundle, model and resident names: printable, no path separators or spaces
TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
CROPS_DIR = "crops"
CROP_SUFFIX = ".jpg"

MAX_LINE_BYTES = 64 * 1024  # a 4096-d embedding in base64 is 22 KB
MAX_CROP_BYTES = 128 * 1024  # a 150 px chip at quality 90 is about 8 KB
MAX_CROP_SIDE = 512
MAX_DIM = 4096
MAX_REASON_CHARS = 200
#: the largest day file a household takes in one fetch (the rest waits for the next)
MAX_FETCH_BYTES = 64 * 1024 * 1024
#: the largest MQTT review message: the record's line, a newline, the crop in base64
MAX_MQTT_BYTES = MAX_LINE_BYTES + 1 + 4 * -(-MAX_CROP_BYTES // 3)


class ReviewRecordError(DataError):
    """A review record (or its crop) is malformed, oversized or from another door; ``where``
    names the file and line."""


@dataclass(frozen=True)
class ReviewRecord:
    """One finished attempt at a door (one line of a day file)."""

    id: str
    door: str
    time: datetime  # UTC
    decision: str
    bundle_id: str | None
    model_id: str | None
    audit_id: int | None = None
    resident: str | None = None
    score: float | None = None
    reason: str = ""
    #: float32, the model's dimension; None when no face of the attempt was scored
    embedding: np.ndarray | None = None
    #: sha256 of ``crops/<id>.jpg``; None when the attempt kept no crop
    crop_sha256: str | None = None

    @property
    def crop_name(self) -> str:
        """The crop's file name inside ``crops/`` (never a path from outside the record)."""
        return crop_name(self.id)

    @property
    def day_file(self) -> str:
        return day_file_name(self.time)


def check_door_name(name: str) -> str:
    """``name`` if it is a valid door name; ReviewRecordError otherwise."""
    if not isinstance(name, str) or not DOOR_NAME_RE.fullmatch(name):
        raise ReviewRecordError(
            f"door name {name!r} is not valid: use 1-32 lower-case letters, digits and '-', "
            "starting with a letter or digit")
    return name


def new_record_id(door: str, when: datetime) -> str:
    """A fresh, unique id for an attempt at ``door`` at ``when``."""
    check_door_name(door)
    ms = int(when.timestamp() * 1000)
    return f"{door}.{ms:012x}{secrets.token_hex(4)}"


def crop_name(record_id: str) -> str:
    if not RECORD_ID_RE.fullmatch(record_id):
        raise ReviewRecordError(f"record id {record_id!r} is not valid")
    return record_id + CROP_SUFFIX


def day_file_name(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d") + ".jsonl"


def check_day_file_name(name: str) -> str:
    """``name`` if it is a day file's name (``YYYY-MM-DD.jsonl`` of a real date)."""
    match = DAY_FILE_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ReviewRecordError(f"{name!r} is not a review day file (YYYY-MM-DD.jsonl)")
    try:
        datetime(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        raise ReviewRecordError(f"{name!r} names no real day") from None
    return name


# -- writing ------------------------------------------------------------------------------------


def encode_record(record: ReviewRecord) -> bytes:
    """One line of JSON (with its newline). The record is checked as a reader would check it,
    so a door never writes what a household would refuse."""
    data: dict[str, Any] = {
        "v": FORMAT_VERSION, "id": record.id, "door": record.door,
        "time": record.time.astimezone(UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"),
        "decision": record.decision, "audit_id": record.audit_id,
        "bundle_id": record.bundle_id, "model_id": record.model_id,
        "resident": record.resident, "score": record.score, "reason": record.reason,
        "dim": None, "embedding": None, "crop_sha256": record.crop_sha256,
    }
    if record.embedding is not None:
        vector = np.asarray(record.embedding, dtype="<f4").reshape(-1)
        data["dim"] = int(vector.size)
        data["embedding"] = base64.b64encode(vector.tobytes()).decode("ascii")
    line = (json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n").encode()
    parse_record(line, door=record.door, where="new record")
    return line


# -- reading ------------------------------------------------------------------------------------


def complete_lines(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset just past the line, line) for each whole line in ``data`` (read from byte
    ``offset`` of its file). A last line with no newline is still being written: not yielded."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return
        yield offset + end + 1, data[start:end + 1]
        start = end + 1


def _optional(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ReviewRecordError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _token(data: dict[str, Any], key: str, where: str) -> str | None:
    value = _optional(data, key, str, where)
    if value is not None and not TOKEN_RE.fullmatch(value):
        raise ReviewRecordError(f"{where}: {key!r} = {value[:40]!r} is not a valid name "
                                "(letters, digits and ._:+- only, up to 128)")
    return value


def parse_record(line: bytes, *, door: str, dim: int | None = None,
                 where: str = "record") -> ReviewRecord:
    """Check and decode one line. ``door`` is the door being read: a record naming another is
    refused. ``dim``, when known (the model's dimension), is required of every embedding."""
    if len(line) > MAX_LINE_BYTES:
        raise ReviewRecordError(f"{where}: line of {len(line)} bytes, over the "
                                f"{MAX_LINE_BYTES} byte limit")
    try:
        data = json.loads(line, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReviewRecordError(f"{where}: not a JSON record ({exc})") from None
    if not isinstance(data, dict):
        raise ReviewRecordError(f"{where}: not a JSON object")
    known = {"v", "id", "door", "time", "decision", "audit_id", "bundle_id", "model_id",
             "resident", "score", "reason", "dim", "embedding", "crop_sha256"}
    extra = sorted(set(data) - known)
    if extra:
        raise ReviewRecordError(f"{where}: unknown field(s) {', '.join(map(repr, extra[:5]))}")
    if data.get("v") != FORMAT_VERSION:
        raise ReviewRecordError(f"{where}: format version {data.get('v')!r}, this TwinLock "
                                f"reads version {FORMAT_VERSION}")
    record_id = data.get("id")
    match = RECORD_ID_RE.fullmatch(record_id) if isinstance(record_id, str) else None
    if match is None:
        raise ReviewRecordError(f"{where}: id {str(record_id)[:60]!r} is not a record id "
                                "(DOOR.HEX20)")
    if data.get("door") != door or match.group(1) != door:
        raise ReviewRecordError(f"{where}: record {record_id} is from door "
                                f"{str(data.get('door'))[:40]!r}, not from {door!r}, the door "
                                "being read")
    when = _time(data.get("time"), where)
    decision = data.get("decision")
    if decision not in DECISIONS:
        raise ReviewRecordError(f"{where}: decision {str(decision)[:40]!r} is not one of "
                                f"{', '.join(DECISIONS)}")
    audit_id = _optional(data, "audit_id", int, where)
    if audit_id is not None and not 0 < audit_id < 2**63:
        raise ReviewRecordError(f"{where}: audit_id {audit_id} out of range")
    score = _optional(data, "score", (int, float), where)
    if score is not None and not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise ReviewRecordError(f"{where}: score {score!r} is not a number from 0 to 1")
    reason = _optional(data, "reason", str, where) or ""
    if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise ReviewRecordError(f"{where}: reason is longer than {MAX_REASON_CHARS} characters "
                                "or holds control characters")
    embedding = _embedding(data, dim, where)
    sha = _optional(data, "crop_sha256", str, where)
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ReviewRecordError(f"{where}: crop_sha256 is not a sha256 in hex")
    if decision in FACELESS_DECISIONS and (embedding is not None or sha is not None):
        raise ReviewRecordError(f"{where}: a {decision!r} record has no face, yet names an "
                                "embedding or a crop")
    return ReviewRecord(
        id=match.group(0), door=door, time=when, decision=decision,
        bundle_id=_token(data, "bundle_id", where), model_id=_token(data, "model_id", where),
        audit_id=audit_id, resident=_token(data, "resident", where),
        score=None if score is None else float(score), reason=reason, embedding=embedding,
        crop_sha256=sha)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _time(value: object, where: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise ReviewRecordError(f"{where}: time is missing or not text")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ReviewRecordError(f"{where}: time {value!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ReviewRecordError(f"{where}: time {value!r} has no time zone")
    return when.astimezone(UTC)


def _embedding(data: dict[str, Any], dim: int | None, where: str) -> np.ndarray | None:
    text = _optional(data, "embedding", str, where)
    size = _optional(data, "dim", int, where)
    if text is None:
        if size is not None:
            raise ReviewRecordError(f"{where}: dim given without an embedding")
        return None
    if size is None or not 1 <= size <= MAX_DIM:
        raise ReviewRecordError(f"{where}: dim {size!r} is not from 1 to {MAX_DIM}")
    if dim is not None and size != dim:
        raise ReviewRecordError(f"{where}: embedding has {size} dimensions, the model has {dim}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ReviewRecordError(f"{where}: embedding is not base64") from None
    if len(raw) != 4 * size:
        raise ReviewRecordError(f"{where}: embedding holds {len(raw)} bytes, {4 * size} expected "
                                f"for {size} float32 values")
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        raise ReviewRecordError(f"{where}: embedding holds NaN or infinite values")
    if not float(np.linalg.norm(vector)) > 0:
        raise ReviewRecordError(f"{where}: embedding is all zeros")
    return vector


def check_crop(data: bytes, record: ReviewRecord, where: str) -> None:
    """Refuse a crop that is not the record's (hash), too large, not a whole JPEG, or too many
    pixels (checked from the header before decoding), or that does not decode."""
    if len(data) > MAX_CROP_BYTES:
        raise ReviewRecordError(f"{where}: crop of {len(data)} bytes, over the {MAX_CROP_BYTES} "
                                "byte limit")
    if record.crop_sha256 is None or hashlib.sha256(data).hexdigest() != record.crop_sha256:
        raise ReviewRecordError(f"{where}: crop does not match the record's sha256")
    if not (data.startswith(b"\xff\xd8\xff") and data.rstrip(b"\0").endswith(b"\xff\xd9")):
        raise ReviewRecordError(f"{where}: crop is not a whole JPEG (truncated or another format)")
    size = image_size(data)
    if size is None or not (0 < size[0] <= MAX_CROP_SIDE and 0 < size[1] <= MAX_CROP_SIDE):
        raise ReviewRecordError(f"{where}: crop of {size} pixels; at most "
                                f"{MAX_CROP_SIDE}x{MAX_CROP_SIDE} expected")
    try:
        decode_image(data, where)
    except DataError as exc:
        raise ReviewRecordError(f"{where}: crop does not decode ({exc})") from None


# -- over MQTT ----------------------------------------------------------------------------------


def encode_mqtt(line: bytes, crop: bytes | None) -> bytes:
    """A review message for MQTT (``review.mqtt``): the record's line exactly as the day file
    holds it (with its newline), then the crop in base64 (nothing when the record has none).
    One message carries one record, whole: the household checks it with the same reader."""
    if not line.endswith(b"\n") or b"\n" in line[:-1]:
        raise ReviewRecordError("a review message starts with exactly one record line")
    return line + (base64.b64encode(crop) if crop is not None else b"")


def parse_mqtt(payload: bytes, *, door: str, where: str = "message"
               ) -> tuple[ReviewRecord, bytes | None]:
    """Check and decode a review message (:func:`encode_mqtt`): the record through
    :func:`parse_record`, the crop through :func:`check_crop`. Anything else is refused."""
    if len(payload) > MAX_MQTT_BYTES:
        raise ReviewRecordError(f"{where}: message of {len(payload)} bytes, over the "
                                f"{MAX_MQTT_BYTES} byte limit")
    end = payload.find(b"\n")
    if end < 0:
        raise ReviewRecordError(f"{where}: no record line (a review message is the record's "
                                "JSON line, then the crop in base64)")
    record = parse_record(payload[:end + 1], door=door, where=where)
    text = payload[end + 1:]
    if not text:
        if record.crop_sha256 is not None:
            raise ReviewRecordError(f"{where}: record {record.id} names a crop the message "
                                    "does not hold")
        return record, None
    if record.crop_sha256 is None:
        raise ReviewRecordError(f"{where}: record {record.id} has no crop, yet the message "
                                "holds one")
    try:
        crop = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ReviewRecordError(f"{where}: the crop is not base64") from None
    check_crop(crop, record, f"{where}: crop of {record.id}")
    return record, crop
