"""One atomic write for every file TwinLock keeps: a reader sees the old file or the new one.

A Pi loses power without warning and a card is pulled mid-copy, so every file write goes the same
way: a temporary file beside the target (same folder, so the rename cannot cross file systems),
the data fsynced, the mode set, a rename over the target, then the folder fsynced so the rename
itself survives the power cut. Without the first fsync a rename can reach the disk before the
data does and leave an empty file under the old name; without the last one the new name can be
lost. The temporary name starts with a dot, which the door's drop folder ignores.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .json_encoding import json_default

logger = logging.getLogger(__name__)

#: errors that mean "this file system cannot fsync a folder" (FAT cards on some kernels, SMB)
_NO_DIR_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def fsync_dir(folder: Path | str) -> None:
    """Make a rename or creation in ``folder`` durable.

    A file system that cannot sync a folder at all (it says EINVAL or ENOTSUP) is logged and
    accepted: the data was synced, and there is nothing more to ask of it. Other errors raise.
    """
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
        logger.debug("folder %s cannot be fsynced here: %s", folder, exc)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (``.<name>.<random>.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def durable_replace(written: Path | str, target: Path | str) -> None:
    """Rename a finished file that another library wrote (Keras, h5py) over ``target``, durably:
    its data is fsynced first, then the rename, then the folder, as :func:`atomic_writer` does
    for what it writes itself."""
    fd = os.open(written, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(written, target)
    fsync_dir(Path(target).parent)


@contextlib.contextmanager
def atomic_writer(path: Path | str, mode: int | None) -> Iterator[IO[bytes]]:
    """Write ``path`` atomically through the binary handle this yields.

    On a clean exit the data is flushed and fsynced, the file gets ``mode``, is renamed over
    ``path`` and the folder is fsynced. On an exception the temporary file is removed and
    ``path`` is untouched. ``mode=None`` leaves the mode the umask gives a new file (for places
    such as FAT cards where a chmod may be refused); otherwise the file is created 0600 and
    given ``mode`` before anyone can see it under ``path``.
    """
    target = Path(path)
    tmp = temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 0o666 if mode is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write(path: Path | str, data: bytes, mode: int | None) -> None:
    """Replace ``path`` by ``data`` atomically and durably (see :func:`atomic_writer`)."""
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def atomic_write_json(path: Path | str, data: Any, mode: int | None, *, indent: int | None = 2,
                      default: Callable[[Any], Any] = json_default) -> None:
    """``data`` as JSON text with a final newline, written atomically.

    The text is made before the file is opened, so data that cannot be encoded leaves nothing
    behind.
    """
    text = json.dumps(data, indent=indent, default=default)
    atomic_write(path, (text + "\n").encode(), mode)
