"""Signed bundles: everything a door needs in one file, signed with Ed25519.

A bundle (``*.twinlock``) is an uncompressed POSIX ustar archive whose members are, in order::

    manifest.json        canonical JSON (sort_keys, separators (",", ":"), UTF-8)
    manifest.sig         raw 64-byte Ed25519 signature of exactly the manifest bytes
    model/tower.tflite   the exported tower
    model/model.json     its metadata (head, thresholds, model_id)
    gallery.json         the enrolled users' anchors, made with that model_id
    model/*.tflite       the model's assets (detector, face mesh), as model.json lists them
                         with their sha256; sorted by name (none in older bundles)

The manifest names every content file with its sha256 and size, so one signature covers all of
them. Its ``sequence`` (the writing time in microseconds unless given) orders bundles: a door
never installs one older than its current bundle, except through ``rollback``. The host writes
bundles (``write_bundle``); the door checks them (``verify_bundle``) before anything is unpacked
or installed, and keeps the previous good bundle for ``rollback``.

Version-1 bundles are canonical, and the verifier is strict about layout as well as content:
headers must be plain ustar with a valid checksum, members must be contiguous, and block padding
and the end-of-archive blocks must be zeros. Every byte the door uses is signed: the manifest by
the signature, each member by its sha256 in the manifest. What the signature does not cover is
tar header metadata the door never reads (timestamps, modes, owner names): a header re-forged
with a valid checksum is accepted and changes nothing the door does; any other change (tampering
or storage corruption) is refused.

This module runs on the door: it must never import TensorFlow or ``twinlock.trainer``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BundleError, ModelError, TwinLockError
from ..recognition.gallery import load_gallery
from ..recognition.model import (
    METADATA_FILE,
    TOWER_FILE,
    FaceEmbedder,
    ModelMetadata,
    read_metadata,
)
from ..storage.private_db import make_private_dirs

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "twinlock-bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_SUFFIX = ".twinlock"

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
TOWER_MEMBER = f"model/{TOWER_FILE}"
METADATA_MEMBER = f"model/{METADATA_FILE}"
GALLERY_MEMBER = "gallery.json"
#: content files, in the order they follow the manifest and its signature
CONTENT_MEMBERS: tuple[str, ...] = (TOWER_MEMBER, METADATA_MEMBER, GALLERY_MEMBER)
MEMBER_ORDER: tuple[str, ...] = (MANIFEST_NAME, SIGNATURE_NAME, *CONTENT_MEMBERS)
#: an asset member: a plain *.tflite name in model/ (checked against model.json's assets)
_ASSET_MEMBER_RE = re.compile(r"model/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.tflite")


def _is_asset_member(name: str) -> bool:
    return name not in CONTENT_MEMBERS and bool(_ASSET_MEMBER_RE.fullmatch(name))


def member_order(files: Sequence[str]) -> tuple[str, ...]:
    """The members a bundle listing ``files`` must have, in order: the fixed ones, then the
    model's assets sorted by name."""
    return (*MEMBER_ORDER, *sorted(n for n in files if _is_asset_member(n)))

SIGNATURE_SIZE = 64
#: per-member cap: the Koch tower is ~39 MB int8; anything much bigger is not a bundle of ours
MAX_MEMBER_SIZE = 64 * 1024 * 1024
#: cap on the whole file, checked before it is read: one big member (the tower) and room for the
#: small ones; the file is held in memory once (members are views into it), so this must fit in
#: the unit's MemoryMax beside the running daemon
MAX_BUNDLE_SIZE = MAX_MEMBER_SIZE + 16 * 1024 * 1024
KEY_ID_LENGTH = 16
#: the largest bundle sequence (fits SQLite's and JSON readers' 64-bit integers)
MAX_SEQUENCE = 2**63 - 1

CURRENT_NAME = "current" + BUNDLE_SUFFIX
PREVIOUS_NAME = "previous" + BUNDLE_SUFFIX

#: a member's verified content: bytes, or for the (large) tower a view into the bundle's bytes
Content = bytes | memoryview

BLOCK = tarfile.BLOCKSIZE
RECORD = 20 * BLOCK  # the POSIX default blocking factor, which tarfile and GNU tar both write
_MODEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CHKSUM_FIELD_RE = re.compile(rb"[0-7]{6}\x00 ")


# --------------------------------------------------------------------------------------------
# keys


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of sha256 of the raw 32-byte public key: short enough to read out."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_LENGTH]


def generate_keypair(private_path: str | Path, public_path: str | Path) -> str:
    """Make a signing key pair and return its key id; never overwrites an existing key.

    The private key is PEM PKCS8 with mode 0600 (it can sign bundles every door would accept);
    the public key is PEM SubjectPublicKeyInfo with mode 0644 (it goes to the doors).
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise BundleError(f"{private_path}: private and public key paths must differ")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise BundleError(f"{path}: already exists; refusing to overwrite a key "
                              "(move it away first if you really mean to replace it)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new_file(private_path, private_pem, 0o600)
    try:
        _write_new_file(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    kid = key_id(key)
    logger.info("generated signing key %s (%s, %s)", kid, private_path, public_path)
    return kid


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key (unencrypted PKCS8), refusing anything else clearly."""
    path = Path(path)
    data = _read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise BundleError(f"{path}: private key is password-protected; TwinLock expects an "
                          "unencrypted key kept with mode 0600") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError(f"{path}: not a PEM private key ({_first_line(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: a {type(key).__name__} private key; bundles are signed with "
                          "Ed25519 (make one with 'twinlock keygen')")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("private key %s has mode %s: anyone who can read it can sign bundles "
                       "(chmod 600)", path, oct(mode))
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key (SubjectPublicKeyInfo): the key a door trusts."""
    path = Path(path)
    data = _read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError(f"{path}: not a PEM public key ({_first_line(exc)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: a {type(key).__name__} public key; bundles are signed with "
                          "Ed25519")
    return key


def _read_key_file(path: Path, kind: str) -> bytes:
    try:
        if path.stat().st_size > 64 * 1024:
            raise BundleError(f"{path}: too large to be a {kind} key")
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: {kind} key not found") from None
    except IsADirectoryError:
        raise BundleError(f"{path}: is a folder, not a {kind} key file") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read {kind} key ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------------------------
# writing (host)


def canonical_json(data: dict[str, Any]) -> bytes:
    """The one byte string a manifest is signed as: sorted keys, no spaces, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def write_bundle(model_dir: str | Path, gallery_path: str | Path, private_key_path: str | Path,
                 out_path: str | Path, sequence: int | None = None) -> dict[str, Any]:
    """Pack a model folder and a gallery into one signed bundle; return its manifest.

    ``sequence`` (signed, default: the time of writing in microseconds since the epoch) orders
    bundles: a door refuses one lower than its current bundle's, so yesterday's bundle, replayed,
    cannot bring back a resident removed since.

    Refuses a gallery enrolled with another model (its anchors would live in another embedding
    space). Each file is read once, so the bytes hashed are the bytes packed. The result is
    verified with the matching public key before it is written, atomically, with mode 0600
    (it carries biometric anchors).
    """
    model_dir, gallery_path, out_path = Path(model_dir), Path(gallery_path), Path(out_path)
    meta = read_metadata(model_dir)
    if not meta.model_id or not _MODEL_ID_RE.fullmatch(meta.model_id):
        raise BundleError(f"{model_dir}: model_id {meta.model_id!r} is empty or unusable in a "
                          "bundle (letters, digits, '.', '_', '-'; at most 64)")
    gallery = load_gallery(gallery_path)
    if gallery.model_id != meta.model_id:
        raise BundleError(f"{gallery_path}: gallery was enrolled with model {gallery.model_id!r} "
                          f"but {model_dir} is model {meta.model_id!r}; re-enrol the users with "
                          "this model (twinlock enroll) before bundling")
    if not gallery.users:
        logger.warning("gallery %s has no users: a door with this bundle never opens",
                       gallery_path)
    key = load_private_key(private_key_path)

    contents = {
        TOWER_MEMBER: _read_member_source(model_dir / TOWER_FILE),
        METADATA_MEMBER: _read_member_source(model_dir / METADATA_FILE),
        GALLERY_MEMBER: _read_member_source(gallery_path),
    }
    for asset in sorted(meta.assets.values(), key=lambda a: a.file):
        contents[f"model/{asset.file}"] = _read_member_source(model_dir / asset.file)
    stamp = datetime.now(UTC)
    now = stamp.replace(microsecond=0)
    if sequence is None:
        sequence = int(stamp.timestamp() * 1_000_000)
    if type(sequence) is not int or not 0 <= sequence <= MAX_SEQUENCE:
        raise BundleError(f"bundle sequence must be an integer 0..{MAX_SEQUENCE}, not "
                          f"{sequence!r}")
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "created": now.isoformat(),
        "sequence": sequence,
        "model_id": meta.model_id,
        "users": list(gallery.users),
        "key_id": key_id(key),
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                  for name, data in contents.items()},
    }
    manifest_bytes = canonical_json(manifest)
    signature = key.sign(manifest_bytes)
    members = [(MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature),
               *contents.items()]
    data = _build_tar(members, int(now.timestamp()))
    # Self-check with the matching public key: never hand out a bundle a door would refuse.
    _verify_data(data, key.public_key(), str(out_path))
    _atomic_write(out_path, data, 0o600)
    logger.info("wrote bundle %s: model %s, %d user(s), key %s, %d bytes", out_path,
                meta.model_id, len(manifest["users"]), manifest["key_id"], len(data))
    return manifest


def _read_member_source(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_MEMBER_SIZE:
            raise BundleError(f"{path}: {size} bytes, over the {MAX_MEMBER_SIZE} byte cap for a "
                              "bundle member")
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (cannot bundle it)") from None
    except OSError as exc:
        raise BundleError(f"{path}: unreadable ({exc.strerror or exc})") from None


def _build_tar(members: list[tuple[str, bytes]], mtime: int) -> bytes:
    """Plain ustar (no pax/GNU extensions): the layout the verifier insists on."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o600
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# verifying (door)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, hashes and layout all checked out, held in memory.

    ``members`` maps each content file's name (``model/tower.tflite``, ``model/model.json``,
    ``gallery.json``) to its verified bytes (the tower as a view into the file's bytes, so a
    bundle is held in memory once); ``digest`` is the sha256 of the signed manifest
    bytes, which names this exact bundle.
    """

    manifest: dict[str, Any]
    members: dict[str, Content]
    key_id: str = ""
    digest: str = ""
    manifest_bytes: bytes = field(default=b"", repr=False)
    signature: bytes = field(default=b"", repr=False)

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def users(self) -> list[str]:
        return list(self.manifest["users"])

    @property
    def sequence(self) -> int:
        """The signed order of this bundle: its ``sequence``, or for bundles written before
        there was one, its ``created`` time in microseconds (the same scale)."""
        return manifest_sequence(self.manifest)

    @property
    def bundle_id(self) -> str:
        """``<model_id>-<digest[:12]>``: the folder name an unpacked copy gets."""
        return f"{self.model_id}-{self.digest[:12]}"

    def summary(self) -> dict[str, Any]:
        """What a person checking a bundle wants to see (no anchors, no key material)."""
        return {
            "bundle_id": self.bundle_id,
            "model_id": self.model_id,
            "users": self.users,
            "created": self.manifest.get("created"),
            "sequence": self.sequence,
            "key_id": self.key_id,
            "manifest_sha256": self.digest,
            "files": {name: dict(entry) for name, entry in self.manifest["files"].items()},
        }


def manifest_sequence(manifest: dict[str, Any]) -> int:
    """A checked manifest's order: ``sequence``, else ``created`` in microseconds."""
    if "sequence" in manifest:
        return int(manifest["sequence"])
    return int(datetime.fromisoformat(manifest["created"]).timestamp() * 1_000_000)


def verify_bundle(path: str | Path, public_key_path: str | Path) -> VerifiedBundle:
    """Check a bundle completely in memory (nothing is extracted) against a trusted public key.

    Raises BundleError naming the first check that failed: not a tar, truncated, unsigned,
    signed by another key, altered manifest, altered/missing/extra/duplicate member, unsafe
    name, link or device member, oversized member, or non-canonical layout.
    """
    public_key = load_public_key(public_key_path)
    data = _read_bundle_bytes(Path(path))
    return _verify_data(data, public_key, str(path))


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


def _read_bundle_bytes(path: Path) -> bytes:
    """The whole file, checked against MAX_BUNDLE_SIZE before anything is read (and read no
    further than that, should it grow meanwhile)."""
    fd, st = open_regular(path)
    try:
        if st.st_size > MAX_BUNDLE_SIZE:
            raise BundleError(f"{path}: {st.st_size} bytes, larger than any bundle can be "
                              f"({MAX_BUNDLE_SIZE} bytes)")
        with os.fdopen(fd, "rb", buffering=0) as handle:
            fd = -1
            data = handle.read(st.st_size + 1)  # one allocation of the announced size
            if len(data) > st.st_size and (len(data) > MAX_BUNDLE_SIZE or handle.read(1)):
                raise BundleError(f"{path}: grew while it was being read; refusing it")
    except OSError as exc:
        raise BundleError(f"{path}: cannot read bundle ({exc.strerror or exc})") from None
    finally:
        if fd >= 0:
            os.close(fd)
    return data


def _verify_data(data: bytes, public_key: Ed25519PublicKey, source: str) -> VerifiedBundle:
    """All checks on bundle bytes; every failure is a BundleError that starts with ``source``."""
    if len(data) > MAX_BUNDLE_SIZE:
        raise BundleError(f"{source}: {len(data)} bytes, larger than any bundle can be")
    if not data:
        raise BundleError(f"{source}: empty file (0 bytes), not a TwinLock bundle")
    raw = _read_tar_members(data, source)
    names = [name for name, _ in raw]

    # 1. the signature, over exactly the manifest bytes
    if MANIFEST_NAME not in names:
        raise BundleError(f"{source}: no {MANIFEST_NAME}: not a TwinLock bundle, or an "
                          "incomplete one")
    if SIGNATURE_NAME not in names:
        raise BundleError(f"{source}: no {SIGNATURE_NAME}: the bundle is unsigned")
    by_name = dict(raw)
    manifest_bytes, signature = bytes(by_name[MANIFEST_NAME]), bytes(by_name[SIGNATURE_NAME])
    if not signature:
        raise BundleError(f"{source}: {SIGNATURE_NAME} is empty: the bundle is unsigned")
    if len(signature) != SIGNATURE_SIZE:
        raise BundleError(f"{source}: {SIGNATURE_NAME} is {len(signature)} bytes; an Ed25519 "
                          f"signature is {SIGNATURE_SIZE}")
    trusted = key_id(public_key)
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        claimed = _claimed_key_id(manifest_bytes)
        if claimed is not None and claimed != trusted:
            raise BundleError(f"{source}: signed by key {claimed}, but this door trusts key "
                              f"{trusted}; re-sign the bundle with the door's key (or install "
                              "the matching public key on the door)") from None
        raise BundleError(f"{source}: invalid signature for trusted key {trusted}: the manifest "
                          "was altered after signing, or signed by a different key") from None

    # 2. the (now authentic) manifest
    manifest = _parse_manifest(manifest_bytes, source)
    if manifest["key_id"] != trusted:
        raise BundleError(f"{source}: manifest names key {manifest['key_id']} but was signed by "
                          f"key {trusted}")
    files: dict[str, dict[str, Any]] = manifest["files"]

    # 3. the members: exactly the listed ones, in order, each with the listed size and hash
    listed = [MANIFEST_NAME, SIGNATURE_NAME, *files]
    for name in names:
        if name not in listed:
            raise BundleError(f"{source}: extra member {name!r} not listed in the manifest")
    for name in files:
        if name not in by_name:
            raise BundleError(f"{source}: member {name!r} listed in the manifest is missing")
    if tuple(names) != member_order(list(files)):
        raise BundleError(f"{source}: members out of order: {names} (expected "
                          f"{list(member_order(list(files)))})")
    members: dict[str, Content] = {}
    for name, entry in files.items():
        content = by_name[name]
        if len(content) != entry["size"]:
            raise BundleError(f"{source}: {name} is {len(content)} bytes, the manifest says "
                              f"{entry['size']}: altered or corrupted")
        if hashlib.sha256(content).hexdigest() != entry["sha256"]:
            raise BundleError(f"{source}: {name} does not match its sha256 in the manifest: "
                              "altered or corrupted")
        members[name] = content

    # 4. the contents agree with each other (a buggy or hand-made writer could still sign junk)
    _check_contents(manifest, members, source)
    verified = VerifiedBundle(manifest=manifest, members=members, key_id=trusted,
                              digest=hashlib.sha256(manifest_bytes).hexdigest(),
                              manifest_bytes=manifest_bytes, signature=signature)
    logger.debug("verified bundle %s: %s, key %s", source, verified.bundle_id, trusted)
    return verified


def _read_tar_members(data: bytes, source: str) -> list[tuple[str, Content]]:
    """Walk the archive in memory; check types, names, sizes and the canonical layout."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            infos = archive.getmembers()
    except Exception as exc:  # noqa: BLE001 - tarfile fed untrusted bytes: any failure refuses
        if len(data) < BLOCK:
            raise BundleError(f"{source}: truncated or not a tar archive ({len(data)} bytes, "
                              f"less than one {BLOCK}-byte tar block)") from None
        raise BundleError(f"{source}: not an uncompressed tar archive, or a damaged one "
                          f"({_first_line(exc)})") from None
    if not infos:
        raise BundleError(f"{source}: an empty tar archive, not a TwinLock bundle")
    result: list[tuple[str, Content]] = []
    seen: set[str] = set()
    expected_offset = 0
    view = memoryview(data)  # members are views: the file is held in memory once
    for info in infos:
        name = info.name
        _check_member_name(name, source)
        if not info.isfile() or info.type != tarfile.REGTYPE:
            raise BundleError(f"{source}: member {name!r} is {_describe_type(info)}; only "
                              "regular files are allowed")
        if name in seen:
            raise BundleError(f"{source}: duplicate member {name!r}")
        seen.add(name)
        if info.size > MAX_MEMBER_SIZE:
            raise BundleError(f"{source}: member {name!r} is {info.size} bytes, over the "
                              f"{MAX_MEMBER_SIZE} byte cap")
        if info.pax_headers or info.offset != expected_offset \
                or info.offset_data != info.offset + BLOCK:
            raise BundleError(f"{source}: member {name!r} uses tar extensions or an unexpected "
                              "layout; bundles are plain ustar")
        _check_header_block(data[info.offset:info.offset + BLOCK], name, source)
        end = info.offset_data + info.size
        padded_end = info.offset_data + _round_up(info.size)
        if padded_end > len(data):
            raise BundleError(f"{source}: truncated inside member {name!r} ({len(data)} bytes, "
                              f"the member needs {padded_end})")
        if data[end:padded_end].strip(b"\0"):
            raise BundleError(f"{source}: non-zero padding after member {name!r}: altered or "
                              "corrupted")
        content = view[info.offset_data:end]
        result.append((name, content if name == TOWER_MEMBER else bytes(content)))
        expected_offset = padded_end
    # two zero blocks end the archive, then zeros up to a whole tar record (what tar writes)
    expected_size = -(-(expected_offset + 2 * BLOCK) // RECORD) * RECORD
    trailer = data[expected_offset:]
    if len(data) < expected_size:
        raise BundleError(f"{source}: truncated: {len(data)} bytes, the archive's end-of-archive "
                          f"blocks need {expected_size}")
    if trailer[:BLOCK].strip(b"\0"):
        # tarfile ends an archive quietly at a later header with a bad checksum
        raise BundleError(f"{source}: damaged tar header (or non-zero end-of-archive block) "
                          f"at byte {expected_offset}: altered or corrupted")
    if len(data) > expected_size or trailer.strip(b"\0"):
        raise BundleError(f"{source}: data after the end of the archive (appended or "
                          "corrupted)")
    return result


def _check_member_name(name: str, source: str) -> None:
    path = PurePosixPath(name)
    if not name or name.startswith("/") or path.is_absolute():
        raise BundleError(f"{source}: member {name!r} has an absolute name")
    if ".." in path.parts or "\\" in name or "\0" in name:
        raise BundleError(f"{source}: member {name!r} has an unsafe name (path traversal)")


def _check_header_block(header: bytes, name: str, source: str) -> None:
    """The few header bytes tarfile's checksum does not cover must be canonical too."""
    if header[257:263] != b"ustar\0" or header[263:265] != b"00":
        raise BundleError(f"{source}: member {name!r} does not have a POSIX ustar header")
    if not _CHKSUM_FIELD_RE.fullmatch(header[148:156]):
        raise BundleError(f"{source}: member {name!r} has a malformed header checksum field: "
                          "altered or corrupted")


def _describe_type(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"a symbolic link (to {info.linkname!r})"
    if info.islnk():
        return f"a hard link (to {info.linkname!r})"
    if info.isdir():
        return "a folder"
    if info.ischr() or info.isblk():
        return "a device"
    if info.isfifo():
        return "a FIFO"
    return f"of tar type {info.type!r}"


def _claimed_key_id(manifest_bytes: bytes) -> str | None:
    """The key id an unverified manifest claims, for a helpful message only (never trusted)."""
    try:
        value = json.loads(manifest_bytes.decode("utf-8")).get("key_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) <= 64 else None


def _parse_manifest(manifest_bytes: bytes, source: str) -> dict[str, Any]:
    try:
        manifest = json.loads(manifest_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{source}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{source}: {MANIFEST_NAME} is not a JSON object")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{source}: not a TwinLock bundle (format={manifest.get('format')!r})")
    if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{source}: unsupported bundle format version "
                          f"{manifest.get('format_version')!r} (this build reads "
                          f"{BUNDLE_FORMAT_VERSION})")
    problems = []
    model_id = manifest.get("model_id")
    if not isinstance(model_id, str) or not _MODEL_ID_RE.fullmatch(model_id):
        problems.append(f"model_id {model_id!r} is not a plain identifier")
    users = manifest.get("users")
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        problems.append("users is not a list of names")
    if not isinstance(manifest.get("key_id"), str):
        problems.append("key_id is missing")
    created = manifest.get("created")
    if not isinstance(created, str):
        problems.append("created is missing")
    elif "sequence" not in manifest:
        try:
            if datetime.fromisoformat(created).tzinfo is None:
                problems.append(f"created {created[:40]!r} has no time zone")
        except ValueError:
            problems.append(f"created {created[:40]!r} is not an ISO 8601 time")
    if "sequence" in manifest:
        sequence = manifest["sequence"]
        if type(sequence) is not int or not 0 <= sequence <= MAX_SEQUENCE:
            problems.append(f"sequence {str(sequence)[:40]!r} is not an integer "
                            f"0..{MAX_SEQUENCE}")
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(n for n in files if not _is_asset_member(n)) \
            != sorted(CONTENT_MEMBERS):
        problems.append(f"files must list exactly {list(CONTENT_MEMBERS)} and the model's "
                        "assets (model/*.tflite)")
    else:
        for name, entry in files.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                    and _SHA256_RE.fullmatch(entry["sha256"])
                    and type(entry.get("size")) is int and 0 <= entry["size"] <= MAX_MEMBER_SIZE):
                problems.append(f"files[{name!r}] needs a hex sha256 and a size")
    if problems:
        raise BundleError(f"{source}: malformed manifest: " + "; ".join(problems))
    return manifest


def _check_contents(manifest: dict[str, Any], members: dict[str, Content], source: str) -> None:
    model_id = manifest["model_id"]
    try:
        meta = ModelMetadata.from_json(json.loads(members[METADATA_MEMBER].decode("utf-8")),
                                       f"{source}:{METADATA_MEMBER}")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise BundleError(f"{source}: {METADATA_MEMBER} is not valid model metadata "
                          f"({_first_line(exc)})") from None
    except ModelError as exc:
        raise BundleError(str(exc)) from None
    if meta.model_id != model_id:
        raise BundleError(f"{source}: {METADATA_MEMBER} is model {meta.model_id!r}, the "
                          f"manifest says {model_id!r}")
    # the assets model.json names are exactly the asset members, with the same hashes
    files = manifest["files"]
    listed = {f"model/{a.file}": a.sha256 for a in meta.assets.values()}
    carried = {n: files[n]["sha256"] for n in files if _is_asset_member(n)}
    if listed != carried:
        raise BundleError(f"{source}: {METADATA_MEMBER} lists assets {sorted(listed)} but the "
                          f"bundle carries {sorted(carried)} (or their sha256 differ)")
    try:
        gallery = json.loads(members[GALLERY_MEMBER].decode("utf-8"))
        gallery_model = gallery["model_id"]
        gallery_users = [str(u["name"]) for u in gallery["users"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{source}: {GALLERY_MEMBER} is not a TwinLock gallery "
                          f"({_first_line(exc)})") from None
    if gallery_model != model_id:
        raise BundleError(f"{source}: {GALLERY_MEMBER} was enrolled with model "
                          f"{gallery_model!r}, the bundle's model is {model_id!r}")
    if sorted(gallery_users) != sorted(manifest["users"]):
        raise BundleError(f"{source}: the manifest lists users {manifest['users']} but "
                          f"{GALLERY_MEMBER} holds {gallery_users}")


# --------------------------------------------------------------------------------------------
# unpacking and installing (door)


def unpack(verified: VerifiedBundle, dest_dir: str | Path) -> Path:
    """Write a verified bundle's files into ``dest_dir/<model_id>-<digest[:12]>/`` atomically.

    Writes the bytes that were verified (the archive is never read again), into a hidden
    temporary folder that is fsynced and renamed, so a reader sees a complete folder or none.
    Folders are 0700 and files 0600: the gallery holds biometric anchors. If the folder already
    exists with identical files it is reused; a damaged one is replaced.
    """
    dest_dir = Path(dest_dir)
    make_private_dirs(dest_dir, BundleError)
    target = dest_dir / verified.bundle_id
    if target.is_dir() and not target.is_symlink() and _folder_matches(target, verified):
        logger.info("bundle %s already unpacked in %s", verified.bundle_id, target)
        return target
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest_dir))
    try:
        os.chmod(staging, 0o700)
        for name, content in verified.members.items():
            path = staging.joinpath(*PurePosixPath(name).parts)
            if not path.parent.exists():
                path.parent.mkdir(mode=0o700, parents=True)
                os.chmod(path.parent, 0o700)
            _write_file_synced(path, content, 0o600)
        for folder in {staging.joinpath(*PurePosixPath(n).parent.parts)
                       for n in verified.members}:
            _fsync_dir(folder)
        _fsync_dir(staging)
        if target.exists() or target.is_symlink():
            stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=dest_dir))
            os.replace(target, stale / "old")
            logger.warning("replacing damaged unpacked bundle %s", target)
            os.replace(staging, target)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(staging, target)
        _fsync_dir(dest_dir)
    except OSError as exc:
        raise BundleError(f"{dest_dir}: cannot unpack bundle {verified.bundle_id} "
                          f"({exc.strerror or exc})") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("unpacked bundle %s into %s", verified.bundle_id, target)
    return target


def _folder_matches(folder: Path, verified: VerifiedBundle) -> bool:
    try:
        return all(folder.joinpath(*PurePosixPath(name).parts).read_bytes() == content
                   for name, content in verified.members.items())
    except OSError:
        return False


def bundles_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "bundles"


def current_bundle(state_dir: str | Path) -> Path:
    """The installed bundle's path; BundleError when none is installed yet."""
    path = bundles_dir(state_dir) / CURRENT_NAME
    if not path.is_file():
        raise BundleError(f"{path}: no bundle installed yet (install one, e.g. with "
                          "'twinlock deploy')")
    return path


def check_runs(verified: VerifiedBundle, work_dir: Path,
               runtimes: Sequence[str] | None = None) -> None:
    """Load the bundle's model and gallery as the door will and run one test embedding.

    A signed bundle can still be unusable (anchors of another width than the model's, a tower
    the runtime cannot load): it must be refused before it becomes ``current``, or the next
    start finds no model. Unpacks into a private temporary folder under ``work_dir``.
    BundleError says what failed.
    """
    source = verified.bundle_id
    make_private_dirs(work_dir, BundleError)
    try:
        with tempfile.TemporaryDirectory(prefix=".check-", dir=work_dir) as tmp:
            root = unpack(verified, tmp)
            chain = tuple(runtimes) if runtimes else ()
            embedder = (FaceEmbedder(root / "model", 1, chain) if chain
                        else FaceEmbedder(root / "model"))
            meta = embedder.meta
            gallery = load_gallery(root / GALLERY_MEMBER)
            dim = meta.embedding_dim
            if np.asarray(meta.head_weights).shape != (dim,):
                raise ModelError(f"head weights are {np.asarray(meta.head_weights).shape}, the "
                                 f"model makes {dim}-d embeddings")
            for user in gallery.users.values():
                if user.anchors.shape[1] != dim:
                    raise ModelError(f"user {user.name!r} has {user.anchors.shape[1]}-d anchors, "
                                     f"the model makes {dim}-d embeddings")
                if not np.isfinite(user.anchors).all():
                    raise ModelError(f"user {user.name!r} has non-finite anchors")
            size = meta.input_size
            probe = embedder.embed(np.full((1, size, size, 3), 128, np.uint8))
            if probe.shape != (1, dim) or not np.isfinite(probe).all():
                raise ModelError(f"a test embedding came out as {probe.shape} "
                                 f"{'finite' if np.isfinite(probe).all() else 'non-finite'}, "
                                 f"not (1, {dim})")
    except BundleError:
        raise
    except TwinLockError as exc:
        raise BundleError(f"{source}: signed, but it cannot run on this door: {exc}") from None
    except OSError as exc:
        raise BundleError(f"{source}: cannot check the bundle ({exc.strerror or exc})") from None
    logger.info("bundle %s loads and runs (%d-d embeddings, %d user(s))", source, dim,
                len(gallery.users))


def install_bundle(bundle_path: str | Path, public_key_path: str | Path,
                   state_dir: str | Path, runtimes: Sequence[str] | None = None) -> Path:
    """Verify a bundle and make it ``current``, keeping the one it replaces as ``previous``.

    A bundle that fails verification changes nothing, and so does one whose signed sequence is
    lower than the current bundle's (only :func:`rollback` goes back), and one whose model and
    gallery do not load and run together (:func:`check_runs`, with LiteRT ``runtimes``). The bytes installed are the bytes that
    were verified. Each step is an atomic replace of a fsynced file, so after a power cut
    ``current`` is always one complete, good bundle (the old or the new one).
    """
    public_key = load_public_key(public_key_path)
    data = _read_bundle_bytes(Path(bundle_path))
    verified = _verify_data(data, public_key, str(bundle_path))
    folder = bundles_dir(state_dir)
    current, previous = folder / CURRENT_NAME, folder / PREVIOUS_NAME
    try:
        make_private_dirs(folder, BundleError)  # state_dir too, if this makes it: 0700
        old = current.read_bytes() if current.is_file() else None
        if old == data:
            logger.info("bundle %s is already current", verified.bundle_id)
            return current
        if old is not None:
            _refuse_older(verified, old, public_key, str(bundle_path), current)
        check_runs(verified, folder, runtimes)
        if old is not None:
            _atomic_write(previous, old, 0o600)
        _atomic_write(current, data, 0o600)
    except OSError as exc:
        raise BundleError(f"{folder}: cannot install bundle ({exc.strerror or exc})") from None
    logger.info("installed bundle %s (model %s, %d user(s), key %s)%s", verified.bundle_id,
                verified.model_id, len(verified.users), verified.key_id,
                "; kept the one before as previous" if old is not None else "")
    return current


def _refuse_older(new: VerifiedBundle, old: bytes, public_key: Ed25519PublicKey, source: str,
                  current: Path) -> None:
    """BundleError unless ``new`` comes after the installed bundle. Going back is what
    ``twinlockd rollback`` is for; a replayed old bundle would undo what changed since (a
    resident removed, a key rotated). A damaged current bundle orders nothing."""
    try:
        installed = _verify_data(old, public_key, str(current))
    except BundleError as exc:
        logger.warning("the installed bundle does not verify (%s): replacing it", exc)
        return
    if new.sequence < installed.sequence:
        raise BundleError(
            f"{source}: older than the installed bundle (sequence {new.sequence}, created "
            f"{new.manifest['created']}; installed: {installed.sequence}, created "
            f"{installed.manifest['created']}): refusing to go back. To return to the previous "
            "bundle on purpose, run 'twinlockd rollback' on the door")
    if new.sequence == installed.sequence:
        raise BundleError(f"{source}: same sequence {new.sequence} as the installed bundle "
                          f"{installed.bundle_id} but different contents: refusing it")


def rollback(state_dir: str | Path, public_key_path: str | Path) -> Path:
    """Put the previous bundle back as current (after verifying it); keep the newer as previous.

    ``current`` is replaced first, so a power cut between the two steps leaves the rolled-back
    bundle running (the newer copy is then lost; the host still has it).
    """
    folder = bundles_dir(state_dir)
    current, previous = folder / CURRENT_NAME, folder / PREVIOUS_NAME
    if not previous.is_file():
        raise BundleError(f"{previous}: no previous bundle to roll back to")
    public_key = load_public_key(public_key_path)
    older = _read_bundle_bytes(previous)
    verified = _verify_data(older, public_key, str(previous))
    try:
        newer = current.read_bytes() if current.is_file() else None
        _atomic_write(current, older, 0o600)
        if newer is not None:
            _atomic_write(previous, newer, 0o600)
    except OSError as exc:
        raise BundleError(f"{folder}: cannot roll back ({exc.strerror or exc})") from None
    logger.info("rolled back to bundle %s (model %s)", verified.bundle_id, verified.model_id)
    return current


# --------------------------------------------------------------------------------------------
# files


def _round_up(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fill_synced(fd: int, data: bytes, mode: int) -> None:
    """Give the open file ``fd`` its mode and ``data``, on disk before returning; closes it."""
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _write_file_synced(path: Path, data: bytes, mode: int) -> None:
    _fill_synced(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), data, mode)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Temp file beside ``path``, fsync, rename over it, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        _fill_synced(fd, data, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Atomic and exclusive: a complete file appears under ``path`` or nothing does, and an
    existing file (even one created meanwhile) is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        _fill_synced(fd, data, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise BundleError(f"{path}: already exists; refusing to overwrite a key") from None
    finally:
        os.unlink(tmp)
    _fsync_dir(path.parent)
