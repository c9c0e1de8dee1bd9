"""The page's locks: the household password (scrypt), server-side sessions, CSRF tokens, the
login rate limit and the audit log of every change.

Why this shape: one household, one password, set on the host (``twinlock web set-password``);
sessions live only in the server's memory (a restart logs everyone out, nothing to steal from
disk); every change is a POST carrying the session's CSRF token; the audit log is an
append-only file beside the enrolment store, 0600, like the store itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from twinlock.daemon.errors import UsageError
from twinlock.daemon.storage.files import atomic_write_json
from twinlock.daemon.storage.private_db import PRIVATE_FILE_MODE, make_private_dirs

from ..errors import EnrolmentError

logger = logging.getLogger(__name__)

PASSWORD_FILE = "web-password.json"
API_TOKEN_FILE = "web-api-token.json"
AUDIT_FILE = "web-audit.log"
#: scrypt's cost: 2**15 x 8 x 128 bytes = 32 MiB and about 0.1 s per try on a desktop
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=SCRYPT_MAXMEM, dklen=32)


def set_password(folder: Path, password: str) -> Path:
    """Store the household password's scrypt hash (random salt) 0600 in ``folder``."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UsageError(f"the password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    make_private_dirs(folder, EnrolmentError)
    salt = secrets.token_bytes(16)
    record = {"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(),
              "hash": _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex()}
    path = folder / PASSWORD_FILE
    atomic_write_json(path, record, PRIVATE_FILE_MODE)
    return path


def has_password(folder: Path) -> bool:
    return (folder / PASSWORD_FILE).is_file()


def check_password(folder: Path, password: str) -> bool:
    """Whether ``password`` is the household's (constant-time compare; False if none is set)."""
    try:
        record = json.loads((folder / PASSWORD_FILE).read_text(encoding="utf-8"))
        salt = bytes.fromhex(record["salt"])
        want = bytes.fromhex(record["hash"])
        n, r, p = int(record["n"]), int(record["r"]), int(record["p"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("cannot read the web password: %s", exc)
        return False
    if len(password) > MAX_PASSWORD:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), want)


def new_api_token(folder: Path) -> str:
    """Make the household's read-only API token (replacing any earlier one) and return it: it is
    shown once; only its SHA-256 is stored (0600). A fast hash is enough here, unlike for the
    password: the token is 256 random bits, so there is nothing to guess from its hash."""
    make_private_dirs(folder, EnrolmentError)
    token = "twl_" + secrets.token_urlsafe(32)
    record = {"sha256": hashlib.sha256(token.encode()).hexdigest(), "scope": "read activity",
              "created": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_json(folder / API_TOKEN_FILE, record, PRIVATE_FILE_MODE)
    return token


def revoke_api_token(folder: Path) -> bool:
    """Remove the API token; False when there was none."""
    try:
        (folder / API_TOKEN_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def api_token_ok(folder: Path, presented: str) -> bool:
    """Whether ``presented`` is the household's API token (read at each call, so a new or
    revoked token counts at once; constant-time compare; False when none is set)."""
    try:
        want = bytes.fromhex(json.loads((folder / API_TOKEN_FILE).read_text("utf-8"))["sha256"])
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("cannot read the web API token: %s", exc)
        return False
    if not presented or len(presented) > 256:
        return False
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), want)


@dataclass
class Session:
    csrf: str
    last_seen: float


class Sessions:
    """Random server-side session ids, each with its CSRF token and an idle timeout."""

    def __init__(self, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def create(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[sid] = Session(secrets.token_urlsafe(32), self._clock())
        return sid

    def get(self, sid: str | None) -> Session | None:
        """The live session ``sid`` names (touched), or None: unknown, or idle too long."""
        if not sid:
            return None
        now = self._clock()
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return None
            if now - session.last_seen > self.idle_timeout_s:
                del self._by_id[sid]
                return None
            session.last_seen = now
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


def csrf_ok(session: Session, token: object) -> bool:
    return isinstance(token, str) and hmac.compare_digest(session.csrf.encode(), token.encode())


class LoginLimiter:
    """At most ``per_client`` login tries per client and ``overall`` in all per ``window_s``
    (a sliding window): guessing the password is slow for one client and for a botnet."""

    def __init__(self, per_client: int = 5, overall: int = 30, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_client, self.overall, self.window_s = per_client, overall, window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._all: deque[float] = deque()
        self._clients: dict[str, deque[float]] = {}

    def allow(self, client: str) -> bool:
        """Count one try by ``client``; False when over either limit (the try is not made)."""
        now = self._clock()
        with self._lock:
            for q in (self._all, *self._clients.values()):
                while q and now - q[0] > self.window_s:
                    q.popleft()
            self._clients = {k: v for k, v in self._clients.items() if v}
            mine = self._clients.setdefault(client, deque())
            if len(mine) >= self.per_client or len(self._all) >= self.overall:
                return False
            mine.append(now)
            self._all.append(now)
            return True


class AuditLog:
    """One JSON line per change (who, from where, what, when), appended to the host's own
    ``web-audit.log`` (0600) and to the logger."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / AUDIT_FILE
        self._lock = threading.Lock()

    def record(self, who: str, client: str, action: str, **detail: object) -> None:
        entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "who": who,
                 "client": client, "action": action, **detail}
        line = (json.dumps(entry, default=str, ensure_ascii=False) + "\n").encode("utf-8")
        logger.info("web change: %s", line.decode("utf-8").strip())
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         PRIVATE_FILE_MODE)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
