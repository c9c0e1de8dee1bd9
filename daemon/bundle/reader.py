"""Reading a bundle on the door as a stream: bounded memory, each member hashed as it is read.

The file is opened only if it is a regular file (never through a symlink, never blocking on a
FIFO), and its size on the open descriptor is checked against the cap before a byte is read.
Then it is read once, front to back, in blocks of :data:`CHUNK` bytes: the manifest and its
signature come first, so every later member is checked against the signed manifest while it
streams (name, size at its header, sha256 at its last byte), and the first mismatch refuses the
bundle without reading further. Only the manifest, the signature and the two JSON members that
must be parsed (model.json, gallery.json) are held in memory; the tower and the assets pass
through a hash. What a caller keeps is written as it is read, to places only a verified
bundle is promoted from: ``copy_to`` gets the file's exact bytes (``current.twinlock``),
``extract_to`` a folder of its members (an unpacked bundle). So the bytes used are the bytes
verified, and the file is never read a second time.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import BundleError
from . import format as fmt

logger = logging.getLogger(__name__)

#: bytes read at a time: the reader's memory, whatever the bundle's size
CHUNK = 256 * 1024


def open_regular(path: Path, what: str = "bundle") -> tuple[int, os.stat_result]:
    """Open ``path`` for reading only if it is a regular file, never following a symlink and
    never blocking (a FIFO would block ``open`` until a writer came). Returns the descriptor
    (blocking again) and its ``fstat``; BundleError names what ``path`` is instead."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BundleError(f"{path}: {what} not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"{path}: is a symbolic link; a {what} is read only from a "
                              "regular file") from None
        raise BundleError(f"{path}: cannot open {what} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path}: is {_file_kind(st.st_mode)}, not a regular {what} file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISLNK, "a link"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_bundle(path: Path, public_key: Ed25519PublicKey, *, copy_to: IO[bytes] | None = None,
                extract_to: Path | None = None, durable: bool = False) -> fmt.VerifiedBundle:
    """Verify the bundle file at ``path`` completely, streaming (see the module docstring).

    ``copy_to``: an open file that receives every byte read; ``extract_to``: an empty private
    folder that receives each member as a file (0600, folders 0700), each fsynced if
    ``durable`` (a folder the door will run from; not a scratch copy for a check). Both are
    partial when this raises, so callers write them somewhere they discard on failure.
    BundleError names the first check that failed.
    """
    fd, st = open_regular(path)
    try:
        if st.st_size > fmt.MAX_BUNDLE_SIZE:
            raise BundleError(f"{path}: {st.st_size} bytes, larger than any bundle can be "
                              f"({fmt.MAX_BUNDLE_SIZE} bytes)")
        with os.fdopen(fd, "rb", buffering=0) as handle:
            fd = -1
            return verify_stream(handle, st.st_size, public_key, str(path), copy_to=copy_to,
                                 extract_to=extract_to, durable=durable)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read bundle ({exc.strerror or exc})") from None
    finally:
        if fd >= 0:
            os.close(fd)


class _Source:
    """The bundle's bytes in order, each counted, hashed into the file's sha256 and copied."""

    def __init__(self, handle: IO[bytes], size: int, source: str,
                 copy_to: IO[bytes] | None) -> None:
        self.handle, self.size, self.source, self.copy_to = handle, size, source, copy_to
        self.offset = 0
        self.whole = hashlib.sha256()

    def read(self, count: int) -> bytes:
        """Up to ``count`` (<= CHUNK) bytes; fewer only at the end of the file."""
        parts: list[bytes] = []
        got = 0
        while got < count:
            part = self.handle.read(count - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        data = b"".join(parts)
        self.offset += len(data)
        if self.offset > self.size:
            raise BundleError(f"{self.source}: grew while it was being read; refusing it")
        self.whole.update(data)
        if self.copy_to is not None:
            self.copy_to.write(data)
        return data


def verify_stream(handle: IO[bytes], size: int, public_key: Ed25519PublicKey, source: str, *,
                  copy_to: IO[bytes] | None = None, extract_to: Path | None = None,
                  durable: bool = False) -> fmt.VerifiedBundle:
    """Verify ``size`` bytes of a bundle read from ``handle`` (see :func:`read_bundle`); every
    failure is a BundleError that starts with ``source``."""
    if size > fmt.MAX_BUNDLE_SIZE:
        raise BundleError(f"{source}: {size} bytes, larger than any bundle can be")
    if size == 0:
        raise BundleError(f"{source}: empty file (0 bytes), not a TwinLock bundle")
    src = _Source(handle, size, source, copy_to)
    names: list[str] = []
    held: dict[str, bytes] = {}
    manifest: dict[str, Any] | None = None
    manifest_bytes = signature = b""
    while True:
        offset = src.offset
        header = src.read(fmt.BLOCK)
        if len(header) < fmt.BLOCK:
            if offset == 0:
                raise BundleError(f"{source}: truncated or not a tar archive ({len(header)} "
                                  f"bytes, less than one {fmt.BLOCK}-byte tar block)")
            raise BundleError(f"{source}: truncated: {size} bytes, the archive's end-of-archive "
                              f"blocks need {_archive_size(offset)}")
        if not header.strip(b"\0"):
            if offset == 0:
                raise BundleError(f"{source}: an empty tar archive, not a TwinLock bundle")
            break
        info = _parse_header(header, offset, source)
        name = info.name
        fmt.check_member_header(info, header, source)
        if name in names:
            raise BundleError(f"{source}: duplicate member {name!r}")
        entry = _expected(name, len(names), manifest, info.size, source)
        padded_end = offset + fmt.BLOCK + fmt.round_up(info.size)
        if padded_end > size:
            raise BundleError(f"{source}: truncated inside member {name!r} ({size} bytes, "
                              f"the member needs {padded_end})")
        names.append(name)
        kept = name in (fmt.MANIFEST_NAME, fmt.SIGNATURE_NAME, *fmt.PARSED_MEMBERS)
        out = _create_member(extract_to, name) if extract_to is not None and entry else None
        content = _stream_member(src, name, info.size, entry, kept, out, durable)
        if name == fmt.MANIFEST_NAME:
            manifest_bytes = content
        elif name == fmt.SIGNATURE_NAME:
            signature = content
            manifest = fmt.check_signature(manifest_bytes, signature, public_key, source)
        elif kept:
            held[name] = content
    _check_trailer(src, offset, source)
    if manifest is None:
        raise BundleError(f"{source}: no {fmt.SIGNATURE_NAME}: the bundle is unsigned")
    files: dict[str, dict[str, Any]] = manifest["files"]
    for name in files:
        if name not in names:
            raise BundleError(f"{source}: member {name!r} listed in the manifest is missing")
    if tuple(names) != fmt.member_order(list(files)):
        raise BundleError(f"{source}: members out of order: {names} (expected "
                          f"{list(fmt.member_order(list(files)))})")
    fmt.check_contents(manifest, held[fmt.METADATA_MEMBER], held[fmt.GALLERY_MEMBER], source)
    verified = fmt.VerifiedBundle(manifest=manifest, key_id=fmt.key_id(public_key),
                                  digest=hashlib.sha256(manifest_bytes).hexdigest(),
                                  file_sha256=src.whole.hexdigest(), size=src.offset,
                                  manifest_bytes=manifest_bytes, signature=signature)
    logger.debug("verified bundle %s: %s, key %s", source, verified.bundle_id, verified.key_id)
    return verified


def _parse_header(header: bytes, offset: int, source: str) -> tarfile.TarInfo:
    try:
        return tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        if offset == 0:
            raise BundleError(f"{source}: not an uncompressed tar archive, or a damaged one "
                              f"({fmt.first_line(exc)})") from None
        raise BundleError(f"{source}: damaged tar header (or non-zero end-of-archive block) "
                          f"at byte {offset}: altered or corrupted") from None


def _expected(name: str, index: int, manifest: dict[str, Any] | None, size: int,
              source: str) -> dict[str, Any] | None:
    """The signed manifest's entry for member number ``index`` named ``name`` (None for the
    manifest and its signature, which come first); refuses at the header what cannot match."""
    if index == 0:
        if name != fmt.MANIFEST_NAME:
            raise BundleError(f"{source}: no {fmt.MANIFEST_NAME}: not a TwinLock bundle, or an "
                              f"incomplete one (its first member is {name!r})")
        if size > fmt.MAX_MANIFEST_SIZE:
            raise BundleError(f"{source}: {fmt.MANIFEST_NAME} is {size} bytes, over the "
                              f"{fmt.MAX_MANIFEST_SIZE} byte cap for a manifest")
        return None
    if index == 1:
        if name != fmt.SIGNATURE_NAME:
            raise BundleError(f"{source}: no {fmt.SIGNATURE_NAME}: the bundle is unsigned (the "
                              f"second member is {name!r})")
        if size == 0:
            raise BundleError(f"{source}: {fmt.SIGNATURE_NAME} is empty: the bundle is unsigned")
        if size != fmt.SIGNATURE_SIZE:
            raise BundleError(f"{source}: {fmt.SIGNATURE_NAME} is {size} bytes; an Ed25519 "
                              f"signature is {fmt.SIGNATURE_SIZE}")
        return None
    assert manifest is not None  # set when the signature (member 1) checked out
    entry: dict[str, Any] | None = manifest["files"].get(name)
    if entry is None:
        raise BundleError(f"{source}: extra member {name!r} not listed in the manifest")
    if size != entry["size"]:
        raise BundleError(f"{source}: {name} is {size} bytes, the manifest says "
                          f"{entry['size']}: altered or corrupted")
    return entry


def _stream_member(src: _Source, name: str, size: int, entry: dict[str, Any] | None, kept: bool,
                   out: IO[bytes] | None, durable: bool) -> bytes:
    """Read one member's bytes and padding, hashing them (and writing them to ``out``, which is
    closed) as they come; returns them if ``kept``. Refuses at the member's end if its sha256 is
    not the signed one."""
    digest = hashlib.sha256()
    parts: list[bytes] = []
    try:
        left = size
        while left:
            part = src.read(min(left, CHUNK))
            if not part:
                raise BundleError(f"{src.source}: truncated inside member {name!r} "
                                  f"({src.offset} bytes read)")
            left -= len(part)
            digest.update(part)
            if kept:
                parts.append(part)
            if out is not None:
                out.write(part)
        if out is not None and durable:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    padding = src.read(fmt.round_up(size) - size)
    if len(padding) < fmt.round_up(size) - size:
        raise BundleError(f"{src.source}: truncated inside member {name!r} "
                          f"({src.offset} bytes read)")
    if padding.strip(b"\0"):
        raise BundleError(f"{src.source}: non-zero padding after member {name!r}: altered or "
                          "corrupted")
    if entry is not None and digest.hexdigest() != entry["sha256"]:
        raise BundleError(f"{src.source}: {name} does not match its sha256 in the manifest: "
                          "altered or corrupted")
    return b"".join(parts)


def _create_member(folder: Path, name: str) -> IO[bytes]:
    """A new 0600 file for member ``name`` (a checked, manifest-listed name) under ``folder``."""
    path = folder.joinpath(*PurePosixPath(name).parts)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
        os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def _archive_size(end: int) -> int:
    """The file size tar writes for members ending at ``end``: two zero blocks, then zeros up
    to a whole tar record."""
    return -(-(end + 2 * fmt.BLOCK) // fmt.RECORD) * fmt.RECORD


def _check_trailer(src: _Source, end: int, source: str) -> None:
    """After the first zero block at ``end``: zeros up to the record's end, then nothing."""
    expected = _archive_size(end)
    if src.size < expected:
        raise BundleError(f"{source}: truncated: {src.size} bytes, the archive's end-of-archive "
                          f"blocks need {expected}")
    while src.offset < expected:
        part = src.read(min(expected - src.offset, CHUNK))
        if not part:
            raise BundleError(f"{source}: truncated: {src.offset} bytes, the archive's "
                              f"end-of-archive blocks need {expected}")
        if part.strip(b"\0"):
            raise BundleError(f"{source}: data after the end of the archive (appended or "
                              "corrupted)")
    if src.size > expected or src.read(1):
        raise BundleError(f"{source}: data after the end of the archive (appended or "
                          "corrupted)")
