"""The household's activity store: doors, the review records fetched from them, and labels.

One SQLite file (``activity.db``) beside the enrolment store, private (0700 folder, 0600 file),
durable (WAL, a sync per commit), its schema versioned like the audit log
(``PRAGMA user_version`` through ``private_db.migrate_schema``). It holds faces: removed rows
are overwritten (``secure_delete``).

Fetching is idempotent by construction: an attempt's id is its primary key (a record fetched
twice is stored once), and each door's progress is kept per day file as a byte offset that moves
in the same transaction as the records it covers, so an interrupted sync leaves the store as it
was before it and the next one carries on from there.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from twinlock.daemon.errors import TwinLockError, UsageError
from twinlock.daemon.review.format import ReviewRecord, check_door_name
from twinlock.daemon.storage.private_db import (
    PrivateStore,
    make_private_dirs,
    migrate_schema,
    open_private_db,
)

from .enroll_store import default_path as enrolment_default_path

logger = logging.getLogger(__name__)

ENV_DB = "TWINLOCK_ACTIVITY_DB"
DB_NAME = "activity.db"
SCHEMA_VERSION = 3


class ActivityError(TwinLockError, RuntimeError):
    """The household's activity store could not be opened, read or written."""


_SCHEMA = (
    """CREATE TABLE doors (
           name TEXT PRIMARY KEY,
           target TEXT NOT NULL,
           deploy_target TEXT,
           identity TEXT,
           ssh_options TEXT NOT NULL DEFAULT '[]',
           added TEXT NOT NULL,
           last_sync TEXT,
           last_error TEXT
       )""",
    # how far each day file of each door has been taken (bytes of whole lines)
    """CREATE TABLE cursors (
           door TEXT NOT NULL REFERENCES doors (name) ON DELETE CASCADE,
           day TEXT NOT NULL,
           offset INTEGER NOT NULL,
           PRIMARY KEY (door, day)
       )""",
    """CREATE TABLE attempts (
           id TEXT PRIMARY KEY,
           door TEXT NOT NULL,
           time TEXT NOT NULL,
           decision TEXT NOT NULL,
           audit_id INTEGER,
           bundle_id TEXT,
           model_id TEXT,
           resident TEXT,
           score REAL,
           reason TEXT NOT NULL DEFAULT '',
           dim INTEGER,
           embedding BLOB,
           crop BLOB,
           fetched TEXT NOT NULL
       )""",
    "CREATE INDEX attempts_time ON attempts (time)",
    "CREATE INDEX attempts_door_time ON attempts (door, time)",
    # what the household said about an attempt: 'as' NAME (it was NAME) or 'not' NAME (the door
    # let the wrong person in as NAME: a known impostor pair)
    """CREATE TABLE labels (
           id INTEGER PRIMARY KEY,
           attempt TEXT NOT NULL REFERENCES attempts (id) ON DELETE CASCADE,
           kind TEXT NOT NULL CHECK (kind IN ('as', 'not')),
           name TEXT NOT NULL,
           made TEXT NOT NULL,
           outcome TEXT NOT NULL DEFAULT ''
       )""",
    "CREATE INDEX labels_attempt ON labels (attempt)",
)

#: v2: refused attempts the household marked as a known visitor who is not a resident (the
#: postman): NAME is what the page shows; no enrolment, no door changes
_VISITOR_MARKS = (
    """CREATE TABLE visitor_marks (
           attempt TEXT PRIMARY KEY REFERENCES attempts (id) ON DELETE CASCADE,
           name TEXT NOT NULL,
           made TEXT NOT NULL
       )""",
    "CREATE INDEX visitor_marks_name ON visitor_marks (name)",
)


#: v3: which bundle each door runs as far as the host knows (deployed from here, or named by
#: its review records), and what each bundle seen here holds (residents, anchor hashes, model,
#: thresholds: ``trainer/household/rollout.py``), so ``twinlock bundle`` can say what changed
_DOOR_BUNDLES = (
    """CREATE TABLE bundles (
           bundle_id TEXT PRIMARY KEY,
           sequence INTEGER NOT NULL,
           created TEXT NOT NULL,
           model_id TEXT NOT NULL,
           summary TEXT NOT NULL
       )""",
    # bundle_id/source/since: the bundle the door runs ('deploy': sent from here at since;
    # 'sync': its newest review record, of time since, was decided under it)
    """CREATE TABLE door_bundles (
           door TEXT PRIMARY KEY REFERENCES doors (name) ON DELETE CASCADE,
           bundle_id TEXT,
           source TEXT CHECK (source IN ('deploy', 'sync')),
           since TEXT,
           deployed TEXT,
           deployed_at TEXT,
           deploy_error TEXT,
           reload_command TEXT
       )""",
)


def _create(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA + _VISITOR_MARKS + _DOOR_BUNDLES:
        conn.execute(statement)


def _add_visitor_marks(conn: sqlite3.Connection) -> None:
    for statement in _VISITOR_MARKS:
        conn.execute(statement)


def _add_door_bundles(conn: sqlite3.Connection) -> None:
    for statement in _DOOR_BUNDLES:
        conn.execute(statement)


#: upgrades of older files: _UPGRADES[v] takes schema v-1 to v
_UPGRADES: dict[int, Callable[[sqlite3.Connection], None]] = {2: _add_visitor_marks,
                                                              3: _add_door_bundles}


def default_path(enrolment_db: Path | None = None) -> Path:
    """``$TWINLOCK_ACTIVITY_DB``, else ``activity.db`` beside the enrolment store."""
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env).expanduser()
    base = enrolment_db if enrolment_db is not None else enrolment_default_path()
    return Path(base).expanduser().parent / DB_NAME


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class DoorEntry:
    """A door in the household's list: where its review records are fetched from."""

    name: str
    target: str
    deploy_target: str | None
    identity: str | None
    ssh_options: list[str]
    added: str
    last_sync: str | None
    last_error: str | None


@dataclass(frozen=True)
class DoorBundle:
    """The bundle a door runs as far as the host knows, and its last deployment from here."""

    door: str
    bundle_id: str | None = None
    source: str | None = None  # 'deploy' (sent from here) or 'sync' (named by its records)
    since: str | None = None
    deployed: str | None = None
    deployed_at: str | None = None
    deploy_error: str | None = None
    reload_command: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One attempt as stored on the host (a review record plus what the household said)."""

    id: str
    door: str
    time: datetime
    decision: str
    audit_id: int | None
    bundle_id: str | None
    model_id: str | None
    resident: str | None
    score: float | None
    reason: str
    embedding: np.ndarray | None
    has_crop: bool
    labels: list[tuple[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """What ``activity list --json`` prints (no embedding, no picture)."""
        return {"id": self.id, "door": self.door, "time": self.time.isoformat(),
                "decision": self.decision, "audit_id": self.audit_id,
                "bundle_id": self.bundle_id, "model_id": self.model_id,
                "resident": self.resident, "score": self.score, "reason": self.reason,
                "has_crop": self.has_crop,
                "labels": [{"kind": k, "name": n} for k, n in self.labels]}


_ATTEMPT_COLUMNS = ("id, door, time, decision, audit_id, bundle_id, model_id, resident, score, "
                    "reason, dim, embedding, crop IS NOT NULL")


class ActivityStore(PrivateStore):
    """The activity store; every public write is one transaction."""

    error = ActivityError
    what = "activity store"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._conn: sqlite3.Connection | None = None
        make_private_dirs(self.path.parent, ActivityError)
        self._conn = open_private_db(self.path, ActivityError, "activity store", self._migrate,
                                     pragmas=("foreign_keys = ON", "secure_delete = ON"))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if migrate_schema(conn, SCHEMA_VERSION, _UPGRADES, ActivityError,
                          f"activity store {self.path}", create=_create) == 0:
            logger.info("activity store created: %s", self.path)

    # -- doors -----------------------------------------------------------------------------------

    def add_door(self, name: str, target: str, identity: str | None = None,
                 ssh_options: Sequence[str] = (), deploy_target: str | None = None
                 ) -> DoorEntry:
        try:
            check_door_name(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        with self._tx(write=True) as conn:
            if conn.execute("SELECT 1 FROM doors WHERE name = ?", (name,)).fetchone():
                raise UsageError(f"door {name!r} is already in the list (doors remove {name} "
                                 "first to change its target)")
            conn.execute("INSERT INTO doors (name, target, deploy_target, identity, ssh_options, "
                         "added) VALUES (?, ?, ?, ?, ?, ?)",
                         (name, target, deploy_target, identity,
                          json.dumps(list(ssh_options)), _now()))
        return self.door(name)

    def remove_door(self, name: str) -> int:
        """Take ``name`` off the list (and its fetch progress); its attempts stay. Returns how
        many attempts of it the store keeps."""
        with self._tx(write=True) as conn:
            if conn.execute("DELETE FROM doors WHERE name = ?", (name,)).rowcount == 0:
                raise UsageError(f"no door called {name!r} (twinlock doors list)")
            return int(conn.execute("SELECT COUNT(*) FROM attempts WHERE door = ?",
                                    (name,)).fetchone()[0])

    def door(self, name: str) -> DoorEntry:
        for entry in self.doors():
            if entry.name == name:
                return entry
        raise UsageError(f"no door called {name!r} (twinlock doors list)")

    def doors(self) -> list[DoorEntry]:
        with self._tx() as conn:
            rows = conn.execute("SELECT name, target, deploy_target, identity, ssh_options, added, "
                                "last_sync, last_error FROM doors ORDER BY name").fetchall()
        return [DoorEntry(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7])
                for r in rows]

    def door_counts(self) -> dict[str, tuple[int, str | None]]:
        """Door -> (attempts stored, time of the newest)."""
        with self._tx() as conn:
            rows = conn.execute("SELECT door, COUNT(*), MAX(time) FROM attempts GROUP BY door")
            return {r[0]: (int(r[1]), r[2]) for r in rows}

    def cursors(self, door: str) -> dict[str, int]:
        with self._tx() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(
                "SELECT day, offset FROM cursors WHERE door = ?", (door,))}

    def note_sync(self, door: str, error: str | None) -> None:
        with self._tx(write=True) as conn:
            conn.execute("UPDATE doors SET last_sync = ?, last_error = ? WHERE name = ?",
                         (_now(), error, door))

    def ingest(self, door: str, day: str | None, offset: int | None,
               records: Sequence[tuple[ReviewRecord, bytes | None]]) -> int:
        """Store ``records`` (already checked) and move ``door``'s cursor for ``day`` to
        ``offset``, in one transaction. Returns how many were new. ``day`` None: records that
        came over MQTT, which have no file to keep a place in (their ids make them idempotent)."""
        new = 0
        with self._tx(write=True) as conn:
            if conn.execute("SELECT 1 FROM doors WHERE name = ?", (door,)).fetchone() is None:
                raise UsageError(f"no door called {door!r}")
            for record, crop in records:
                if record.door != door:
                    raise ActivityError(f"record {record.id} is not from door {door!r}")
                vector = record.embedding
                cur = conn.execute(
                    "INSERT OR IGNORE INTO attempts (id, door, time, decision, audit_id, "
                    "bundle_id, model_id, resident, score, reason, dim, embedding, crop, fetched) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, door, record.time.astimezone(UTC).isoformat(
                        timespec="milliseconds"), record.decision, record.audit_id,
                     record.bundle_id, record.model_id, record.resident, record.score,
                     record.reason, None if vector is None else int(vector.size),
                     None if vector is None else np.asarray(vector, "<f4").tobytes(), crop,
                     _now()))
                new += cur.rowcount
            if day is not None:
                conn.execute("INSERT INTO cursors (door, day, offset) VALUES (?, ?, ?) "
                             "ON CONFLICT (door, day) DO UPDATE SET offset = excluded.offset",
                             (door, day, offset))
        return new

    def model_dims(self) -> dict[str, int]:
        """model id -> the embedding dimension its stored attempts have."""
        with self._tx() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(
                "SELECT model_id, MIN(dim) FROM attempts WHERE dim IS NOT NULL "
                "AND model_id IS NOT NULL GROUP BY model_id")}

    # -- attempts --------------------------------------------------------------------------------

    def attempts(self, door: str | None = None, since: datetime | None = None,
                 decision: str | None = None, limit: int | None = None,
                 ids: Sequence[str] | None = None, until: datetime | None = None,
                 older_than: str | None = None) -> list[Attempt]:
        """Attempts, newest first, filtered: ``since`` <= time < ``until``; ``older_than``: only
        those after that attempt in this order (the next page, found through the time index)."""
        where: list[str] = []
        params: list[Any] = []
        if door is not None:
            where.append("door = ?")
            params.append(door)
        if since is not None:
            where.append("time >= ?")
            params.append(since.astimezone(UTC).isoformat(timespec="milliseconds"))
        if until is not None:
            where.append("time < ?")
            params.append(until.astimezone(UTC).isoformat(timespec="milliseconds"))
        if older_than is not None:
            where.append("(time, id) < (SELECT time, id FROM attempts WHERE id = ?)")
            params.append(older_than)
        if decision is not None:
            where.append("decision = ?")
            params.append(decision)
        if ids is not None:
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            params.extend(ids)
        sql = f"SELECT {_ATTEMPT_COLUMNS} FROM attempts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._tx() as conn:
            rows = conn.execute(sql, params).fetchall()
            labels: dict[str, list[tuple[str, str]]] = {}
            for attempt, kind, name in conn.execute(
                    "SELECT attempt, kind, name FROM labels ORDER BY id"):
                labels.setdefault(attempt, []).append((kind, name))
        return [self._attempt(r, labels.get(r[0], [])) for r in rows]

    @staticmethod
    def _attempt(row: Sequence[Any], labels: list[tuple[str, str]]) -> Attempt:
        embedding = (None if row[11] is None
                     else np.frombuffer(row[11], dtype="<f4").astype(np.float32))
        return Attempt(id=row[0], door=row[1], time=datetime.fromisoformat(row[2]),
                       decision=row[3], audit_id=row[4], bundle_id=row[5], model_id=row[6],
                       resident=row[7], score=row[8], reason=row[9], embedding=embedding,
                       has_crop=bool(row[12]), labels=labels)

    def attempt(self, attempt_id: str) -> Attempt:
        found = self.attempts(ids=[attempt_id])
        if not found:
            raise UsageError(f"no attempt {attempt_id!r} in {self.path} (twinlock activity list)")
        return found[0]

    def crop(self, attempt_id: str) -> bytes | None:
        with self._tx() as conn:
            row = conn.execute("SELECT crop FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
        if row is None:
            raise UsageError(f"no attempt {attempt_id!r} in {self.path}")
        return None if row[0] is None else bytes(row[0])

    def add_label(self, attempt_id: str, kind: str, name: str, outcome: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute("INSERT INTO labels (attempt, kind, name, made, outcome) "
                         "VALUES (?, ?, ?, ?, ?)", (attempt_id, kind, name, _now(), outcome))

    def labels(self, kind: str | None = None) -> list[tuple[str, str, str, str]]:
        """(attempt, kind, name, outcome) of every label, oldest first."""
        with self._tx() as conn:
            sql = "SELECT attempt, kind, name, outcome FROM labels"
            rows = (conn.execute(sql + " WHERE kind = ? ORDER BY id", (kind,)) if kind
                    else conn.execute(sql + " ORDER BY id"))
            return [(r[0], r[1], r[2], r[3]) for r in rows]

    # -- known visitors (not residents) ----------------------------------------------------------

    def mark_visitor(self, attempt_ids: Sequence[str], name: str) -> int:
        """Mark attempts as the known visitor ``name`` (replacing an earlier mark); returns how
        many were marked."""
        with self._tx(write=True) as conn:
            for attempt_id in attempt_ids:
                if conn.execute("SELECT 1 FROM attempts WHERE id = ?",
                                (attempt_id,)).fetchone() is None:
                    raise UsageError(f"no attempt {attempt_id!r} in {self.path}")
                conn.execute("INSERT INTO visitor_marks (attempt, name, made) VALUES (?, ?, ?) "
                             "ON CONFLICT (attempt) DO UPDATE SET name = excluded.name, "
                             "made = excluded.made", (attempt_id, name, _now()))
        return len(attempt_ids)

    def unmark_visitor(self, attempt_ids: Sequence[str]) -> int:
        """Take the known-visitor mark off these attempts; returns how many had one."""
        with self._tx(write=True) as conn:
            return sum(conn.execute("DELETE FROM visitor_marks WHERE attempt = ?",
                                    (attempt_id,)).rowcount for attempt_id in attempt_ids)

    def visitor_marks(self) -> dict[str, str]:
        """Attempt id -> the known visitor it was marked as."""
        with self._tx() as conn:
            return {r[0]: r[1] for r in conn.execute("SELECT attempt, name FROM visitor_marks")}

    # -- the bundle each door runs (v3) ----------------------------------------------------------

    def record_bundle(self, bundle_id: str, sequence: int, created: str, model_id: str,
                      summary: dict[str, Any]) -> None:
        """Keep what bundle ``bundle_id`` holds (a bundle's contents never change: its id is
        its signed manifest's hash, so a second record of it is the same and is skipped)."""
        with self._tx(write=True) as conn:
            conn.execute("INSERT OR IGNORE INTO bundles (bundle_id, sequence, created, model_id, "
                         "summary) VALUES (?, ?, ?, ?, ?)",
                         (bundle_id, int(sequence), created, model_id,
                          json.dumps(summary, sort_keys=True)))

    def bundle_summary(self, bundle_id: str) -> dict[str, Any] | None:
        """What ``record_bundle`` kept of ``bundle_id``, or None for a bundle not seen here."""
        with self._tx() as conn:
            row = conn.execute("SELECT summary FROM bundles WHERE bundle_id = ?",
                               (bundle_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def door_bundle(self, door: str) -> DoorBundle:
        """What the host knows of the bundle ``door`` runs (all None when nothing yet)."""
        with self._tx() as conn:
            row = conn.execute("SELECT bundle_id, source, since, deployed, deployed_at, "
                               "deploy_error, reload_command FROM door_bundles WHERE door = ?",
                               (door,)).fetchone()
        return DoorBundle(door, *row) if row else DoorBundle(door)

    def _upsert_door_bundle(self, conn: sqlite3.Connection, door: str, **values: Any) -> None:
        if conn.execute("SELECT 1 FROM doors WHERE name = ?", (door,)).fetchone() is None:
            raise UsageError(f"no door called {door!r} (twinlock doors list)")
        conn.execute("INSERT OR IGNORE INTO door_bundles (door) VALUES (?)", (door,))
        for column, value in values.items():  # column names are this module's own
            conn.execute(f"UPDATE door_bundles SET {column} = ? WHERE door = ?", (value, door))

    def set_reload_command(self, door: str, command: str | None) -> None:
        """The command ``deploy --to NAME`` (and the page's Update) runs on ``door`` after the
        copy (None: the default, ``sudo systemctl reload twinlockd``)."""
        with self._tx(write=True) as conn:
            self._upsert_door_bundle(conn, door, reload_command=command)

    def note_deploy(self, door: str, bundle_id: str, error: str | None) -> None:
        """A deployment of ``bundle_id`` to ``door`` ended; without ``error`` it is the bundle
        the door runs from now on (until its records say otherwise)."""
        now = _now()
        with self._tx(write=True) as conn:
            if error is None:
                self._upsert_door_bundle(conn, door, bundle_id=bundle_id, source="deploy",
                                         since=now, deployed=bundle_id, deployed_at=now,
                                         deploy_error=None)
            else:
                self._upsert_door_bundle(conn, door, deploy_error=error[:300])

    def note_reported_bundle(self, door: str) -> str | None:
        """After a sync: the bundle ``door``'s newest record was decided under becomes the one
        it runs, unless that record is older than the last deployment from here (records made
        before it still name the old bundle). Returns the door's bundle id."""
        with self._tx(write=True) as conn:
            newest = conn.execute("SELECT bundle_id, time FROM attempts WHERE door = ? AND "
                                  "bundle_id IS NOT NULL ORDER BY time DESC, id DESC LIMIT 1",
                                  (door,)).fetchone()
            row = conn.execute("SELECT bundle_id, since FROM door_bundles WHERE door = ?",
                               (door,)).fetchone()
            current, since = (row[0], row[1]) if row else (None, None)
            if newest is None:
                return str(current) if current else None
            reported, when = newest
            if since is not None and _instant(when) < _instant(since):
                return str(current) if current else None
            self._upsert_door_bundle(conn, door, bundle_id=reported, source="sync", since=when)
            return str(reported)

    def last_unlocks(self) -> dict[str, str]:
        """Door -> the time of its newest unlock among the fetched attempts."""
        with self._tx() as conn:
            return {r[0]: r[1] for r in conn.execute(
                "SELECT door, MAX(time) FROM attempts WHERE decision = 'unlock' GROUP BY door")}


def _instant(text: str) -> datetime:
    """An ISO time as stored here (UTC, to seconds or milliseconds) -> an aware datetime."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
