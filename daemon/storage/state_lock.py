"""One daemon per state folder: the lock a running ``twinlockd`` holds for its whole life.

Two daemons on one state folder would fight over the relay, the camera, the audit log and the
bundles; the second must refuse to start, and must do so before it touches the relay pin.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from ..errors import AlreadyRunningError, AuditError
from .private_db import make_private_dirs

logger = logging.getLogger(__name__)


#: the lock file in ``state_dir`` a running daemon holds for its whole life
STATE_LOCK_NAME = "twinlockd.lock"


def lock_state_dir(state_dir: Path) -> IO[bytes] | None:
    """Hold ``state_dir``'s lock for as long as the returned file stays open (the kernel drops
    it when the process ends, however). AlreadyRunningError when another daemon holds it: two
    on one state folder would fight over the relay, the camera, the audit log and the bundles.
    None (with an error logged) when the lock file cannot be made at all: a read-only or full
    card must not become a restart loop; what else fails there keeps the door locked."""
    try:
        make_private_dirs(state_dir, AuditError)
        fd = os.open(state_dir / STATE_LOCK_NAME,
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except (OSError, AuditError) as exc:
        logger.error("state folder %s: cannot make its lock file (%s): not checking for another "
                     "daemon", state_dir, getattr(exc, "strerror", None) or exc)
        return None
    handle = os.fdopen(fd, "r+b")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = handle.read(32).decode("ascii", "replace").strip() or "unknown"
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise AlreadyRunningError(
                f"another twinlockd (pid {holder}) is running on state folder {state_dir}; "
                "not starting a second one (stop the other first: systemctl stop twinlockd)"
            ) from None
        logger.error("state folder %s: cannot lock it (%s): not checking for another daemon",
                     state_dir, exc.strerror or exc)
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle
