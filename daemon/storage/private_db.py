"""Private files and durable SQLite databases, shared by the audit log and the trainer's stores.

Both hold personal data (who came to the door; residents' faces), so both are created readable
by their owner alone from the first byte, and both must survive a power cut: SQLite in WAL mode
with a sync at every commit. Each caller passes its own :class:`TwinLockError` subclass so a
failure reads as "cannot open audit log …" or "… enrolment store …", not as a bare sqlite error.
:class:`PrivateStore` is the trainer's stores' one connection, transaction and ``close()``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import TwinLockError
from .closing import Closing

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000  # wait for another writer this long instead of failing with "locked"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def chmod_private(path: Path, mode: int, error: type[TwinLockError],
                  missing_ok: bool = False) -> None:
    """``chmod`` that raises ``error`` with the reason (and tolerates a missing file if asked)."""
    try:
        os.chmod(path, mode)
    except FileNotFoundError:
        if not missing_ok:
            raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"cannot make {path} private: {exc.strerror or exc}") from exc


def make_private_dirs(folder: Path, error: type[TwinLockError]) -> bool:
    """Create ``folder`` and missing parents with mode 0700; True if ``folder`` was created.

    Existing parents may be shared places (``/var/lib``, a home folder, a test's tmp folder)
    that are not ours to change; folders we create are ours and private.
    """
    missing: list[Path] = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise error(f"cannot create folder {path}: {exc.strerror or exc}") from exc
        chmod_private(path, PRIVATE_DIR_MODE, error)  # mkdir's mode is cut by the umask
    if not folder.is_dir():
        raise error(f"{folder} is not a folder")
    return bool(missing)


def open_private_db(path: Path, error: type[TwinLockError], what: str,
                    migrate: Callable[[sqlite3.Connection], None],
                    pragmas: Sequence[str] = (), check_same_thread: bool = True
                    ) -> sqlite3.Connection:
    """Open (or create) ``path`` as a private, durable SQLite database in autocommit mode.

    The file is created 0600 before SQLite writes a byte into it, then switched to WAL with
    ``synchronous=FULL`` (every commit is on disk before it returns). ``pragmas`` are extra
    ``PRAGMA`` statements run first (such as ``foreign_keys = ON``); ``migrate`` then brings the
    schema up to date. ``what`` names the file in errors; on any error the connection is closed.
    """
    try:
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_FILE_MODE))
        chmod_private(path, PRIVATE_FILE_MODE, error)  # a file made earlier by someone else
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=check_same_thread)
    except (OSError, sqlite3.Error) as exc:
        raise error(f"cannot open {what} {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise error(f"{what} {path}: SQLite refused WAL mode (got {mode!r}); keep it on a "
                        "local file system that supports shared memory")
        conn.execute("PRAGMA synchronous = FULL")
        for suffix in ("-wal", "-shm"):  # SQLite copies the file's mode, but be sure
            chmod_private(Path(f"{path}{suffix}"), PRIVATE_FILE_MODE, error, missing_ok=True)
        migrate(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise error(f"{what} {path}: not a usable database ({exc})") from exc
    except TwinLockError:
        conn.close()
        raise
    return conn


def migrate_schema(conn: sqlite3.Connection, target: int,
                   steps: Mapping[int, Callable[[sqlite3.Connection], None]],
                   error: type[TwinLockError], what: str,
                   create: Callable[[sqlite3.Connection], None] | None = None) -> int:
    """Bring a database up to schema ``target``; returns the version it had.

    ``steps[n]`` takes a file from schema n-1 to n; ``create``, when given, makes a new (version
    0) file at ``target`` in one go (then ``steps`` need only the upgrades of older files). The
    file's ``PRAGMA user_version`` says where it stands; each step runs in its own transaction
    together with the version bump, so a power cut mid-upgrade leaves the file at a whole
    version and the next open carries on. A file from a newer TwinLock is refused (``error``):
    guessing at its tables could lose data.
    """
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > target:
        raise error(f"{what} has schema {current}, newer than this TwinLock understands "
                    f"({target}); upgrade TwinLock or move the file aside")
    plan: list[tuple[int, Callable[[sqlite3.Connection], None]]] = (
        [(target, create)] if current == 0 and create is not None
        else [(version, steps[version]) for version in range(current + 1, target + 1)])
    before = current
    for version, step in plan:
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        logger.info("%s: schema %s -> %s", what, before, version)
        before = version
    return current


class PrivateStore(Closing):
    """A private database held open by one connection in autocommit mode (the trainer's
    enrolment and activity stores): ``_tx`` hands the connection out, inside one transaction
    when writing, with sqlite's errors raised as the subclass's ``error``; ``close()`` lets it go.
    """

    #: the store's own TwinLockError subclass and its name in messages
    error: type[TwinLockError] = TwinLockError
    what = "store"
    path: Path
    _conn: sqlite3.Connection | None = None

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, inside one transaction when writing; sqlite errors -> ``error``."""
        if self._conn is None:
            raise self.error(f"{self.what} {self.path} is closed")
        conn = self._conn
        try:
            if not write:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self.error(f"{self.what} {self.path}: {exc}") from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
