"""The host's enrolment store: residents, their face samples, and anchors per model, in SQLite.

Enrolment keeps more than a gallery needs. Each sample keeps its aligned crop (lossless PNG at
the model's input size) so anchors can be re-made for another model without the original
photos, a small JPEG thumbnail for people to look at, and the quality measures it passed. Anchors
are keyed by ``(sample, model_id)``: embeddings of different models live in different spaces, so
every query takes a model id and never returns another model's anchors.

Faces are biometric data: the folder is created 0700, the database and its ``-wal``/``-shm``
companions are 0600, and deleted rows are overwritten (``secure_delete``) and checkpointed out
of the WAL, so a removed resident does not linger in the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from twinlock.daemon.errors import DataError, UsageError
from twinlock.daemon.faces.align import DEFAULT_TEMPLATE
from twinlock.daemon.faces.images import decode_image
from twinlock.daemon.recognition.fusion import STRICT_FAR_MAX, STRICT_FAR_MIN
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.review.format import CROP_SUFFIX, RECORD_ID_RE
from twinlock.daemon.storage.json_encoding import json_default
from twinlock.daemon.storage.private_db import (
    PRIVATE_DIR_MODE,
    PrivateStore,
    chmod_private,
    make_private_dirs,
    migrate_schema,
    open_private_db,
)

from ..errors import EnrolmentError

logger = logging.getLogger(__name__)

#: environment variable naming the store file (overrides the default location)
ENV_DB = "TWINLOCK_ENROL_DB"
DB_NAME = "enrolment.db"

SCHEMA_VERSION = 3

#: side of the thumbnails kept for people to look at (any size is accepted)
THUMBNAIL_PX = 96
JPEG_QUALITY = 90

MAX_NAME_LENGTH = 64
_NAME_RE = re.compile(r"[\w .-]+")  # \w: letters (any script), digits and "_"


def _add_crop_template(conn: sqlite3.Connection) -> None:
    """v2: the alignment template a crop was made with (models may use different ones)."""
    conn.execute("ALTER TABLE samples ADD COLUMN crop_template TEXT NOT NULL "
                 f"DEFAULT '{DEFAULT_TEMPLATE}'")


def _add_strict_far(conn: sqlite3.Connection) -> None:
    """v3: a resident's own false-accept target (``twinlock enroll --strict``), NULL: the door's."""
    conn.execute("ALTER TABLE users ADD COLUMN strict_far REAL")


#: schema upgrades: _UPGRADES[v] takes a version v-1 store to v (a new store is made at once)
_UPGRADES: dict[int, Callable[[sqlite3.Connection], None]] = {2: _add_crop_template,
                                                              3: _add_strict_far}

_SCHEMA = (
    # COLLATE NOCASE: "bob" and "Bob" are one resident (and `users remove bob` finds "Bob")
    """CREATE TABLE users (
           name TEXT PRIMARY KEY COLLATE NOCASE,
           created TEXT NOT NULL,
           strict_far REAL
       )""",
    """CREATE TABLE samples (
           id INTEGER PRIMARY KEY,
           user TEXT NOT NULL COLLATE NOCASE
               REFERENCES users (name) ON DELETE CASCADE ON UPDATE CASCADE,
           source TEXT NOT NULL,
           added TEXT NOT NULL,
           crop BLOB NOT NULL,
           crop_zoom REAL NOT NULL DEFAULT 1.0,
           crop_template TEXT NOT NULL DEFAULT 'arcface-4pt',
           thumbnail BLOB NOT NULL,
           quality TEXT NOT NULL
       )""",
    "CREATE INDEX samples_user ON samples (user)",
    """CREATE TABLE anchors (
           sample_id INTEGER NOT NULL REFERENCES samples (id) ON DELETE CASCADE,
           model_id TEXT NOT NULL,
           embedding BLOB NOT NULL,
           made TEXT NOT NULL,
           PRIMARY KEY (sample_id, model_id)
       )""",
    "CREATE INDEX anchors_model ON anchors (model_id)",
)


def _create(conn: sqlite3.Connection) -> None:
    """A new store gets the current schema at once."""
    for statement in _SCHEMA:
        conn.execute(statement)


def default_path() -> Path:
    """``$TWINLOCK_ENROL_DB``, else ``$XDG_DATA_HOME/twinlock/enrolment.db`` (default
    ``~/.local/share/twinlock/enrolment.db``)."""
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "twinlock" / DB_NAME


def check_name(name: str) -> str:
    """The resident's name, NFC-normalised; UsageError unless 1-64 letters, digits, space, -_.

    Names end up in file listings, logs and the door's gallery, so they stay plain text.
    """
    if not isinstance(name, str):
        raise UsageError(f"a user name must be text, not {type(name).__name__}")
    text = unicodedata.normalize("NFC", name)
    if not 1 <= len(text) <= MAX_NAME_LENGTH:
        raise UsageError(f"user name {name!r}: must be 1-{MAX_NAME_LENGTH} characters")
    if not _NAME_RE.fullmatch(text):
        raise UsageError(f"user name {name!r}: use letters, digits, spaces and - _ . only")
    if text != text.strip() or not any(ch.isalnum() for ch in text):
        raise UsageError(f"user name {name!r}: needs a letter or digit and no space at either end")
    return text


def check_strict_far(far: object) -> float | None:
    """A resident's own false-accept target per knock, or None; UsageError unless a number
    within STRICT_FAR_MIN..STRICT_FAR_MAX."""
    if far is None:
        return None
    if isinstance(far, bool) or not isinstance(far, int | float) or not math.isfinite(far) \
            or not STRICT_FAR_MIN <= far <= STRICT_FAR_MAX:
        raise UsageError(f"a resident's false-accept target must be within "
                         f"{STRICT_FAR_MIN:g}..{STRICT_FAR_MAX:g}, not {far!r}")
    return float(far)


def strict_far_from_text(text: str) -> float | None:
    """``twinlock users strict NAME FAR|off`` and the Residents page's form: a false-accept
    target per knock (checked), or None for off / none / default / empty (the door's)."""
    if text.strip().lower() in ("", "off", "none", "default"):
        return None
    try:
        far = float(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a rate (e.g. 1e-05) or off") from None
    return check_strict_far(far)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def encode_png(image: np.ndarray) -> bytes:
    """Lossless RGB -> PNG bytes (the stored crop must embed exactly as it did)."""
    return _encode(image, ".png", [])


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    return _encode(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


def _encode(image: np.ndarray, ext: str, params: list[int]) -> bytes:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3 and image.size):
        raise DataError("a face crop must be a non-empty uint8 RGB image (H, W, 3)")
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image[:, :, ::-1]), params)
    if not ok:  # pragma: no cover - OpenCV encodes any valid uint8 image
        raise DataError(f"could not encode a {image.shape} image as {ext}")
    return buf.tobytes()


@dataclass(frozen=True)
class UserSummary:
    name: str
    samples: int
    anchors_for_model: int  # anchors made by the model asked about (0 when none was named)
    created: str = ""
    strict_far: float | None = None  # the resident's own false-accept target (None: the door's)


def label_source(record_id: str) -> str:
    """A sample's source when a label enrolled it from the door's attempt ``record_id``
    (``twinlock activity label --as``): the attempt's crop file name."""
    return f"{record_id}{CROP_SUFFIX}"


def is_label_source(source: str) -> bool:
    """Whether a sample came from the door's own faces by a label (``label_source``). A photo
    whose file name looks like one counts as labelled: its resident's bar only rises."""
    return source.endswith(CROP_SUFFIX) \
        and RECORD_ID_RE.fullmatch(source.removesuffix(CROP_SUFFIX)) is not None


@dataclass(frozen=True)
class SampleInfo:
    """A stored sample without its pictures (listings)."""

    id: int
    user: str
    source: str
    added: str
    quality: dict[str, Any]


@dataclass(frozen=True)
class StoredSample:
    """A stored sample with its aligned crop, as needed to (re-)make an anchor."""

    id: int
    user: str
    source: str
    crop_png: bytes
    crop_zoom: float
    crop_template: str = DEFAULT_TEMPLATE

    def crop(self) -> np.ndarray:
        """The aligned uint8 RGB crop."""
        return decode_image(self.crop_png, f"sample {self.id}")


class EnrolmentStore(PrivateStore):
    """One SQLite file of residents, samples and per-model anchors. Use as a context manager.

    The connection runs in autocommit mode; every public write is one transaction.
    """

    error = EnrolmentError
    what = "enrolment store"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._conn: sqlite3.Connection | None = None
        folder = self.path.parent
        created = make_private_dirs(folder, EnrolmentError)
        if not created and self.path == default_path() and folder.name == "twinlock":
            # our own folder: private even if made by hand
            chmod_private(folder, PRIVATE_DIR_MODE, EnrolmentError)
        # foreign keys: remove/rename cascade to every row; secure_delete: removed faces are
        # overwritten, not left in free pages
        conn = open_private_db(self.path, EnrolmentError, "enrolment store", self._migrate,
                               pragmas=("foreign_keys = ON", "secure_delete = ON"))
        self._conn = conn
        logger.debug("enrolment store open: %s", self.path)

    # -- set-up ------------------------------------------------------------------------------

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if migrate_schema(conn, SCHEMA_VERSION, _UPGRADES, EnrolmentError, f"enrolment store {self.path}",
                          create=_create) == 0:
            logger.info("enrolment store created: %s", self.path)

    # -- users -------------------------------------------------------------------------------

    def _canonical(self, conn: sqlite3.Connection, name: str) -> str | None:
        """The stored spelling of ``name`` (matched without regard to case), or None."""
        row = conn.execute("SELECT name FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def has_user(self, name: str) -> bool:
        with self._tx() as conn:
            return self._canonical(conn, unicodedata.normalize("NFC", str(name))) is not None

    def add_user(self, name: str, exist_ok: bool = False) -> str:
        """Add a resident; returns the stored name. UsageError if the name is taken, unless
        ``exist_ok`` (enrolling more photos for someone already there)."""
        name = check_name(name)
        with self._tx(write=True) as conn:
            existing = self._canonical(conn, name)
            if existing is not None:
                if exist_ok:
                    return existing
                raise UsageError(f"user {existing!r} already exists")
            conn.execute("INSERT INTO users (name, created) VALUES (?, ?)", (name, _now()))
        logger.info("user added: %s", name)
        return name

    def remove_user(self, name: str) -> int:
        """Remove a resident with all samples and anchors; returns how many samples went."""
        with self._tx(write=True) as conn:
            stored = self._require_user(conn, name)
            count = conn.execute("SELECT COUNT(*) FROM samples WHERE user = ?",
                                 (stored,)).fetchone()[0]
            conn.execute("DELETE FROM users WHERE name = ?", (stored,))
        self._checkpoint()
        logger.info("user removed: %s (%d samples)", stored, count)
        return int(count)

    def rename_user(self, old: str, new: str) -> str:
        """Rename a resident (samples and anchors follow); returns the new stored name."""
        new = check_name(new)
        with self._tx(write=True) as conn:
            stored = self._require_user(conn, old)
            clash = self._canonical(conn, new)
            if clash is not None and clash.casefold() != stored.casefold():
                raise UsageError(f"cannot rename {stored!r} to {new!r}: {clash!r} already exists")
            conn.execute("UPDATE users SET name = ? WHERE name = ?", (new, stored))
        logger.info("user renamed: %s -> %s", stored, new)
        return new

    def _require_user(self, conn: sqlite3.Connection, name: str) -> str:
        stored = self._canonical(conn, unicodedata.normalize("NFC", str(name)))
        if stored is None:
            raise UsageError(f"no user called {name!r}")
        return stored

    def users(self, model_id: str | None = None) -> list[UserSummary]:
        """Every resident, by name, with sample counts and anchors made by ``model_id``."""
        with self._tx() as conn:
            rows = conn.execute(
                """SELECT u.name, u.created,
                          (SELECT COUNT(*) FROM samples s WHERE s.user = u.name),
                          (SELECT COUNT(*) FROM samples s JOIN anchors a ON a.sample_id = s.id
                            WHERE s.user = u.name AND a.model_id = ?),
                          u.strict_far
                   FROM users u ORDER BY u.name""",
                (model_id,),
            ).fetchall()
        return [UserSummary(str(n), int(s), int(a), str(c), None if f is None else float(f))
                for n, c, s, a, f in rows]

    def set_strict(self, name: str, far: float | None) -> str:
        """Give a resident their own false-accept target per knock (``far``; None: the door's).

        For a resident with a look-alike sister or twin (docs/how-it-works/security.md): the
        gallery written for a model carries the threshold that target resolves to with that
        model's door calibration. UsageError outside STRICT_FAR_MIN..STRICT_FAR_MAX.
        """
        far = check_strict_far(far)
        with self._tx(write=True) as conn:
            stored = self._require_user(conn, name)
            conn.execute("UPDATE users SET strict_far = ? WHERE name = ?", (far, stored))
        logger.info("user %s: false-accept target %s", stored,
                    "the door's" if far is None else f"{far:g}")
        return stored

    # -- samples -----------------------------------------------------------------------------

    def add_sample(self, user: str, source: str, crop: np.ndarray,
                   thumbnail: np.ndarray | bytes, quality: Mapping[str, Any],
                   crop_zoom: float = 1.0, crop_template: str = DEFAULT_TEMPLATE) -> int:
        """Keep one accepted face of ``user``; returns the sample id.

        ``crop`` is the aligned RGB crop at the model's input size (stored as PNG), ``crop_zoom``
        and ``crop_template`` the alignment it was made with, ``thumbnail`` an RGB image or JPEG
        bytes.
        """
        crop_png = encode_png(crop)
        thumb = thumbnail if isinstance(thumbnail, bytes) else encode_jpeg(thumbnail)
        try:
            quality_json = json.dumps(dict(quality), allow_nan=False, sort_keys=True,
                                      default=json_default)
        except (TypeError, ValueError) as exc:
            raise DataError(f"sample quality cannot be stored as JSON: {exc}") from exc
        with self._tx(write=True) as conn:
            stored = self._require_user(conn, user)
            cursor = conn.execute(
                "INSERT INTO samples (user, source, added, crop, crop_zoom, crop_template, "
                "thumbnail, quality) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (stored, str(source), _now(), crop_png, float(crop_zoom), str(crop_template),
                 thumb, quality_json),
            )
        sample_id = cursor.lastrowid
        assert sample_id is not None
        return int(sample_id)

    def remove_sample(self, sample_id: int) -> None:
        """Forget one sample (a bad photo) and its anchors."""
        with self._tx(write=True) as conn:
            if conn.execute("DELETE FROM samples WHERE id = ?", (int(sample_id),)).rowcount == 0:
                raise UsageError(f"no sample {sample_id}")
        self._checkpoint()

    def samples(self, user: str | None = None) -> list[SampleInfo]:
        """Samples of one resident (or everyone), oldest first, without their pictures."""
        with self._tx() as conn:
            if user is None:
                rows = conn.execute("SELECT id, user, source, added, quality FROM samples "
                                    "ORDER BY id").fetchall()
            else:
                stored = self._require_user(conn, user)
                rows = conn.execute("SELECT id, user, source, added, quality FROM samples "
                                    "WHERE user = ? ORDER BY id", (stored,)).fetchall()
        return [SampleInfo(int(i), str(u), str(s), str(a), json.loads(q))
                for i, u, s, a, q in rows]

    def thumbnail(self, sample_id: int) -> bytes:
        """The sample's JPEG thumbnail."""
        with self._tx() as conn:
            row = conn.execute("SELECT thumbnail FROM samples WHERE id = ?",
                               (int(sample_id),)).fetchone()
        if row is None:
            raise UsageError(f"no sample {sample_id}")
        return bytes(row[0])

    def samples_missing_anchor(self, model_id: str, user: str | None = None
                               ) -> list[StoredSample]:
        """Samples (with crops) that have no anchor made by ``model_id`` yet, oldest first."""
        query = ("SELECT id, user, source, crop, crop_zoom, crop_template FROM samples s WHERE NOT EXISTS "
                 "(SELECT 1 FROM anchors a WHERE a.sample_id = s.id AND a.model_id = ?)")
        with self._tx() as conn:
            if user is None:
                rows = conn.execute(query + " ORDER BY id", (model_id,)).fetchall()
            else:
                stored = self._require_user(conn, user)
                rows = conn.execute(query + " AND s.user = ? ORDER BY id",
                                    (model_id, stored)).fetchall()
        return [StoredSample(int(i), str(u), str(s), bytes(c), float(z), str(t))
                for i, u, s, c, z, t in rows]

    def stored_samples(self, user: str) -> list[StoredSample]:
        """Every sample of one resident with its crop, oldest first (fine-tuning on them)."""
        with self._tx() as conn:
            stored = self._require_user(conn, user)
            rows = conn.execute("SELECT id, user, source, crop, crop_zoom, crop_template FROM samples "
                                "WHERE user = ? ORDER BY id", (stored,)).fetchall()
        return [StoredSample(int(i), str(u), str(s), bytes(c), float(z), str(t))
                for i, u, s, c, z, t in rows]

    # -- anchors -----------------------------------------------------------------------------

    def set_anchor(self, sample_id: int, model_id: str, embedding: np.ndarray) -> None:
        """Store (or replace) the anchor ``model_id`` made from a sample."""
        if not model_id:
            raise UsageError("an anchor needs the id of the model that made it")
        vector = np.asarray(embedding, dtype=np.float32)
        if vector.ndim != 1 or vector.size == 0 or not np.all(np.isfinite(vector)):
            raise DataError(f"an anchor must be a finite 1-D embedding, not shape {vector.shape}")
        with self._tx(write=True) as conn:
            if conn.execute("SELECT 1 FROM samples WHERE id = ?",
                            (int(sample_id),)).fetchone() is None:
                raise UsageError(f"no sample {sample_id}")
            row = conn.execute("SELECT length(embedding) FROM anchors WHERE model_id = ? "
                               "LIMIT 1", (model_id,)).fetchone()
            if row is not None and int(row[0]) != vector.nbytes:
                raise DataError(f"model {model_id} has {int(row[0]) // 4}-d anchors here; "
                                f"refusing a {vector.size}-d one")
            conn.execute(
                "INSERT OR REPLACE INTO anchors (sample_id, model_id, embedding, made) "
                "VALUES (?, ?, ?, ?)",
                (int(sample_id), model_id, vector.astype("<f4").tobytes(), _now()),
            )

    def _anchor_rows(self, model_id: str) -> list[tuple[str, str, bytes]]:
        with self._tx() as conn:
            return conn.execute(
                """SELECT u.name, s.source, a.embedding FROM anchors a
                   JOIN samples s ON s.id = a.sample_id JOIN users u ON u.name = s.user
                   WHERE a.model_id = ? ORDER BY u.name, s.id""",
                (model_id,),
            ).fetchall()

    def anchors(self, model_id: str, user: str | None = None) -> dict[str, np.ndarray]:
        """{name: (A, D) float32} of the anchors made by ``model_id`` only (users without one
        are left out)."""
        grouped: dict[str, list[np.ndarray]] = {}
        wanted = None if user is None else unicodedata.normalize("NFC", user).casefold()
        for name, _source, blob in self._anchor_rows(model_id):
            if wanted is None or name.casefold() == wanted:
                grouped.setdefault(name, []).append(np.frombuffer(blob, dtype="<f4"))
        return {name: np.stack(rows).astype(np.float32) for name, rows in grouped.items()}

    def gallery(self, model_id: str) -> Gallery:
        """The door's gallery for ``model_id``: every resident with at least one of its anchors."""
        grouped: dict[str, tuple[list[np.ndarray], list[str]]] = {}
        for name, source, blob in self._anchor_rows(model_id):
            rows, sources = grouped.setdefault(name, ([], []))
            rows.append(np.frombuffer(blob, dtype="<f4"))
            sources.append(source)
        created = {u.name: u.created for u in self.users()}
        gallery = Gallery(model_id)
        for name, (rows, sources) in grouped.items():
            user = gallery.add(name, np.stack(rows).astype(np.float32), sources)
            user.enrolled = created.get(name, user.enrolled)
            # the door raises the bar of a resident with anchors from labels (the gallery's
            # enrolled_anchors, fusion.resident_thresholds)
            user.enrolled_anchors = sum(not is_label_source(s) for s in sources)
        return gallery

    def _checkpoint(self) -> None:
        """Move the WAL into the file and truncate it, so deleted faces leave the WAL too."""
        try:
            with self._tx() as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except EnrolmentError as exc:  # a reader holds the WAL: it is checkpointed later
            logger.warning("enrolment store checkpoint postponed: %s", exc)
