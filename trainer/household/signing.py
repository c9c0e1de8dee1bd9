"""Signing keys and writing signed bundles: the host's half of the bundle format.

A door only ever reads bundles (``twinlock.daemon.bundle``); the private key and the code that
signs with it live here, on the host. The format, its caps and every check are the door's own
(``twinlock.daemon.bundle.format`` and ``.reader``): a bundle is verified with them before it is
written, so the host never hands out one a door would refuse.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from twinlock.daemon.bundle import format as fmt
from twinlock.daemon.bundle.reader import verify_stream
from twinlock.daemon.errors import BundleError
from twinlock.daemon.recognition.gallery import load_gallery
from twinlock.daemon.recognition.model import METADATA_FILE, TOWER_FILE, read_metadata
from twinlock.daemon.storage.files import atomic_write, fsync_dir, temp_name

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# keys


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
    kid = fmt.key_id(key)
    logger.info("generated signing key %s (%s, %s)", kid, private_path, public_path)
    return kid


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key (unencrypted PKCS8), refusing anything else clearly."""
    path = Path(path)
    data = fmt.read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise BundleError(f"{path}: private key is password-protected; TwinLock expects an "
                          "unencrypted key kept with mode 0600") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError(f"{path}: not a PEM private key ({fmt.first_line(exc)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: a {type(key).__name__} private key; bundles are signed with "
                          "Ed25519 (make one with 'twinlock keygen')")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("private key %s has mode %s: anyone who can read it can sign bundles "
                       "(chmod 600)", path, oct(mode))
    return key


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Atomic and exclusive: a complete file appears under ``path`` or nothing does, and an
    existing file (even one created meanwhile) is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise BundleError(f"{path}: already exists; refusing to overwrite a key") from None
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------
# writing bundles


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
    if not meta.model_id or not fmt.MODEL_ID_RE.fullmatch(meta.model_id):
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
        fmt.TOWER_MEMBER: _read_member_source(model_dir / TOWER_FILE),
        fmt.METADATA_MEMBER: _read_member_source(model_dir / METADATA_FILE),
        fmt.GALLERY_MEMBER: _read_member_source(gallery_path),
    }
    for asset in sorted(meta.assets.values(), key=lambda a: a.file):
        contents[f"model/{asset.file}"] = _read_member_source(model_dir / asset.file)
    stamp = datetime.now(UTC)
    now = stamp.replace(microsecond=0)
    if sequence is None:
        sequence = int(stamp.timestamp() * 1_000_000)
    if type(sequence) is not int or not 0 <= sequence <= fmt.MAX_SEQUENCE:
        raise BundleError(f"bundle sequence must be an integer 0..{fmt.MAX_SEQUENCE}, not "
                          f"{sequence!r}")
    manifest: dict[str, Any] = {
        "format": fmt.BUNDLE_FORMAT,
        "format_version": fmt.BUNDLE_FORMAT_VERSION,
        "created": now.isoformat(),
        "sequence": sequence,
        "model_id": meta.model_id,
        "users": list(gallery.users),
        "key_id": fmt.key_id(key),
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                  for name, data in contents.items()},
    }
    manifest_bytes = fmt.canonical_json(manifest)
    signature = key.sign(manifest_bytes)
    members = [(fmt.MANIFEST_NAME, manifest_bytes), (fmt.SIGNATURE_NAME, signature),
               *contents.items()]
    data = _build_tar(members, int(now.timestamp()))
    # Self-check with the door's reader and the matching public key: never hand out a bundle a
    # door would refuse.
    verify_stream(io.BytesIO(data), len(data), key.public_key(), str(out_path))
    atomic_write(out_path, data, 0o600)
    logger.info("wrote bundle %s: model %s, %d user(s), key %s, %d bytes", out_path,
                meta.model_id, len(manifest["users"]), manifest["key_id"], len(data))
    return manifest


def _read_member_source(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > fmt.MAX_MEMBER_SIZE:
            raise BundleError(f"{path}: {size} bytes, over the {fmt.MAX_MEMBER_SIZE} byte cap "
                              "for a bundle member")
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (cannot bundle it)") from None
    except OSError as exc:
        raise BundleError(f"{path}: unreadable ({exc.strerror or exc})") from None


def _build_tar(members: list[tuple[str, bytes]], mtime: int) -> bytes:
    """Plain ustar (no pax/GNU extensions): the layout the door's reader insists on."""
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
