"""The door's bundle store: verify, unpack, install (never backwards), roll back.

``state_dir/bundles`` holds ``current.twinlock`` and the one it replaced, ``previous.twinlock``.
Every path here reads through :func:`.reader.read_bundle`, so what is installed or unpacked is
exactly the stream that was verified, copied as it was read. Each step is an atomic replace of
a fsynced file, so after a power cut ``current`` is always one complete, good bundle. Installs
and rollbacks hold an exclusive lock on ``bundles/.lock`` from reading ``current`` to replacing
it, so two at once (``twinlockd install-bundle`` beside the daemon's pick-up, or two by hand)
run one after the other and the second judges the sequence against what the first installed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import BundleError, ModelError, TwinLockError
from ..faces.assets import file_sha256
from ..recognition.gallery import load_gallery
from ..recognition.model import FaceEmbedder
from ..storage.files import atomic_writer, fsync_dir
from ..storage.private_db import make_private_dirs
from . import format as fmt
from .reader import open_regular, read_bundle

logger = logging.getLogger(__name__)

CURRENT_NAME = "current" + fmt.BUNDLE_SUFFIX
PREVIOUS_NAME = "previous" + fmt.BUNDLE_SUFFIX
#: the lock file in ``bundles/`` that installs and rollbacks hold while they change it
LOCK_NAME = ".lock"


def verify_bundle(path: str | Path, public_key_path: str | Path) -> fmt.VerifiedBundle:
    """Check a bundle completely against a trusted public key, writing nothing.

    Raises BundleError naming the first check that failed: not a tar, truncated, unsigned,
    signed by another key, altered manifest, altered/missing/extra/duplicate member, unsafe
    name, link or device member, oversized member, or non-canonical layout.
    """
    return read_bundle(Path(path), fmt.load_public_key(public_key_path))


def bundles_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "bundles"


def current_bundle(state_dir: str | Path) -> Path:
    """The installed bundle's path; BundleError when none is installed yet."""
    path = bundles_dir(state_dir) / CURRENT_NAME
    if not path.is_file():
        raise BundleError(f"{path}: no bundle installed yet (install one, e.g. with "
                          "'twinlock deploy')")
    return path


# --------------------------------------------------------------------------------------------
# unpacking


def unpack_bundle(path: str | Path, public_key_path: str | Path,
                  dest_dir: str | Path) -> tuple[fmt.VerifiedBundle, Path]:
    """Verify a bundle and give its files in ``dest_dir/<model_id>-<digest[:12]>/``.

    A folder already there whose files have the signed hashes is reused (nothing is written);
    otherwise the bundle is read again, extracted as it is verified into a hidden folder that
    is fsynced and renamed over a damaged one, so a reader sees a complete folder or none.
    Folders are 0700 and files 0600: the gallery holds biometric anchors.
    """
    path, dest_dir = Path(path), Path(dest_dir)
    public_key = fmt.load_public_key(public_key_path)
    verified = read_bundle(path, public_key)
    make_private_dirs(dest_dir, BundleError)
    target = dest_dir / verified.bundle_id
    if target.is_dir() and not target.is_symlink() and _folder_matches(target, verified):
        logger.info("bundle %s already unpacked in %s", verified.bundle_id, target)
        return verified, target
    try:
        with _private_temp_dir(dest_dir, ".unpack-") as staging:
            extracted = read_bundle(path, public_key, extract_to=staging, durable=True)
            if extracted.file_sha256 != verified.file_sha256:
                raise BundleError(f"{path}: changed while it was being unpacked; refusing it")
            for folder in {staging.joinpath(*PurePosixPath(n).parent.parts)
                           for n in verified.files}:
                fsync_dir(folder)
            fsync_dir(staging)
            if target.exists() or target.is_symlink():
                with _private_temp_dir(dest_dir, ".stale-") as stale:
                    os.replace(target, stale / "old")
                    logger.warning("replacing damaged unpacked bundle %s", target)
                    os.replace(staging, target)
            else:
                os.replace(staging, target)
            fsync_dir(dest_dir)
    except OSError as exc:
        raise BundleError(f"{dest_dir}: cannot unpack bundle {verified.bundle_id} "
                          f"({exc.strerror or exc})") from None
    logger.info("unpacked bundle %s into %s", verified.bundle_id, target)
    return verified, target


def _folder_matches(folder: Path, verified: fmt.VerifiedBundle) -> bool:
    try:
        for name, entry in verified.files.items():
            path = folder.joinpath(*PurePosixPath(name).parts)
            if path.is_symlink() or not path.is_file() or path.stat().st_size != entry["size"] \
                    or file_sha256(path) != entry["sha256"]:
                return False
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _private_temp_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A 0700 folder under ``parent``, removed with whatever is left in it."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        os.chmod(folder, 0o700)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# checking that a signed bundle can run


def check_runs(root: Path, source: str, runtimes: Sequence[str] | None = None) -> None:
    """Load an unpacked bundle's model and gallery as the door will and run one test embedding.

    A signed bundle can still be unusable (anchors of another width than the model's, a tower
    the runtime cannot load): it must be refused before it becomes ``current``, or the next
    start finds no model. BundleError says what failed.
    """
    try:
        chain = tuple(runtimes) if runtimes else ()
        embedder = (FaceEmbedder(root / "model", 1, chain) if chain
                    else FaceEmbedder(root / "model"))
        meta = embedder.meta
        gallery = load_gallery(root / fmt.GALLERY_MEMBER)
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


# --------------------------------------------------------------------------------------------
# installing and rolling back


def install_bundle(bundle_path: str | Path, public_key_path: str | Path,
                   state_dir: str | Path, runtimes: Sequence[str] | None = None) -> Path:
    """Verify a bundle and make it ``current``, keeping the one it replaces as ``previous``.

    A bundle that fails verification changes nothing, and so does one whose signed sequence is
    lower than the current bundle's (only :func:`rollback` goes back), and one whose model and
    gallery do not load and run together (:func:`check_runs`, with LiteRT ``runtimes``). One
    read of the file verifies it, copies it (the copy becomes ``current``) and unpacks it for
    the check, so the bytes installed are the bytes verified. All of it holds the bundles lock
    (:func:`bundles_lock`): of two installs at once, the second compares its sequence with the
    first's bundle, so the older of two newer bundles can never end up current.
    """
    public_key = fmt.load_public_key(public_key_path)
    folder = bundles_dir(state_dir)
    make_private_dirs(folder, BundleError)  # state_dir too, if this makes it: 0700
    try:
        with bundles_lock(folder):
            return _install_locked(Path(bundle_path), public_key, folder, runtimes)
    finally:
        _keep_owner(folder)


def _install_locked(bundle_path: Path, public_key: Ed25519PublicKey, folder: Path,
                    runtimes: Sequence[str] | None) -> Path:
    """:func:`install_bundle`'s work, with the bundles folder locked: what ``current`` is
    (and so which sequence the new bundle must pass) cannot change until it is replaced."""
    current, previous = folder / CURRENT_NAME, folder / PREVIOUS_NAME
    had_current = current.is_file()
    try:
        with _private_temp_dir(folder, ".install-") as work, \
                atomic_writer(current, 0o600) as copy:
            files = work / "files"
            files.mkdir(mode=0o700)
            verified = read_bundle(bundle_path, public_key, copy_to=copy, extract_to=files)
            installed = _installed(current, public_key)
            if installed is not None and installed.file_sha256 == verified.file_sha256:
                raise _AlreadyCurrent
            if installed is not None:
                _refuse_older(verified, installed, str(bundle_path))
            check_runs(files, verified.bundle_id, runtimes)
            if had_current:
                _copy_file(current, previous)
    except _AlreadyCurrent:
        logger.info("bundle %s is already current", verified.bundle_id)
        return current
    except OSError as exc:
        raise BundleError(f"{folder}: cannot install bundle ({exc.strerror or exc})") from None
    logger.info("installed bundle %s (model %s, %d user(s), key %s)%s", verified.bundle_id,
                verified.model_id, len(verified.users), verified.key_id,
                "; kept the one before as previous" if had_current else "")
    return current


@contextlib.contextmanager
def bundles_lock(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of the bundles folder (``flock`` on ``folder/.lock``, waiting for
    another holder). The kernel drops it when its holder exits, even killed: no stale lock."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        raise BundleError(f"{folder}: cannot open its lock file {LOCK_NAME} "
                          f"({exc.strerror or exc})") from None
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                break
            except OSError as exc:  # EINTR: a signal while waiting; wait again
                if exc.errno != errno.EINTR:
                    raise BundleError(f"{folder}: cannot lock it ({exc.strerror or exc})") from None
        yield
    finally:
        os.close(fd)  # releases the lock


class _AlreadyCurrent(Exception):
    """The bundle being installed is the current one: leave everything as it is."""


def _installed(current: Path, public_key: Ed25519PublicKey) -> fmt.VerifiedBundle | None:
    """The current bundle, verified; None when there is none or it is damaged (then it orders
    nothing and is replaced)."""
    if not current.is_file():
        return None
    try:
        return read_bundle(current, public_key)
    except BundleError as exc:
        logger.warning("the installed bundle does not verify (%s): replacing it", exc)
        return None


def _refuse_older(new: fmt.VerifiedBundle, installed: fmt.VerifiedBundle, source: str) -> None:
    """BundleError unless ``new`` comes after the installed bundle. Going back is what
    ``twinlockd rollback`` is for; a replayed old bundle would undo what changed since (a
    resident removed, a key rotated)."""
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
    public_key = fmt.load_public_key(public_key_path)
    try:
        with bundles_lock(folder), _private_temp_dir(folder, ".rollback-") as work:
            newer = work / "newer"
            if current.is_file():
                _copy_file(current, newer)
            with atomic_writer(current, 0o600) as copy:
                verified = read_bundle(previous, public_key, copy_to=copy)
            if newer.exists():
                os.replace(newer, previous)
                fsync_dir(folder)
    except OSError as exc:
        raise BundleError(f"{folder}: cannot roll back ({exc.strerror or exc})") from None
    finally:
        _keep_owner(folder)
    logger.info("rolled back to bundle %s (model %s)", verified.bundle_id, verified.model_id)
    return current


def _keep_owner(folder: Path) -> None:
    """Run as root (``sudo twinlockd rollback`` / ``install-bundle`` on the door), give the files
    this wrote back to the bundles folder's owner, the service user: a root-owned 0600
    ``current`` would shut the daemon out of its own bundle (its reload refused, its next start
    without a model). Does nothing for anyone else (the daemon itself)."""
    if os.geteuid() != 0:
        return
    try:
        owner = folder.stat()
        for name in (CURRENT_NAME, PREVIOUS_NAME, LOCK_NAME):
            path = folder / name
            with contextlib.suppress(FileNotFoundError):
                st = path.lstat()
                if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                    os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
    except OSError as exc:
        raise BundleError(f"{folder}: cannot give the bundles back to their owner "
                          f"({exc.strerror or exc})") from None


# --------------------------------------------------------------------------------------------
# files


def _copy_file(source: Path, dest: Path) -> None:
    """Replace ``dest`` atomically with a fsynced 0600 copy of ``source`` (a regular file,
    never a link), streamed."""
    fd, _ = open_regular(source)
    with os.fdopen(fd, "rb") as reader, atomic_writer(dest, 0o600) as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
