"""The audit log: every decision the door makes, kept in SQLite so that it survives power loss.

A door lock must be able to answer "who opened it, when, and why not" long after the fact, and a Pi
loses power without warning. SQLite in WAL mode with ``synchronous=FULL`` syncs the write-ahead
log at every commit, and every :meth:`AuditLog.record` is its own transaction, so a record whose
``record()`` call has returned is on disk. The log is readable by the service user alone: the
folder is 0700 and the database with its ``-wal``/``-shm`` companions 0600.

Never put embeddings, anchors, keys or other secrets into a record: ``details`` is free-form JSON
for small facts (frame size, thresholds, bundle id, per-stage timings). NumPy arrays are refused
outright because an array in ``details`` is almost always an embedding by mistake.

Snapshots (JPEG frames kept as evidence) live in their own folder under a size cap; see
:class:`SnapshotStore`.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import math
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AuditError, UsageError
from .closing import Closing
from .files import atomic_write
from .json_encoding import json_default
from .private_db import PRIVATE_FILE_MODE, make_private_dirs, migrate_schema, open_private_db

logger = logging.getLogger(__name__)

#: every event the log accepts; anything else is a programming error
EVENTS: frozenset[str] = frozenset(
    {"unlock", "deny", "no_match", "lockout", "quality", "fault", "start", "stop", "reload",
     "bundle", "remote"}  # remote: a refused remote (MQTT) unlock; an accepted one is "unlock"
)

#: the schema this code writes; the file's ``PRAGMA user_version`` holds the schema it has
SCHEMA_VERSION = 1

#: the clock may lag the newest record by this much (a few NTP corrections) and still prune
CLOCK_BEHIND_SLACK_S = 86400.0

#: a ``details`` object larger than this is refused: the log is for facts, not payloads
MAX_DETAILS_BYTES = 64 * 1024

#: statx(2)'s attribute bits for files that cannot be written in place (``chattr +i`` / ``+a``)
_UNWRITABLE_ATTRIBUTES = {0x10: "immutable", 0x20: "append-only"}
_AT_FDCWD, _AT_SYMLINK_NOFOLLOW = -100, 0x100


@functools.cache
def _statx() -> Any:
    """libc's statx, or None (not Linux, glibc < 2.28)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                         ctypes.c_char_p]
    function.restype = ctypes.c_int
    return function


def _keep_open_until_exit(conn: sqlite3.Connection) -> None:
    """Never let ``conn`` be closed or freed in this process, not even at interpreter exit.

    A reference held in a list would be dropped when the interpreter clears its modules at exit,
    and freeing a connection closes it. One reference that nothing owns keeps it alive to the
    end; the process's exit then releases it without SQLite writing a byte.
    """
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


def unwritable_reason(path: Path) -> str | None:
    """Why ``path`` cannot be written in place (immutable or append-only), or None.

    SQLite maps the WAL index (``-shm``) into memory; writing through that mapping to a file
    made immutable raises SIGBUS and kills the process, where a write() would have failed with
    an error. Checked before each record so the door refuses the write (and the unlock) and
    keeps running. Asked with statx(2) by path: opening and closing one of SQLite's files in
    this process would drop SQLite's POSIX locks on it (close() releases all of a process's
    locks on a file), and another process could then checkpoint and delete the WAL under it.
    """
    statx = _statx()
    if statx is None:
        return None
    buffer = ctypes.create_string_buffer(256)
    if statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, 0, buffer) != 0:
        return None  # missing (-wal/-shm come and go): SQLite will say what is wrong
    attributes, = struct.unpack_from("=Q", buffer, 8)
    known, = struct.unpack_from("=Q", buffer, 56)
    found = [name for bit, name in _UNWRITABLE_ATTRIBUTES.items() if attributes & known & bit]
    return f"{path.name} is {' and '.join(found)} (chattr -i / -a)" if found else None


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """Schema 1: the decisions table and its time index."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS decisions (
               id INTEGER PRIMARY KEY,
               ts REAL NOT NULL,
               ts_iso TEXT NOT NULL,
               event TEXT NOT NULL,
               user TEXT NULL,
               best_score REAL NULL,
               decision TEXT NOT NULL,
               reason TEXT NOT NULL,
               frame INTEGER NULL,
               details TEXT NULL
           )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts)")


#: migration hook: ``MIGRATIONS[n]`` takes a file from schema n-1 to n inside one transaction.
#: A new schema adds a function here and bumps SCHEMA_VERSION; old logs upgrade on open.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_to_1}


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One row of the log, as :meth:`AuditLog.query` returns it."""

    id: int
    ts: float
    ts_iso: str
    event: str
    user: str | None
    best_score: float | None
    decision: str
    reason: str
    frame: int | None
    details: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in column order, for JSON output."""
        return asdict(self)


@contextmanager
def _private_umask() -> Iterator[None]:
    """Files and folders created inside are private from birth, not only after the chmod.

    The umask is process-wide, so this is used only while opening (start-up), never per record.
    """
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _utc_iso(ts: float) -> str:
    """UTC ISO-8601 with milliseconds and a ``Z``: sorts as text, reads the same everywhere."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _encode_details(details: Mapping[str, Any] | None) -> str | None:
    if details is None:
        return None
    if not isinstance(details, Mapping):
        raise AuditError(f"details must be a mapping, not {type(details).__name__}")
    try:
        text = json.dumps(dict(details), default=json_default, allow_nan=False,
                          ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"details cannot be stored: {exc}") from exc
    if len(text.encode()) > MAX_DETAILS_BYTES:
        raise AuditError(
            f"details are {len(text.encode())} bytes; the audit log keeps at most "
            f"{MAX_DETAILS_BYTES} (facts, not payloads)"
        )
    return text


class AuditLog(Closing):
    """The decisions table in a private SQLite file; one connection shared under a lock.

    The frame loop and the action's timer thread both write, so the one connection is opened
    with ``check_same_thread=False`` and every use holds ``self._lock``. The connection runs in
    autocommit mode: each record is one transaction, committed (and, with ``synchronous=FULL``,
    synced) before :meth:`record` returns.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        with _private_umask():
            make_private_dirs(self.path.parent, AuditError)
            # check_same_thread=False: the action's timer thread records too, under self._lock
            conn = open_private_db(self.path, AuditError, "audit log", self._migrate,
                                   check_same_thread=False)
        self._conn = conn
        logger.debug("audit log open: %s (schema %s)", self.path, SCHEMA_VERSION)

    # -- set-up ------------------------------------------------------------------------------

    def _migrate(self, conn: sqlite3.Connection) -> None:
        migrate_schema(conn, SCHEMA_VERSION, MIGRATIONS, AuditError, f"audit log {self.path}")

    @property
    def schema_version(self) -> int:
        """The schema of the open file (``PRAGMA user_version``)."""
        with self._locked() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def settings(self) -> dict[str, object]:
        """The durability settings as SQLite reports them on the writing connection.

        ``synchronous`` is per connection, so only this one can say; for diagnostics and tests.
        """
        with self._locked() as conn:
            return {
                name: conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "busy_timeout", "user_version")
            }

    def _unwritable(self) -> str | None:
        """Why the database, its WAL or its WAL index cannot be written in place, or None."""
        for suffix in ("", "-wal", "-shm"):
            why = unwritable_reason(Path(f"{self.path}{suffix}"))
            if why is not None:
                return why
        return None

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise AuditError(f"audit log {self.path} is closed")
            yield self._conn

    # -- writing -----------------------------------------------------------------------------

    def record(
        self,
        event: str,
        decision: str,
        reason: str,
        user: str | None = None,
        best_score: float | None = None,
        frame: int | None = None,
        details: Mapping[str, Any] | None = None,
        ts: float | None = None,
    ) -> int:
        """Append one record and commit it; returns its id once it is durable.

        ``details`` must not contain embeddings or secrets (arrays are refused).
        """
        if event not in EVENTS:
            raise AuditError(f"unknown audit event {event!r}; known: {', '.join(sorted(EVENTS))}")
        stamp = time.time() if ts is None else float(ts)
        if not math.isfinite(stamp):
            raise AuditError(f"audit timestamp must be finite, not {stamp!r}")
        score = None if best_score is None else float(best_score)
        row = (
            stamp, _utc_iso(stamp), event, None if user is None else str(user), score,
            str(decision), str(reason), None if frame is None else int(frame),
            _encode_details(details),
        )
        with self._locked() as conn:
            why = self._unwritable()  # a SIGBUS would kill the door: refuse first
            if why is not None:
                raise AuditError(f"cannot write to audit log {self.path}: {why}")
            try:
                cursor = conn.execute(
                    "INSERT INTO decisions (ts, ts_iso, event, user, best_score, decision, reason,"
                    " frame, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
            except sqlite3.Error as exc:
                raise AuditError(f"cannot write to audit log {self.path}: {exc}") from exc
            record_id = cursor.lastrowid
        if record_id is None:  # pragma: no cover - an INSERT always sets it
            raise AuditError(f"audit log {self.path}: SQLite returned no row id")
        return record_id

    def prune(self, retention_days: float, now: float | None = None) -> int:
        """Delete records older than ``retention_days``; returns how many went.

        Age is measured from the clock or from the newest record, whichever is earlier: a Pi
        has no battery clock, and one that starts with its clock far ahead (a bad NTP answer, a
        wrong RTC) must not take the whole log with it. When the clock and the newest record
        disagree by more than the retention period (the clock that far ahead of it, or more
        than a day behind it), nothing is pruned and a warning says why: either the door was
        off that long or the clock is wrong, and a log can be pruned later but never restored.

        No VACUUM: the freed pages are reused by new records, and rewriting the file would wear
        the SD card for nothing.
        """
        if not retention_days > 0:
            raise UsageError(f"retention_days must be > 0, not {retention_days!r}")
        clock = time.time() if now is None else float(now)
        period = float(retention_days) * 86400.0
        with self._locked() as conn:
            why = self._unwritable()
            if why is not None:
                raise AuditError(f"cannot prune audit log {self.path}: {why}")
            try:
                newest = conn.execute("SELECT MAX(ts) FROM decisions").fetchone()[0]
                if newest is None:
                    return 0
                if clock - newest > period or newest - clock > CLOCK_BEHIND_SLACK_S:
                    logger.warning(
                        "audit log %s: the clock says %s but the newest record is from %s: "
                        "either the door was off that long or the clock is wrong; nothing "
                        "pruned", self.path, _utc_iso(clock), _utc_iso(newest))
                    return 0
                cutoff = min(clock, newest) - period
                deleted = conn.execute("DELETE FROM decisions WHERE ts < ?", (cutoff,)).rowcount
            except sqlite3.Error as exc:
                raise AuditError(f"cannot prune audit log {self.path}: {exc}") from exc
        if deleted:
            logger.info("audit log: pruned %s records older than %s days", deleted, retention_days)
        return deleted

    # -- reading -----------------------------------------------------------------------------

    def last(self, event: str) -> AuditRecord | None:
        """The record of ``event`` written last (by id, not by time: the clock may have been
        set back since), or None."""
        if event not in EVENTS:
            raise UsageError(f"unknown event {event!r}; choose from {', '.join(sorted(EVENTS))}")
        with self._locked() as conn:
            try:
                row = conn.execute(
                    "SELECT id, ts, ts_iso, event, user, best_score, decision, reason, frame,"
                    " details FROM decisions WHERE event = ? ORDER BY id DESC LIMIT 1",
                    (event,)).fetchone()
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read audit log {self.path}: {exc}") from exc
        if row is None:
            return None
        return AuditRecord(id=row[0], ts=row[1], ts_iso=row[2], event=row[3], user=row[4],
                           best_score=row[5], decision=row[6], reason=row[7], frame=row[8],
                           details=None if row[9] is None else json.loads(row[9]))

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        event: str | None = None,
        user: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        """Records with ``since <= ts < until`` (either bound optional), oldest first.

        With ``limit`` it returns the *newest* ``limit`` matches, still oldest first, which is
        what a person asking for "the last 20" expects. Bad filter values are a UsageError
        because they come from the command line.
        """
        clauses: list[str] = []
        params: list[object] = []
        if since is not None:
            clauses.append("ts >= ?")
            params.append(float(since))
        if until is not None:
            clauses.append("ts < ?")
            params.append(float(until))
        if event is not None:
            if event not in EVENTS:
                raise UsageError(f"unknown event {event!r}; choose from {', '.join(sorted(EVENTS))}")
            clauses.append("event = ?")
            params.append(event)
        if user is not None:
            clauses.append("user = ?")
            params.append(user)
        sql = ("SELECT id, ts, ts_iso, event, user, best_score, decision, reason, frame, details"
               " FROM decisions")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY ts DESC, id DESC"
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                raise UsageError(f"limit must be a positive whole number, not {limit!r}")
            sql += " LIMIT ?"
            params.append(limit)
        with self._locked() as conn:
            try:
                rows = conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read audit log {self.path}: {exc}") from exc
        rows.reverse()
        return [
            AuditRecord(
                id=row[0], ts=row[1], ts_iso=row[2], event=row[3], user=row[4], best_score=row[5],
                decision=row[6], reason=row[7], frame=row[8],
                details=None if row[9] is None else json.loads(row[9]),
            )
            for row in rows
        ]

    def stream(
        self,
        since: float | None = None,
        event: str | None = None,
        user: str | None = None,
        limit: int | None = None,
        batch: int = 500,
    ) -> Iterator[AuditRecord]:
        """:meth:`query`'s records (oldest first; with ``limit`` the newest ``limit``), read
        from the cursor ``batch`` rows at a time: a log of millions of rows costs one batch of
        memory, not a list of them all (``twinlockd log``). The lock is held per batch only."""
        where: list[str] = []
        params: list[object] = []
        if event is not None and event not in EVENTS:
            raise UsageError(f"unknown event {event!r}; choose from {', '.join(sorted(EVENTS))}")
        for clause, value in (("ts >= ?", since), ("event = ?", event), ("user = ?", user)):
            if value is not None:
                where.append(clause)
                params.append(float(value) if clause.startswith("ts") else value)
        sql = ("SELECT id, ts, ts_iso, event, user, best_score, decision, reason, frame, details"
               " FROM decisions" + (" WHERE " + " AND ".join(where) if where else ""))
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                raise UsageError(f"limit must be a positive whole number, not {limit!r}")
            sql = f"SELECT * FROM ({sql} ORDER BY ts DESC, id DESC LIMIT ?)"
            params.append(limit)
        sql += " ORDER BY ts, id"
        with self._locked() as conn:
            try:
                cursor = conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read audit log {self.path}: {exc}") from exc
        try:
            while True:
                with self._locked():
                    try:
                        rows = cursor.fetchmany(batch)
                    except sqlite3.Error as exc:
                        raise AuditError(f"cannot read audit log {self.path}: {exc}") from exc
                if not rows:
                    return
                for row in rows:
                    yield AuditRecord(
                        id=row[0], ts=row[1], ts_iso=row[2], event=row[3], user=row[4],
                        best_score=row[5], decision=row[6], reason=row[7], frame=row[8],
                        details=None if row[9] is None else json.loads(row[9]))
        finally:
            cursor.close()

    # -- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent); SQLite checkpoints the WAL into the main file.

        Closing writes the WAL index through SQLite's shared memory map, and into a file made
        immutable meanwhile that is SIGBUS, which would kill the daemon at shutdown (after the
        relay is released, but still a crash, and no ``stop`` record). Then the connection is
        left open for good instead: the kernel drops its locks and mapping when the process
        exits, every committed record is already in the WAL, and the next open that may write
        checkpoints it.
        """
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        why = self._unwritable()
        if why is not None:
            logger.error("audit log %s: %s; not closing it (SQLite would write into it and die "
                         "of SIGBUS): the records are safe in its WAL until the next start",
                         self.path, why)
            _keep_open_until_exit(conn)
            return
        try:
            conn.close()
        except sqlite3.Error as exc:
            logger.warning("audit log %s: error while closing: %s", self.path, exc)


# -- time that survives a restart and a clock change ---------------------------------------------

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_clock() -> dict[str, Any]:
    """This boot's id and its seconds since boot (``CLOCK_BOOTTIME``, suspend included), for a
    record that must be timed after a restart: unlike the wall clock, nobody sets it, and NTP
    does not step it. Empty where the system offers neither (not Linux)."""
    try:
        boot_id = _BOOT_ID.read_text().strip()
        return {"boot_id": boot_id,
                "boottime_s": round(time.clock_gettime(time.CLOCK_BOOTTIME), 3)}
    except (OSError, AttributeError):
        return {}


def seconds_since(record: AuditRecord, now: float | None = None) -> float:
    """How long ago ``record`` was written: by the boot clock when it carries one from this
    boot (see :func:`boot_clock`; a wall clock set forward or back since changes nothing), else
    by the wall clock (``now``), and 0 when that puts the record in the future (the clock was
    set back: assume no time passed rather than lift what the record started)."""
    details = record.details or {}
    clock = boot_clock()
    then = details.get("boottime_s")
    if clock and details.get("boot_id") == clock["boot_id"] and isinstance(then, (int, float)):
        return max(0.0, clock["boottime_s"] - float(then))
    return max(0.0, (time.time() if now is None else now) - record.ts)


# -- snapshots ------------------------------------------------------------------------------------

_SNAPSHOT_NAME = re.compile(r"^(?:(\d{10})_)?\d{8}T\d{6}\.\d{3}Z_[A-Za-z0-9_-]+\.jpg$")
_BAD_TAG_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class SnapshotStore:
    """JPEG evidence frames in a private folder, oldest deleted first above a size cap.

    Names are ``<sequence>_<UTC time>_<tag>.jpg`` (e.g.
    ``0000000042_20261128T100000.123Z_unlock-alice.jpg``). The sequence (one more than the
    highest in the folder) orders them, not the time: after the clock is set back, a new
    snapshot's time sorts before yesterday's, and deleting by time would take the newest first.
    Names of the former ``<UTC time>_<tag>.jpg`` form count as older than any numbered one. The
    cap counts only files named these ways; anything else in the folder is left alone. The
    snapshot just saved is never deleted, so one frame larger than the cap still survives (with
    a warning). One writer per folder is assumed.
    """

    def __init__(self, dir: Path | str, max_total_mb: float, jpeg_quality: int = 85) -> None:
        if not max_total_mb > 0:
            raise UsageError(f"snapshot max_total_mb must be > 0, not {max_total_mb!r}")
        if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not (
            1 <= jpeg_quality <= 100
        ):
            raise UsageError(f"snapshot jpeg_quality must be 1..100, not {jpeg_quality!r}")
        self.dir = Path(dir)
        self.max_total_bytes = int(float(max_total_mb) * 1024 * 1024)
        self.jpeg_quality = jpeg_quality
        make_private_dirs(self.dir, AuditError)

    def snapshots(self) -> list[Path]:
        """Our snapshots, oldest first (by sequence; unnumbered ones first, by name)."""
        found = []
        for path in self.dir.iterdir():
            match = _SNAPSHOT_NAME.match(path.name)
            if match:
                found.append((int(match.group(1) or -1), path.name, path))
        return [path for *_, path in sorted(found)]

    def _next_sequence(self) -> int:
        last = self.snapshots()[-1:]
        match = _SNAPSHOT_NAME.match(last[0].name) if last else None
        return int(match.group(1) or 0) + 1 if match else 1

    def total_bytes(self) -> int:
        """Bytes the snapshots use now."""
        return sum(_size(p) for p in self.snapshots())

    def _name_for(self, ts: float, tag: str) -> Path:
        clean = _BAD_TAG_CHARS.sub("-", str(tag)).strip("-")[:48] or "snapshot"
        stamp = datetime.fromtimestamp(ts, tz=UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        sequence = self._next_sequence()
        path = self.dir / f"{sequence:010d}_{stamp}_{clean}.jpg"
        while path.exists():  # pragma: no cover - the sequence is past every name there
            sequence += 1
            path = self.dir / f"{sequence:010d}_{stamp}_{clean}.jpg"
        return path

    def save(self, image_rgb: np.ndarray, ts: float, tag: str) -> Path:
        """Write ``image_rgb`` (uint8 H x W x 3 RGB, or H x W grey) as a private JPEG; apply the cap."""
        import cv2  # lazily: reading the log must not pay for OpenCV

        image = np.asarray(image_rgb)
        if image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
        ) or image.size == 0:
            raise AuditError(
                f"snapshot must be a uint8 H x W x 3 RGB image, not {image.dtype} {image.shape}"
            )
        bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise AuditError(f"cannot encode snapshot of shape {image.shape} as JPEG")
        path = self._name_for(ts, tag)
        try:
            # created 0600; the rename makes a half-written JPEG impossible
            atomic_write(path, encoded.tobytes(), PRIVATE_FILE_MODE)
        except OSError as exc:
            raise AuditError(f"cannot write snapshot {path}: {exc.strerror or exc}") from exc
        self._enforce_cap(keep=path)
        return path

    def _enforce_cap(self, keep: Path) -> None:
        """Delete the oldest snapshots until the total fits the cap (never ``keep``)."""
        files = [(p, _size(p)) for p in self.snapshots()]
        total = sum(size for _, size in files)
        for path, size in files:
            if total <= self.max_total_bytes:
                break
            if path == keep:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot delete old snapshot %s: %s", path, exc)
                continue
            total -= size
            logger.debug("deleted old snapshot %s (%s bytes)", path.name, size)
        if total > self.max_total_bytes:
            logger.warning(
                "snapshots use %s bytes, over the %s byte cap: the newest alone is larger",
                total, self.max_total_bytes,
            )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
