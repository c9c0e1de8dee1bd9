"""The bundle format: what a ``*.twinlock`` file holds, what is signed, and the checks on each part.

A bundle is an uncompressed POSIX ustar archive whose members are, in order::

    manifest.json        canonical JSON (sort_keys, separators (",", ":"), UTF-8)
    manifest.sig         raw 64-byte Ed25519 signature of exactly the manifest bytes
    model/tower.tflite   the exported tower
    model/model.json     its metadata (head, thresholds, model_id)
    gallery.json         the enrolled users' anchors, made with that model_id
    model/*.tflite       the model's assets (detector, face mesh), as model.json lists them
                         with their sha256; sorted by name (none in older bundles)

The manifest names every content file with its sha256 and size, so one signature covers all of
them. Its ``sequence`` (the writing time in microseconds unless given) orders bundles: a door
never installs one older than its current bundle, except through ``rollback``.

Version-1 bundles are canonical, and the reader is strict about layout as well as content:
headers must be plain ustar with a valid checksum, members must be contiguous, and block padding
and the end-of-archive blocks must be zeros. Every byte the door uses is signed: the manifest by
the signature, each member by its sha256 in the manifest. What the signature does not cover is
tar header metadata the door never reads (timestamps, modes, owner names): a header re-forged
with a valid checksum is accepted and changes nothing the door does; any other change (tampering
or storage corruption) is refused.

This module is shared by the host (which writes bundles, ``twinlock.trainer.household.signing``)
and the door (which reads them, :mod:`.reader`); it must never import TensorFlow or the trainer.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import BundleError, ModelError
from ..recognition.model import METADATA_FILE, TOWER_FILE, ModelMetadata

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
#: members whose bytes the reader keeps to check them against each other (JSON it must parse);
#: every other member (the tower, the assets) is only streamed through its hash
PARSED_MEMBERS: tuple[str, ...] = (METADATA_MEMBER, GALLERY_MEMBER)
#: an asset member: a plain *.tflite name in model/ (checked against model.json's assets)
_ASSET_MEMBER_RE = re.compile(r"model/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.tflite")

SIGNATURE_SIZE = 64
#: per-member cap: the Koch tower is ~39 MB int8; anything much bigger is not a bundle of ours
MAX_MEMBER_SIZE = 64 * 1024 * 1024
#: cap on the manifest, which is read before its signature is checked: five file entries and the
#: users' names fit in a few kB
MAX_MANIFEST_SIZE = 1024 * 1024
#: cap on the whole file, checked (on the open descriptor) before anything is read: one big
#: member (the tower) and room for the small ones
MAX_BUNDLE_SIZE = MAX_MEMBER_SIZE + 16 * 1024 * 1024
KEY_ID_LENGTH = 16
#: the largest bundle sequence (fits SQLite's and JSON readers' 64-bit integers)
MAX_SEQUENCE = 2**63 - 1

BLOCK = tarfile.BLOCKSIZE
RECORD = 20 * BLOCK  # the POSIX default blocking factor, which tarfile and GNU tar both write
MODEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CHKSUM_FIELD_RE = re.compile(rb"[0-7]{6}\x00 ")
#: header types that extend ustar (pax, GNU long names, sparse files): never in a bundle
EXTENSION_TYPES = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                             tarfile.GNUTYPE_SPARSE})


def is_asset_member(name: str) -> bool:
    return name not in CONTENT_MEMBERS and bool(_ASSET_MEMBER_RE.fullmatch(name))


def member_order(files: Sequence[str]) -> tuple[str, ...]:
    """The members a bundle listing ``files`` must have, in order: the fixed ones, then the
    model's assets sorted by name."""
    return (*MEMBER_ORDER, *sorted(n for n in files if is_asset_member(n)))


def canonical_json(data: dict[str, Any]) -> bytes:
    """The one byte string a manifest is signed as: sorted keys, no spaces, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def round_up(size: int) -> int:
    """``size`` rounded up to whole tar blocks."""
    return -(-size // BLOCK) * BLOCK


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# keys


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of sha256 of the raw 32-byte public key: short enough to read out."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_LENGTH]


def read_key_file(path: Path, kind: str) -> bytes:
    """A key file's bytes (at most 64 kB); BundleError says what is wrong with it."""
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


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key (SubjectPublicKeyInfo): the key a door trusts."""
    path = Path(path)
    data = read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError(f"{path}: not a PEM public key ({first_line(exc)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: a {type(key).__name__} public key; bundles are signed with "
                          "Ed25519")
    return key


# --------------------------------------------------------------------------------------------
# a verified bundle


@dataclass(frozen=True)
class VerifiedBundle:
    """What a bundle that passed every check says about itself (its contents are not held).

    ``digest`` is the sha256 of the signed manifest bytes, which names this exact bundle;
    ``file_sha256`` and ``size`` are those of the whole file as it was read.
    """

    manifest: dict[str, Any]
    key_id: str = ""
    digest: str = ""
    file_sha256: str = ""
    size: int = 0
    manifest_bytes: bytes = field(default=b"", repr=False)
    signature: bytes = field(default=b"", repr=False)

    @property
    def model_id(self) -> str:
        return str(self.manifest["model_id"])

    @property
    def users(self) -> list[str]:
        return list(self.manifest["users"])

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """Each content member's signed ``sha256`` and ``size``."""
        return {name: dict(entry) for name, entry in self.manifest["files"].items()}

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
            "sha256": self.file_sha256,
            "bytes": self.size,
            "files": self.files,
        }


def manifest_sequence(manifest: dict[str, Any]) -> int:
    """A checked manifest's order: ``sequence``, else ``created`` in microseconds."""
    if "sequence" in manifest:
        return int(manifest["sequence"])
    return int(datetime.fromisoformat(manifest["created"]).timestamp() * 1_000_000)


# --------------------------------------------------------------------------------------------
# the signed manifest


def check_signature(manifest_bytes: bytes, signature: bytes, public_key: Ed25519PublicKey,
                    source: str) -> dict[str, Any]:
    """The manifest, once its signature by ``public_key`` checks out and it is well formed."""
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
    manifest = parse_manifest(manifest_bytes, source)
    if manifest["key_id"] != trusted:
        raise BundleError(f"{source}: manifest names key {manifest['key_id']} but was signed by "
                          f"key {trusted}")
    return manifest


def _claimed_key_id(manifest_bytes: bytes) -> str | None:
    """The key id an unverified manifest claims, for a helpful message only (never trusted)."""
    try:
        value = json.loads(manifest_bytes.decode("utf-8")).get("key_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) <= 64 else None


def parse_manifest(manifest_bytes: bytes, source: str) -> dict[str, Any]:
    """A manifest's JSON, checked field by field; BundleError lists what is malformed."""
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
    if not isinstance(model_id, str) or not MODEL_ID_RE.fullmatch(model_id):
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
    if not isinstance(files, dict) or sorted(n for n in files if not is_asset_member(n)) \
            != sorted(CONTENT_MEMBERS):
        problems.append(f"files must list exactly {list(CONTENT_MEMBERS)} and the model's "
                        "assets (model/*.tflite)")
    else:
        # sizes over MAX_MEMBER_SIZE are refused at the member's header, with the cap named
        for name, entry in files.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                    and _SHA256_RE.fullmatch(entry["sha256"])
                    and type(entry.get("size")) is int and entry["size"] >= 0):
                problems.append(f"files[{name!r}] needs a hex sha256 and a size")
    if problems:
        raise BundleError(f"{source}: malformed manifest: " + "; ".join(problems))
    return manifest


def check_contents(manifest: dict[str, Any], metadata: bytes, gallery_bytes: bytes,
                   source: str) -> None:
    """The signed members agree with each other (a buggy or hand-made writer could still sign
    junk): model.json is the manifest's model and lists exactly the carried assets, and the
    gallery was enrolled with that model for the manifest's users."""
    model_id = manifest["model_id"]
    try:
        meta = ModelMetadata.from_json(json.loads(metadata.decode("utf-8")),
                                       f"{source}:{METADATA_MEMBER}")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise BundleError(f"{source}: {METADATA_MEMBER} is not valid model metadata "
                          f"({first_line(exc)})") from None
    except ModelError as exc:
        raise BundleError(str(exc)) from None
    if meta.model_id != model_id:
        raise BundleError(f"{source}: {METADATA_MEMBER} is model {meta.model_id!r}, the "
                          f"manifest says {model_id!r}")
    files = manifest["files"]
    listed = {f"model/{a.file}": a.sha256 for a in meta.assets.values()}
    carried = {n: files[n]["sha256"] for n in files if is_asset_member(n)}
    if listed != carried:
        raise BundleError(f"{source}: {METADATA_MEMBER} lists assets {sorted(listed)} but the "
                          f"bundle carries {sorted(carried)} (or their sha256 differ)")
    try:
        gallery = json.loads(gallery_bytes.decode("utf-8"))
        gallery_model = gallery["model_id"]
        gallery_users = [str(u["name"]) for u in gallery["users"]]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{source}: {GALLERY_MEMBER} is not a TwinLock gallery "
                          f"({first_line(exc)})") from None
    if gallery_model != model_id:
        raise BundleError(f"{source}: {GALLERY_MEMBER} was enrolled with model "
                          f"{gallery_model!r}, the bundle's model is {model_id!r}")
    if sorted(gallery_users) != sorted(manifest["users"]):
        raise BundleError(f"{source}: the manifest lists users {manifest['users']} but "
                          f"{GALLERY_MEMBER} holds {gallery_users}")


# --------------------------------------------------------------------------------------------
# members


def check_member_header(info: tarfile.TarInfo, header: bytes, source: str) -> None:
    """One member's header on its own: plain ustar, a safe name, a regular file under the cap."""
    name = info.name
    if info.type in EXTENSION_TYPES:
        raise BundleError(f"{source}: member {name!r} uses tar extensions or an unexpected "
                          "layout; bundles are plain ustar")
    check_member_name(name, source)
    if not info.isfile() or info.type != tarfile.REGTYPE:
        raise BundleError(f"{source}: member {name!r} is {_describe_type(info)}; only "
                          "regular files are allowed")
    if info.size > MAX_MEMBER_SIZE:
        raise BundleError(f"{source}: member {name!r} is {info.size} bytes, over the "
                          f"{MAX_MEMBER_SIZE} byte cap")
    # the few header bytes tarfile's checksum does not cover must be canonical too
    if header[257:263] != b"ustar\0" or header[263:265] != b"00":
        raise BundleError(f"{source}: member {name!r} does not have a POSIX ustar header")
    if not _CHKSUM_FIELD_RE.fullmatch(header[148:156]):
        raise BundleError(f"{source}: member {name!r} has a malformed header checksum field: "
                          "altered or corrupted")


def check_member_name(name: str, source: str) -> None:
    path = PurePosixPath(name)
    if not name or name.startswith("/") or path.is_absolute():
        raise BundleError(f"{source}: member {name!r} has an absolute name")
    if ".." in path.parts or "\\" in name or "\0" in name:
        raise BundleError(f"{source}: member {name!r} has an unsafe name (path traversal)")


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
