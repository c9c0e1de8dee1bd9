"""Doors as a list, and ``twinlock doors sync``: fetch a door's new review records.

A door's review folder (``review:`` in its config) is read, never written: over the SSH deploy
account (``ssh://USER@HOST[:PORT]/PATH``, the same OpenSSH channel as ``twinlock deploy``: BatchMode,
one multiplexed connection, a deadline for the whole fetch) or from a folder (a copied card or a
share). Only ``ls``-like listing, ``tail -c``/``head -c`` and ``tar -c`` of named crops run on the
door, so fetching changes nothing there.

Every record and crop goes through the strict reader of ``daemon/review/format.py``; a refused
one is reported with its file, line and reason, and nothing of it is stored. What the door sends
is bounded in size before it is parsed (a compromised door cannot fill the host's memory).
"""

from __future__ import annotations

import io
import logging
import re
import shlex
import subprocess
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from twinlock.daemon.errors import DataNotFoundError, UsageError
from twinlock.daemon.processes import kill_group, output_tail
from twinlock.daemon.review.format import (
    CROPS_DIR,
    MAX_CROP_BYTES,
    MAX_FETCH_BYTES,
    MAX_LINE_BYTES,
    ReviewRecord,
    ReviewRecordError,
    check_crop,
    check_day_file_name,
    complete_lines,
    parse_record,
)

from ..errors import DeployError
from .activity import ActivityStore, DoorEntry
from .deploy import DEFAULT_REMOTE_DIR, LocalTarget, SshTarget, _SshSession, parse_target
from .mqtt_review import is_mqtt_target

logger = logging.getLogger(__name__)

DEFAULT_REVIEW_DIR = "/var/lib/twinlock-review/"
SYNC_TIMEOUT_S = 300.0
#: crops asked for in one ``tar`` on the door (keeps the command line short)
CROPS_PER_CALL = 200
MAX_DAY_FILES = 4000


class ReviewSource(Protocol):
    """Where a door's review records are read from (read-only)."""

    def days(self) -> dict[str, int]:
        """Day file name -> its size in bytes."""
        ...

    def read(self, day: str, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of ``day`` from byte ``offset``."""
        ...

    def crops(self, names: Sequence[str]) -> dict[str, bytes]:
        """The named crops that exist (name -> bytes), each at most MAX_CROP_BYTES."""
        ...

    def close(self) -> None: ...


# -- targets ------------------------------------------------------------------------------------


def parse_door_target(target: str) -> SshTarget | LocalTarget:
    """``ssh://USER@HOST[:PORT][/PATH]`` (PATH: the door's review folder, default
    /var/lib/twinlock-review/) or a local folder."""
    parsed = parse_target(target)
    if isinstance(parsed, SshTarget):
        if urlsplit(target.strip()).path in ("", "/"):
            parsed = SshTarget(parsed.user, parsed.host, parsed.port, DEFAULT_REVIEW_DIR)
        if not parsed.path.startswith("/"):
            raise UsageError(f"door target {target!r}: the review folder must be an absolute path")
    return parsed


def deploy_target_of(entry: DoorEntry) -> str:
    """Where ``twinlock deploy --to NAME`` sends a bundle: the door's own deploy target, else
    the drop folder (/var/spool/twinlock/) of the host its review records come from."""
    if entry.deploy_target:
        return entry.deploy_target
    if is_mqtt_target(entry.target):
        raise UsageError(f"door {entry.name} is read over MQTT ({entry.target}): deploy to it "
                         "with --to ssh://..., or add it with --deploy-to")
    parsed = parse_door_target(entry.target)
    if isinstance(parsed, LocalTarget):
        raise UsageError(f"door {entry.name} is read from a folder ({entry.target}): deploy "
                         "to it with --to FOLDER, or add it with --deploy-to")
    user = f"{parsed.user}@" if parsed.user else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    port = f":{parsed.port}" if parsed.port else ""
    return f"ssh://{user}{host}{port}{DEFAULT_REMOTE_DIR}"


# -- a folder -----------------------------------------------------------------------------------


class FolderSource:
    """A review folder on this machine (a copied card, a share)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise DataNotFoundError(f"review folder {folder} does not exist (is the card or "
                                    "share mounted, and review: on at the door?)")
        self.folder = folder

    def days(self) -> dict[str, int]:
        out = {}
        for path in self.folder.iterdir():
            if path.name.endswith(".jsonl") and path.is_file() and not path.is_symlink():
                out[path.name] = path.stat().st_size
        return out

    def read(self, day: str, offset: int, limit: int) -> bytes:
        with (self.folder / check_day_file_name(day)).open("rb") as handle:
            handle.seek(offset)
            return handle.read(limit)

    def crops(self, names: Sequence[str]) -> dict[str, bytes]:
        out = {}
        for name in names:
            path = self.folder / CROPS_DIR / name
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as handle:
                    out[name] = handle.read(MAX_CROP_BYTES + 1)
        return out

    def close(self) -> None:
        pass


# -- over ssh -----------------------------------------------------------------------------------


class SshSource:
    """A door's review folder over SSH: read-only commands over one shared connection."""

    def __init__(self, parsed: SshTarget, target: str, ssh_options: list[str],
                 identity: Path | None, timeout_s: float) -> None:
        self.parsed = parsed
        self.target = target
        self.folder = parsed.path.rstrip("/") or "/"
        self.session = _SshSession(parsed, target, ssh_options, identity,
                                   time.monotonic() + timeout_s, timeout_s)

    def close(self) -> None:
        self.session.close()

    def _fetch(self, step: str, command: str, cap: int) -> bytes:
        """Run ``command`` on the door; its stdout (at most ``cap`` bytes, or DeployError)."""
        argv = self.session.ssh_argv(command)
        remaining = self.session.deadline - time.monotonic()
        if remaining <= 0:
            raise DeployError(f"sync from {self.target} failed at step {step!r}: timed out",
                              step=step)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        timer = threading.Timer(remaining, kill_group, (proc,))
        timer.start()
        err_chunks: list[bytes] = []
        drain = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read(65536)
                                                                   if proc.stderr else b""))
        drain.start()
        try:
            assert proc.stdout is not None
            data = proc.stdout.read(cap + 1)
            if len(data) > cap:
                kill_group(proc, reap=True)
                raise DeployError(f"sync from {self.target} failed at step {step!r}: the door "
                                  f"sent more than {cap} bytes; refused", step=step)
            proc.wait()
        finally:
            timer.cancel()
            drain.join(timeout=5)
        stderr = output_tail(b"".join(err_chunks), 2000, 15)
        if proc.returncode == 255:
            from .deploy import _connect_hint
            raise DeployError(f"sync from {self.target} failed at step 'connect': could not log "
                              f"in to {self.parsed.destination}; {_connect_hint(stderr)}\n{stderr}",
                              step="connect", stderr=stderr)
        if proc.returncode < 0:
            raise DeployError(f"sync from {self.target} failed at step {step!r}: timed out",
                              step=step)
        if proc.returncode != 0:
            raise DeployError(f"sync from {self.target} failed at step {step!r} (exit "
                              f"{proc.returncode})\n{stderr}", step=step, stderr=stderr)
        return data

    def days(self) -> dict[str, int]:
        q = shlex.quote(self.folder)
        script = (f"cd -- {q} || exit 3; echo twinlock-review; for f in *.jsonl; do "
                  'if [ -f "$f" ] && [ ! -L "$f" ]; then printf \'%s %s\\n\' '
                  '"$(wc -c < "$f")" "$f"; fi; done')
        try:
            out = self._fetch("list", script, MAX_DAY_FILES * 64)
        except DeployError as exc:
            if exc.step == "list" and "(exit 3)" in str(exc):
                raise DataNotFoundError(
                    f"review folder {self.folder} does not exist or is not readable on "
                    f"{self.parsed.host} (is review: on at the door, and the deploy user in its "
                    "group?)") from None
            raise
        text = out.decode("utf-8", errors="replace")
        if not text.startswith("twinlock-review\n"):
            raise DeployError(f"sync from {self.target}: the door's shell did not answer the "
                              "listing", step="list")
        days = {}
        for line in text.splitlines()[1:]:
            match = re.fullmatch(r"\s*(\d{1,12}) (\S+)", line)
            if match is None:
                raise DeployError(f"sync from {self.target}: unexpected listing line "
                                  f"{line[:80]!r}", step="list")
            days[match.group(2)] = int(match.group(1))
        return days

    def read(self, day: str, offset: int, limit: int) -> bytes:
        path = shlex.quote(f"{self.folder}/{check_day_file_name(day)}")
        return self._fetch("read", f"tail -c +{int(offset) + 1} -- {path} | head -c {int(limit)}",
                           limit)

    def crops(self, names: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        folder = shlex.quote(f"{self.folder}/{CROPS_DIR}")
        for start in range(0, len(names), CROPS_PER_CALL):
            batch = list(names[start:start + CROPS_PER_CALL])
            # only the crops that exist (ls -d), so one deleted by retention spoils no others
            files = " ".join(shlex.quote(n) for n in batch)
            script = (f"cd -- {folder} 2>/dev/null || exit 0; set --; for f in {files}; do "
                      '[ -f "$f" ] && [ ! -L "$f" ] && set -- "$@" "$f"; done; '
                      '[ $# -eq 0 ] || tar -cf - -- "$@"')
            data = self._fetch("crops", script, len(batch) * (MAX_CROP_BYTES + 1024) + 10240)
            out.update(_untar(data, set(batch), self.target))
        return out


def _untar(data: bytes, wanted: set[str], target: str) -> dict[str, bytes]:
    """The regular files named in ``wanted`` from a tar stream; anything else is refused."""
    out: dict[str, bytes] = {}
    if not data:
        return out
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                if member.name not in wanted or not member.isfile():
                    raise ReviewRecordError(f"{target}: the door sent {member.name[:60]!r}, "
                                            "which was not asked for; refused")
                if member.size > MAX_CROP_BYTES:
                    out[member.name] = b"\0" * (MAX_CROP_BYTES + 1)  # refused by check_crop
                    continue
                handle = archive.extractfile(member)
                out[member.name] = handle.read() if handle else b""
    except tarfile.TarError as exc:
        raise ReviewRecordError(f"{target}: the crops did not arrive as a tar stream "
                                f"({exc})") from None
    return out


def open_source(entry: DoorEntry, timeout_s: float = SYNC_TIMEOUT_S) -> ReviewSource:
    parsed = parse_door_target(entry.target)
    if isinstance(parsed, LocalTarget):
        return FolderSource(parsed.folder)
    identity = Path(entry.identity).expanduser() if entry.identity else None
    return SshSource(parsed, entry.target, entry.ssh_options, identity, timeout_s)


# -- sync ---------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    """What one door's sync did."""

    door: str
    new: int = 0
    seen: int = 0
    refused: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None

    def summary(self) -> str:
        if self.error:
            return f"{self.door}: sync failed: {self.error}"
        line = (f"{self.door}: {self.new} new attempts ({self.seen} read, {self.bytes} bytes, "
                f"{self.seconds:.2f} s)")
        if self.refused:
            line += f"; {len(self.refused)} refused:\n  " + "\n  ".join(self.refused[:20])
        return line


def sync_door(store: ActivityStore, name: str, source: ReviewSource | None = None,
              timeout_s: float = SYNC_TIMEOUT_S) -> SyncReport:
    """Fetch ``name``'s new records into ``store``. Raises for a door that cannot be reached
    (DeployError, DataNotFoundError); refused records are listed in the report."""
    entry = store.door(name)
    start = time.monotonic()
    report = SyncReport(door=name)
    src = source
    try:
        if src is None and is_mqtt_target(entry.target):
            from .mqtt_review import drain  # the broker's queue (review.mqtt at the door)

            drain(store, entry, report, timeout_s, check_dimension)
        else:
            if src is None:
                src = open_source(entry, timeout_s)
            _sync(store, entry, src, report)
    except Exception as exc:
        store.note_sync(name, str(exc).splitlines()[0][:300])
        raise
    finally:
        if source is None and src is not None:
            src.close()
    report.seconds = time.monotonic() - start
    store.note_sync(name, None)
    store.note_reported_bundle(name)  # the bundle its newest record names (rollout.py)
    for reason in report.refused:
        logger.warning("%s", reason)
    return report


def _sync(store: ActivityStore, entry: DoorEntry, src: ReviewSource, report: SyncReport) -> None:
    days = src.days()
    cursors = store.cursors(entry.name)
    dims = store.model_dims()
    for day in sorted(days):
        try:
            check_day_file_name(day)
        except ReviewRecordError as exc:
            report.refused.append(f"{entry.name}: {exc}; skipped")
            continue
        size, offset = days[day], cursors.get(day, 0)
        if size < offset:
            logger.warning("%s: %s shrank (%d < %d bytes taken): reading it again from the "
                           "start (records already here are kept once)", entry.name, day, size,
                           offset)
            offset = 0
        while offset < size:
            data = src.read(day, offset, min(size - offset, MAX_FETCH_BYTES))
            report.bytes += len(data)
            taken = _take(store, entry.name, day, offset, data, dims, src, report)
            if taken == offset:  # only a line still being written: the next sync takes it
                break
            offset = taken


def check_dimension(record: ReviewRecord, dims: dict[str, int], where: str) -> None:
    """Refuse an embedding whose size is not its model's (as stored, or as first seen in this
    sync: ``dims`` learns it)."""
    if record.embedding is not None and record.model_id is not None:
        want = dims.setdefault(record.model_id, int(record.embedding.size))
        if record.embedding.size != want:
            raise ReviewRecordError(f"{where}: embedding has {record.embedding.size} "
                                    f"dimensions, model {record.model_id} has {want}")


def _take(store: ActivityStore, door: str, day: str, offset: int, data: bytes,
          dims: dict[str, int], src: ReviewSource, report: SyncReport) -> int:
    """Check and store the whole lines of ``data`` (read at ``offset``); the new offset."""
    checked: list[ReviewRecord] = []
    end = offset
    line_start = offset
    for end_of_line, line in complete_lines(data, offset):
        where = f"{door}: {day} byte {line_start}"
        line_start = end = end_of_line
        try:
            record = parse_record(line, door=door, where=where)
            if record.day_file != day:
                raise ReviewRecordError(f"{where}: record {record.id} is dated "
                                        f"{record.time.date()}, not in {day}")
            check_dimension(record, dims, where)
        except ReviewRecordError as exc:
            report.refused.append(str(exc))
            continue
        report.seen += 1
        checked.append(record)
    if end == offset and len(data) >= MAX_LINE_BYTES:
        report.refused.append(f"{door}: {day} byte {offset}: a line longer than {MAX_LINE_BYTES} "
                              "bytes; skipped")
        end = offset + len(data)
    crops = src.crops([r.crop_name for r in checked if r.crop_sha256 is not None])
    keep: list[tuple[ReviewRecord, bytes | None]] = []
    for record in checked:
        crop = None
        if record.crop_sha256 is not None:
            crop = crops.get(record.crop_name)
            try:
                if crop is None:
                    raise ReviewRecordError(f"{door}: crop {record.crop_name} is missing on "
                                            "the door (deleted by retention?)")
                check_crop(crop, record, f"{door}: {CROPS_DIR}/{record.crop_name}")
            except ReviewRecordError as exc:
                report.refused.append(f"{exc}; record {record.id} not stored")
                continue
        keep.append((record, crop))
    report.new += store.ingest(door, day, end, keep)
    return end
