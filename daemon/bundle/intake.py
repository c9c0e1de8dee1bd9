"""The drop folder: how a bundle ``twinlock deploy`` uploaded becomes the door's.

The folder is writable by the deploy group, so nothing in it is trusted (see
:func:`pick_up_incoming`). What happens is told to a :class:`Recorder`: the daemon's outbox
(the audit log first, then MQTT), or an audit log in tests and tools.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import BundleError, TwinLockError
from .format import BUNDLE_SUFFIX, MAX_BUNDLE_SIZE
from .store import install_bundle

if TYPE_CHECKING:
    from ..config.schema import Config

logger = logging.getLogger(__name__)


class Recorder(Protocol):
    """Where the drop folder's outcomes are recorded (an audit event ``bundle``)."""

    def record(self, event: str, decision: str, reason: str) -> object: ...


def pick_up_incoming(cfg: Config, audit: Recorder | None) -> None:
    """Install the newest bundle that ``twinlock deploy`` dropped into ``model.incoming``.

    Installing verifies it first and keeps the running bundle as ``previous`` (for rollback). A
    bundle that fails verification is moved to incoming/rejected and changes nothing. The drop
    folder is writable by the deploy group, so nothing in it is trusted: only regular files are
    opened (without following a symlink and without blocking on a FIFO), anything else named
    ``*.twinlock`` is quarantined unread, ``rejected`` itself is never followed, and no error
    here stops the door. A bundle holds the residents' anchors, and an upload is the uploader's
    file, readable by the whole deploy group: the door takes it into a file of its own, 0600,
    and deletes the upload before checking it, so what it installs, or keeps in ``rejected/``,
    the group can no longer read.
    """
    incoming = cfg.model.incoming
    if cfg.model.source != "bundle":
        return
    try:
        folder = os.open(incoming, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as exc:
        _drop_problem(audit, f"drop folder {incoming} not used: {exc.strerror or exc} (it must "
                      "be a real folder, not a symbolic link)")
        return
    try:
        _pick_up(cfg, audit, folder)
    except (OSError, TwinLockError) as exc:  # keep running, whatever the folder holds
        _drop_problem(audit, f"drop folder {incoming}: {exc}")
    finally:
        os.close(folder)


def _drop_problem(audit: Recorder | None, message: str) -> None:
    logger.error("%s", message)
    if audit is not None:
        audit.record("bundle", "deny", message)


#: a bundle's name in the drop folder while the door checks it. One left behind means the door
#: died checking it (a tower that crashes the runtime, the OOM killer): it is quarantined, never
#: retried, so such a bundle cannot become a crash loop.
CHECKING_PREFIX = ".checking-"


def _pick_up(cfg: Config, audit: Recorder | None, folder: int) -> None:
    incoming = cfg.model.incoming
    regular: list[tuple[float, str]] = []
    with os.scandir(folder) as entries:
        names = [(e.name, e.stat(follow_symlinks=False)) for e in entries
                 if e.name.endswith(BUNDLE_SUFFIX)]
    for name, _ in names:
        if name.startswith(CHECKING_PREFIX):
            _quarantine(audit, folder, incoming, name, "the door stopped while checking it "
                        "(it may crash the door); not tried again",
                        shown=name.removeprefix(CHECKING_PREFIX))
    listed = [(name, st) for name, st in names if not name.startswith(".")]
    for name, st in listed:
        if stat.S_ISREG(st.st_mode):
            regular.append((st.st_mtime, name))
        else:
            _quarantine(audit, folder, incoming, name, "not a regular file (a symbolic link, "
                        "FIFO, folder or device); not read")
    regular.sort()
    for _, name in regular[:-1]:
        logger.info("ignoring older incoming bundle %s", name)
    if not regular:
        return
    newest = regular[-1][1]
    checking = CHECKING_PREFIX + newest
    try:
        _take(folder, newest, checking)
    except BundleError as exc:  # oversized, or no longer a regular file: refused unread
        _quarantine(audit, folder, incoming, newest, str(exc))
        return
    try:
        install_bundle(incoming / checking, cfg.model.public_key, cfg.state_dir,
                       cfg.model.runtimes)
    except TwinLockError as exc:
        _quarantine(audit, folder, incoming, checking, str(exc).replace(checking, newest),
                    shown=newest)
        return
    for name in (checking, *(name for _, name in regular[:-1])):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)
    logger.info("installed bundle %s", newest)
    if audit is not None:
        audit.record("bundle", "ignore", f"bundle {newest} installed")


def _take(folder: int, name: str, private: str) -> None:
    """Copy the upload ``name`` into a new file ``private`` that only the daemon can read (its
    own, 0600: the folder's setgid bit gives it the group, the mode gives the group nothing),
    fsynced, then delete the upload. The daemon cannot chmod the upload (the uploader owns
    it), so a copy is the way. BundleError, with nothing changed, for an upload larger than
    any bundle or one that is no longer a regular file; OSError (a full card) leaves the upload
    where it is for the next pick-up."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        source = os.open(name, flags, dir_fd=folder)
    except OSError as exc:
        raise BundleError(f"{name}: cannot open it ({exc.strerror or exc})") from None
    try:
        st = os.fstat(source)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{name}: not a regular file (changed while being picked up)")
        if st.st_size > MAX_BUNDLE_SIZE:
            raise BundleError(f"{name}: {st.st_size} bytes, larger than any bundle can be "
                              f"({MAX_BUNDLE_SIZE} bytes)")
        os.set_blocking(source, True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(private, dir_fd=folder)  # ours from a pick-up cut short, or planted
        target = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=folder)
        try:
            os.fchmod(target, 0o600)
            copied = 0
            while chunk := os.read(source, 1 << 20):
                copied += len(chunk)
                if copied > MAX_BUNDLE_SIZE:  # grew while being read
                    raise BundleError(f"{name}: grew past {MAX_BUNDLE_SIZE} bytes while being "
                                      "picked up")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(target, view):]
            os.fsync(target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(private, dir_fd=folder)
            raise
        finally:
            os.close(target)
    finally:
        os.close(source)
    os.unlink(name, dir_fd=folder)


def _quarantine(audit: Recorder | None, folder: int, incoming: Path, name: str,
                reason: str, shown: str | None = None) -> None:
    """Move ``name`` into ``rejected/`` as ``shown`` (made afresh if it is not a real folder), by
    descriptor: no path in the drop folder is ever followed. Failing that, delete it."""
    shown = shown or name
    _drop_problem(audit, f"bundle {shown} refused: {reason}")
    try:
        rejected = _rejected_folder(folder, incoming)
        try:
            os.replace(name, shown, src_dir_fd=folder, dst_dir_fd=rejected)
        finally:
            os.close(rejected)
    except OSError as exc:
        logger.error("cannot move %s to %s/rejected (%s); deleting it", name, incoming, exc)
        try:
            os.unlink(name, dir_fd=folder)
        except OSError as again:
            logger.error("cannot delete %s from %s either: %s", name, incoming, again)


def _rejected_folder(folder: int, incoming: Path) -> int:
    """A descriptor of incoming/rejected: a real folder, never a link to somewhere else."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        os.mkdir("rejected", 0o700, dir_fd=folder)
    except FileExistsError:
        st = os.stat("rejected", dir_fd=folder, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            aside = f"rejected.not-a-folder-{int(time.time())}"
            logger.error("%s/rejected is not a folder; moved it to %s", incoming, aside)
            os.replace("rejected", aside, src_dir_fd=folder, dst_dir_fd=folder)
            os.mkdir("rejected", 0o700, dir_fd=folder)
    return os.open("rejected", flags, dir_fd=folder)
