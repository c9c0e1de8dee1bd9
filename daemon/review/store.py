"""The door's side of review records: append one per finished attempt, bounded in age and size.

Not wired into the daemon yet: the daemon's event outbox (issue 21) will hand each finished
attempt to :meth:`ReviewWriter.append` as one of its sinks. Writing is fail-safe: a folder that is
missing, read-only or full makes ``append`` return False and log a warning once (and once more
when writing works again); it never raises into the door's loop.

Order of writing: the crop first (atomically, under its final name), then the record's line
(appended and fsynced). A reader may see a crop whose line is not there yet, never a line whose
crop is still half written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

from ..storage.files import atomic_write, fsync_dir
from .format import (
    CROPS_DIR,
    DAY_FILE_RE,
    RECORD_ID_RE,
    ReviewRecord,
    ReviewRecordError,
    check_crop,
    check_door_name,
    crop_name,
    day_file_name,
    encode_record,
)

logger = logging.getLogger(__name__)

#: the deploy group reads the records (the household fetches them over SSH); nobody else
FILE_MODE = 0o640
DIR_MODE = 0o750
JPEG_QUALITY = 90
_ID_IN_LINE = re.compile(rb'"id":"([a-z0-9-]{1,32}\.[0-9a-f]{20})"')


def encode_crop(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """An RGB uint8 chip -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ReviewRecordError("could not encode the crop as JPEG")
    return bytes(buf)


class ReviewWriter:
    """Append review records into ``folder`` (day files and ``crops/``), oldest days deleted first
    when they are older than ``retention_days`` or the folder would exceed ``max_bytes``."""

    def __init__(self, folder: Path | str, door: str, retention_days: int, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        if retention_days < 1 or max_bytes < 1:
            raise ValueError("retention_days and max_bytes must be positive")
        self.folder = Path(folder)
        self.door = check_door_name(door)
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self.clock = clock
        self._failing = False

    # -- public ---------------------------------------------------------------------------------

    def append(self, record: ReviewRecord, crop: bytes | None) -> bool:
        """Keep ``record`` (and ``crop``, a JPEG); True if it was written.

        A record that this door's reader would refuse raises ReviewRecordError (a bug in the
        caller, not a condition of the folder); a folder that cannot take it returns False.
        """
        if record.door != self.door:
            raise ReviewRecordError(f"record for door {record.door!r} given to door {self.door!r}")
        if crop is not None:
            record = dataclasses.replace(record, crop_sha256=hashlib.sha256(crop).hexdigest())
            check_crop(crop, record, f"crop of {record.id}")
        elif record.crop_sha256 is not None:
            raise ReviewRecordError(f"record {record.id} names a crop but none was given")
        line = encode_record(record)
        needed = len(line) + (len(crop) if crop is not None else 0)
        try:
            self._prepare()
            if not self._make_room(needed, record.day_file):
                return self._failed(f"review folder {self.folder} is full ({self.max_bytes} "
                                    "bytes, and today's records alone fill it): not keeping "
                                    "more records today")
            if crop is not None:
                atomic_write(self.folder / CROPS_DIR / crop_name(record.id), crop, FILE_MODE)
            self._append_line(self.folder / record.day_file, line)
        except OSError as exc:
            return self._failed(f"cannot write review records to {self.folder}: "
                                f"{exc.strerror or exc}")
        if self._failing:
            logger.warning("review records are written to %s again", self.folder)
            self._failing = False
        return True

    def prune(self) -> list[str]:
        """Delete day files (and their crops) older than the retention; the names deleted."""
        cutoff = (datetime.fromtimestamp(self.clock(), UTC)
                  - timedelta(days=self.retention_days)).strftime("%Y-%m-%d")
        gone = []
        for name in self._days():
            if name[:10] < cutoff:
                self._delete_day(name)
                gone.append(name)
        return gone

    def used_bytes(self) -> int:
        total = 0
        for sub in (self.folder, self.folder / CROPS_DIR):
            if sub.is_dir():
                with os.scandir(sub) as entries:
                    total += sum(e.stat().st_size for e in entries if e.is_file())
        return total

    # -- inside ---------------------------------------------------------------------------------

    def _failed(self, message: str) -> bool:
        if not self._failing:
            logger.warning("%s; the door keeps deciding without them", message)
            self._failing = True
        return False

    def _prepare(self) -> None:
        """Make the folder and crops/ when missing. A parent with the setgid bit (a folder
        the installer gave to the deploy group) passes it on, so every record and crop gets
        that group and the household's fetch can read them: a plain chmod would drop it."""
        for folder in (self.folder, self.folder / CROPS_DIR):
            if not folder.is_dir():
                folder.mkdir(mode=DIR_MODE)
                inherit = folder.parent.stat().st_mode & stat.S_ISGID
                os.chmod(folder, DIR_MODE | inherit)

    def _days(self) -> list[str]:
        return sorted(e.name for e in os.scandir(self.folder)
                      if e.is_file() and DAY_FILE_RE.fullmatch(e.name))

    def _make_room(self, needed: int, today: str) -> bool:
        self.prune()
        used = self.used_bytes()
        for name in self._days():
            if used + needed <= self.max_bytes or name >= today:
                break
            self._delete_day(name)
            used = self.used_bytes()
        return used + needed <= self.max_bytes

    def _delete_day(self, name: str) -> None:
        """The day's crops first, then its file: a crop without a line is harmless."""
        path = self.folder / name
        try:
            ids = _ID_IN_LINE.findall(path.read_bytes())
        except FileNotFoundError:
            return
        for raw in ids:
            record_id = raw.decode()
            if RECORD_ID_RE.fullmatch(record_id):
                (self.folder / CROPS_DIR / crop_name(record_id)).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        fsync_dir(self.folder)
        logger.info("review: deleted %s and its %d crops", name, len(ids))

    def _append_line(self, path: Path, line: bytes) -> None:
        new = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            if new:
                os.fchmod(fd, FILE_MODE)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.folder)


def day_of(record: ReviewRecord) -> str:
    """The day file a record belongs in (``YYYY-MM-DD.jsonl``, UTC)."""
    return day_file_name(record.time)
