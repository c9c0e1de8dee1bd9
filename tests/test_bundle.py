"""Signed bundles: real Ed25519 keys, real files, the small real model in models/default.

Every refusal is checked through the public functions and must be a BundleError with a specific
message (a raw tarfile/json/cryptography traceback fails the test). No TensorFlow is needed: the
model folder is a copy of models/default and the gallery holds random anchors.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from twinlock.daemon.bundle import format as fmt
from twinlock.daemon.bundle import store
from twinlock.daemon.bundle.reader import read_bundle
from twinlock.daemon.errors import BundleError, TwinLockError
from twinlock.daemon.faces.assets import file_sha256
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import read_metadata
from twinlock.trainer.household import signing
from twinlock.trainer.household.bundles import keygen, make_bundle

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default"
FIXED = ("model/tower.tflite", "model/model.json", "gallery.json")
#: the shipped model's assets (detector, face mesh): bundle members after the fixed ones, sorted
ASSETS = tuple(sorted(f"model/{a['file']}" for a in json.loads(
    (DEFAULT_MODEL / "model.json").read_text()).get("assets", {}).values()))
CONTENT = (*FIXED, *ASSETS)


# ------------------------------------------------------------------------------------------
# fixtures and helpers


class Door:
    """One host set-up: a model folder, a gallery for it, a signing key, a written bundle."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model_dir = root / "model"
        self.model_dir.mkdir(parents=True)
        # the tower, model.json and the assets it lists (detector, face mesh)
        for name in ("tower.tflite", "model.json", *(a["file"] for a in json.loads(
                (DEFAULT_MODEL / "model.json").read_text()).get("assets", {}).values())):
            shutil.copyfile(DEFAULT_MODEL / name, self.model_dir / name)
        self.meta = read_metadata(self.model_dir)
        self.gallery_path = root / "gallery.json"
        make_gallery(self.meta.model_id, self.meta.embedding_dim, ["alice", "bob"]).save(
            self.gallery_path)
        self.key, self.pub = root / "signer.key", root / "signer.pub"
        self.key_id = signing.generate_keypair(self.key, self.pub)
        self.bundle = root / "door.twinlock"
        self.manifest = signing.write_bundle(self.model_dir, self.gallery_path, self.key, self.bundle)
        self.data = self.bundle.read_bytes()

    def source_bytes(self) -> dict[str, bytes]:
        return {"model/tower.tflite": (self.model_dir / "tower.tflite").read_bytes(),
                "model/model.json": (self.model_dir / "model.json").read_bytes(),
                "gallery.json": self.gallery_path.read_bytes(),
                **{name: (self.model_dir / name.removeprefix("model/")).read_bytes()
                   for name in ASSETS}}


def make_gallery(model_id: str, dim: int, names: list[str], seed: int = 0) -> Gallery:
    rng = np.random.default_rng(seed)
    gallery = Gallery(model_id)
    for name in names:
        gallery.add(name, rng.normal(size=(3, dim)).astype(np.float32))
    return gallery


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Door:
    """Shared by read-only tests; tests that change files copy what they change."""
    return Door(tmp_path_factory.mktemp("door"))


def tar_members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        out = []
        for info in archive.getmembers():
            content = archive.extractfile(info).read() if info.isfile() else b""
            out.append((info, content))
        return out


def make_tar(entries: list[tuple[str, bytes] | tarfile.TarInfo]) -> bytes:
    """An independent ustar writer for hand-made (often hostile) archives."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                archive.addfile(entry)
            else:
                name, content = entry
                info = tarfile.TarInfo(name)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def members_dict(data: bytes) -> dict[str, bytes]:
    return {info.name: content for info, content in tar_members(data)}


def signed_bundle(files: dict[str, bytes], key: Ed25519PrivateKey, *, order: list[str] | None = None,
                  **overrides: Any) -> bytes:
    """Build a bundle from the documented format alone (not via write_bundle) and sign it."""
    manifest: dict[str, Any] = {
        "format": "twinlock-bundle", "format_version": 1, "created": "2025-01-01T00:00:00+00:00",
        "model_id": json.loads(files["model/model.json"])["model_id"],
        "users": [u["name"] for u in json.loads(files["gallery.json"])["users"]],
        "key_id": hashlib.sha256(key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()[:16],
        "files": {name: {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
                  for name, content in files.items()},
    }
    manifest.update(overrides)
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    entries = {"manifest.json": raw, "manifest.sig": key.sign(raw), **files}
    names = order or ["manifest.json", "manifest.sig", *FIXED,
                      *sorted(n for n in files if n not in FIXED)]
    return make_tar([(name, entries[name]) for name in names])


def refuse(path: Path, pub: Path, match: str) -> BundleError:
    with pytest.raises(BundleError, match=match) as info:
        store.verify_bundle(path, pub)
    return info.value


def write(tmp_path: Path, data: bytes, name: str = "x.twinlock") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load_signer(door: Door) -> Ed25519PrivateKey:
    return signing.load_private_key(door.key)


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its member name (``model/tower.tflite``)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file()}


def unpacked(path: Path, pub: Path, where: Path) -> dict[str, bytes]:
    """What a door unpacks from the bundle at ``path``: its files by member name."""
    return files_in(store.unpack_bundle(path, pub, where)[1])


# ------------------------------------------------------------------------------------------
# round trip and format


def test_round_trip_write_verify_unpack(door: Door, tmp_path: Path) -> None:
    verified = store.verify_bundle(door.bundle, door.pub)
    sources = door.source_bytes()
    assert verified.files == {name: {"sha256": hashlib.sha256(content).hexdigest(),
                                     "size": len(content)} for name, content in sources.items()}
    assert (verified.file_sha256, verified.size) == (hashlib.sha256(door.data).hexdigest(),
                                                     len(door.data))
    assert verified.manifest == door.manifest
    assert verified.model_id == door.meta.model_id
    assert verified.users == ["alice", "bob"]
    assert verified.key_id == door.key_id == fmt.key_id(fmt.load_public_key(door.pub))

    again, folder = store.unpack_bundle(door.bundle, door.pub, tmp_path / "models")
    assert again == verified
    assert folder == tmp_path / "models" / f"{door.meta.model_id}-{verified.digest[:12]}"
    for name, content in sources.items():
        assert (folder / name).read_bytes() == content
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "model").stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "gallery.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [folder.name]  # no temp
    # the unpacked folder is a model folder the daemon can read
    assert read_metadata(folder / "model").model_id == door.meta.model_id
    # unpacking the same bundle again is idempotent; a damaged copy is replaced
    assert files_in(folder) == sources
    assert store.unpack_bundle(door.bundle, door.pub, tmp_path / "models")[1] == folder
    (folder / "gallery.json").write_bytes(b"{}")
    assert store.unpack_bundle(door.bundle, door.pub, tmp_path / "models")[1] == folder
    assert (folder / "gallery.json").read_bytes() == sources["gallery.json"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [folder.name]


def test_format_is_documented_ustar_with_canonical_signed_manifest(door: Door) -> None:
    members = tar_members(door.data)
    assert [info.name for info, _ in members] == ["manifest.json", "manifest.sig", *CONTENT]
    assert all(info.type == tarfile.REGTYPE for info, _ in members)
    assert door.data[257:263] == b"ustar\0"  # plain POSIX ustar, uncompressed
    raw, sig = members[0][1], members[1][1]
    manifest = json.loads(raw)
    assert raw == json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert len(sig) == 64
    fmt.load_public_key(door.pub).verify(sig, raw)  # raises if not a signature of exactly raw
    assert manifest["format"] == "twinlock-bundle" and manifest["format_version"] == 1
    assert manifest["created"].endswith("+00:00")
    assert manifest["model_id"] == door.meta.model_id and manifest["users"] == ["alice", "bob"]
    for name, content in door.source_bytes().items():
        assert manifest["files"][name] == {"sha256": hashlib.sha256(content).hexdigest(),
                                           "size": len(content)}
    assert manifest["files"]["model/tower.tflite"]["sha256"] == file_sha256(
        door.model_dir / "tower.tflite")
    assert stat.S_IMODE(door.bundle.stat().st_mode) == 0o600  # carries biometric anchors


def test_independently_built_bundle_verifies(door: Door, tmp_path: Path) -> None:
    """The format as documented, built without write_bundle, is accepted: the spec is enough."""
    data = signed_bundle(door.source_bytes(), load_signer(door))
    assert unpacked(write(tmp_path, data), door.pub, tmp_path / "active") == door.source_bytes()


# ------------------------------------------------------------------------------------------
# one flipped byte anywhere


def regions(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, kind) for every byte of the bundle; kinds starting 'padding' carry no content."""
    out = []
    end = 0
    for info, _ in tar_members(data):
        label = info.name
        out.append((info.offset, info.offset + 148, f"header {label}"))
        out.append((info.offset + 148, info.offset + 155, f"header {label}"))  # chksum digits+NUL
        out.append((info.offset + 155, info.offset + 156, "padding header-checksum-slack"))
        out.append((info.offset + 156, info.offset_data, f"header {label}"))
        stop = info.offset_data + info.size
        out.append((info.offset_data, stop, f"data {label}"))
        end = info.offset_data + -(-info.size // 512) * 512
        if end > stop:
            out.append((stop, end, "padding block"))
    out.append((end, len(data), "padding end-of-archive"))
    assert sum(e - s for s, e, _ in out) == len(data)
    return out


def kind_at(spans: list[tuple[int, int, str]], pos: int) -> str:
    return next(kind for start, stop, kind in spans if start <= pos < stop)


def test_flipping_any_byte_is_refused_or_changes_nothing(door: Door, tmp_path: Path) -> None:
    data = door.data
    spans = regions(data)
    positions = {int(p) for p in np.linspace(0, len(data) - 1, 300)}
    for start, stop, _ in spans:  # make sure every region is hit, at its edges and middle
        positions |= {start, (start + stop) // 2, stop - 1}
    for info, _ in tar_members(data):  # name, mode, size, mtime, chksum, type, magic, uname
        positions |= {info.offset + k for k in (0, 100, 124, 136, 148, 154, 155, 156, 257, 265)}
    original = store.verify_bundle(door.bundle, door.pub)
    path = tmp_path / "flipped.twinlock"
    stats: Counter[tuple[str, str]] = Counter()
    messages: Counter[str] = Counter()
    for pos in sorted(positions):
        kind = kind_at(spans, pos)
        for mask in (0x01, 0xFF):
            mutated = bytearray(data)
            mutated[pos] ^= mask
            path.write_bytes(bytes(mutated))
            try:
                verified = store.verify_bundle(path, door.pub)
            except BundleError as exc:
                stats[(kind.split()[0], "refused")] += 1
                messages[str(exc).split(": ", 1)[1].split(" (")[0][:60]] += 1
                continue
            # accepted: only tolerable where the byte carries no content, and then the content
            # handed to the door must be exactly the signed one
            assert kind.startswith("padding"), f"byte {pos} ({kind}) ^{mask:#x} was accepted"
            extracted = tmp_path / f"extracted-{pos}-{mask}"
            extracted.mkdir()
            read_bundle(path, fmt.load_public_key(door.pub), extract_to=extracted)
            assert files_in(extracted) == door.source_bytes()
            assert verified.manifest == original.manifest
            shutil.rmtree(extracted)
            stats[(kind.split()[0], "accepted")] += 1
    kinds = {kind_at(spans, p) for p in positions}
    assert {"data manifest.json", "data manifest.sig", "padding block", "padding end-of-archive",
            "padding header-checksum-slack"} <= kinds
    assert all(f"data {name}" in kinds and f"header {name}" in kinds for name in CONTENT)
    padding_positions = sum(1 for p in positions if kind_at(spans, p).startswith("padding"))
    print(f"\nbundle {len(data)} bytes; {len(positions)} positions x 2 masks; "
          f"{padding_positions} positions in padding; outcomes {dict(stats)}")
    print("refusal reasons:", dict(messages.most_common()))
    assert sum(stats.values()) == 2 * len(positions)


# ------------------------------------------------------------------------------------------
# structural tampering


@pytest.mark.parametrize("dropped, match", [
    ("manifest.json", "no manifest.json"),
    ("manifest.sig", "no manifest.sig: the bundle is unsigned"),
    ("model/tower.tflite", "'model/tower.tflite' listed in the manifest is missing"),
    ("model/model.json", "'model/model.json' listed in the manifest is missing"),
    ("gallery.json", "'gallery.json' listed in the manifest is missing"),
])
def test_dropped_member_is_refused(door: Door, tmp_path: Path, dropped: str, match: str) -> None:
    entries = [(n, c) for n, c in members_dict(door.data).items() if n != dropped]
    refuse(write(tmp_path, make_tar(entries)), door.pub, match)


@pytest.mark.parametrize("where", [2, 5])
def test_extra_member_is_refused(door: Door, tmp_path: Path, where: int) -> None:
    entries: list[Any] = list(members_dict(door.data).items())
    entries.insert(where, ("notes.txt", b"hello"))
    refuse(write(tmp_path, make_tar(entries)), door.pub, "extra member 'notes.txt' not listed")


def test_member_replaced_by_another_valid_file_is_refused(door: Door, tmp_path: Path) -> None:
    other = make_gallery(door.meta.model_id, door.meta.embedding_dim, ["alice", "bob"], seed=7)
    other.add("mallory", np.ones((1, door.meta.embedding_dim)))
    other.save(tmp_path / "other.json")
    members = members_dict(door.data)
    members["gallery.json"] = (tmp_path / "other.json").read_bytes()
    refuse(write(tmp_path, make_tar(list(members.items()))), door.pub,
           "gallery.json is .* bytes, the manifest says|gallery.json does not match its sha256")
    # same size, different bytes: only the hash can tell
    members = members_dict(door.data)
    meta = json.loads(members["model/model.json"])
    text = members["model/model.json"].decode()
    changed = text.replace(json.dumps(meta["head"]["bias"]), json.dumps(meta["head"]["bias"])[:-1]
                           + ("1" if json.dumps(meta["head"]["bias"])[-1] != "1" else "2"), 1)
    assert len(changed) == len(text) and changed != text
    members["model/model.json"] = changed.encode()
    refuse(write(tmp_path, make_tar(list(members.items()))), door.pub,
           "model/model.json does not match its sha256 in the manifest")


def test_duplicate_member_is_refused(door: Door, tmp_path: Path) -> None:
    entries: list[Any] = list(members_dict(door.data).items())
    entries.append(("gallery.json", entries[-1][1]))
    refuse(write(tmp_path, make_tar(entries)), door.pub, "duplicate member 'gallery.json'")


def test_reordered_members_are_refused(door: Door, tmp_path: Path) -> None:
    data = signed_bundle(door.source_bytes(), load_signer(door),
                         order=["manifest.json", "manifest.sig", "gallery.json",
                                "model/tower.tflite", "model/model.json", *ASSETS])
    refuse(write(tmp_path, data), door.pub, "members out of order")
    if len(ASSETS) > 1:  # assets follow the fixed members sorted by name
        data = signed_bundle(door.source_bytes(), load_signer(door),
                             order=["manifest.json", "manifest.sig", *FIXED, *ASSETS[::-1]])
        refuse(write(tmp_path, data), door.pub, "members out of order")


@pytest.mark.parametrize("kind, match", [
    (tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"),
    (tarfile.CHRTYPE, "a device"), (tarfile.BLKTYPE, "a device"), (tarfile.FIFOTYPE, "FIFO"),
    (tarfile.DIRTYPE, "a folder"),
])
def test_link_and_device_members_are_refused(door: Door, tmp_path: Path, kind: bytes,
                                             match: str) -> None:
    entries: list[Any] = []
    for name, content in members_dict(door.data).items():
        if name == "model/tower.tflite":
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/shadow" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            entries.append(info)
        else:
            entries.append((name, content))
    error = refuse(write(tmp_path, make_tar(entries)), door.pub, match)
    assert "only regular files are allowed" in str(error)


@pytest.mark.parametrize("name, match", [
    ("../gallery.json", "unsafe name"), ("model/../../etc/cron.d/x", "unsafe name"),
    ("/etc/passwd", "absolute name"),
])
def test_unsafe_member_names_are_refused(door: Door, tmp_path: Path, name: str,
                                         match: str) -> None:
    entries: list[Any] = list(members_dict(door.data).items())
    entries.append((name, b"owned"))
    refuse(write(tmp_path, make_tar(entries)), door.pub, match)
    entries[-1] = (name, entries[4][1])  # also when it replaces a real member
    del entries[4]
    refuse(write(tmp_path, make_tar(entries)), door.pub, match)


def test_oversized_member_is_refused(door: Door, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    size = (door.model_dir / "tower.tflite").stat().st_size
    assert size > 100_000
    monkeypatch.setattr(fmt, "MAX_MEMBER_SIZE", 100_000)  # below the shipped tower's size
    refuse(door.bundle, door.pub, f"'model/tower.tflite' is {size} bytes, over the 100000 byte cap")
    with pytest.raises(BundleError, match="over the 100000 byte cap"):
        signing.write_bundle(door.model_dir, door.gallery_path, door.key, tmp_path / "big.twinlock")
    monkeypatch.setattr(fmt, "MAX_BUNDLE_SIZE", 1000)
    refuse(door.bundle, door.pub, "larger than any bundle can be")


def test_data_appended_after_the_archive_is_refused(door: Door, tmp_path: Path) -> None:
    extra = make_tar([("gallery.json", b"{}")])
    refuse(write(tmp_path, door.data + extra), door.pub, "data after the end of the archive")
    refuse(write(tmp_path, door.data + bytes(512)), door.pub, "data after the end of the archive")


# ------------------------------------------------------------------------------------------
# signatures


def test_bundle_signed_with_another_key_names_both_keys(door: Door, tmp_path: Path) -> None:
    other_key, other_pub = tmp_path / "other.key", tmp_path / "other.pub"
    other_id = signing.generate_keypair(other_key, other_pub)
    path = tmp_path / "other.twinlock"
    signing.write_bundle(door.model_dir, door.gallery_path, other_key, path)
    error = refuse(path, door.pub, f"signed by key {other_id}, but this door trusts key "
                                   f"{door.key_id}")
    assert other_id != door.key_id and "Traceback" not in str(error)
    assert store.verify_bundle(path, other_pub).key_id == other_id


def test_forged_key_id_and_altered_manifest_are_refused(door: Door, tmp_path: Path) -> None:
    # another key signs a manifest that claims the door's key id
    forged = signed_bundle(door.source_bytes(), Ed25519PrivateKey.generate(), key_id=door.key_id)
    refuse(write(tmp_path, forged), door.pub, "invalid signature for trusted key .*altered")
    # the genuine signature over a manifest with one more user
    members = members_dict(door.data)
    manifest = json.loads(members["manifest.json"])
    manifest["users"].append("mallory")
    members["manifest.json"] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    refuse(write(tmp_path, make_tar(list(members.items()))), door.pub,
           "invalid signature for trusted key")


@pytest.mark.parametrize("signature, match", [
    (b"", "manifest.sig is empty: the bundle is unsigned"),
    (bytes(64), "invalid signature"),
    (b"\x01" * 63, "manifest.sig is 63 bytes; an Ed25519 signature is 64"),
])
def test_empty_or_malformed_signature_is_refused(door: Door, tmp_path: Path, signature: bytes,
                                                 match: str) -> None:
    members = members_dict(door.data)
    members["manifest.sig"] = signature
    refuse(write(tmp_path, make_tar(list(members.items()))), door.pub, match)


def test_signed_but_inconsistent_contents_are_refused(door: Door, tmp_path: Path) -> None:
    """Defence in depth: a valid signature over a bad bundle (buggy or hand-made writer)."""
    key = load_signer(door)
    files = door.source_bytes()
    foreign = make_gallery("another-model", door.meta.embedding_dim, ["alice", "bob"])
    foreign.save(tmp_path / "foreign.json")
    files["gallery.json"] = (tmp_path / "foreign.json").read_bytes()
    refuse(write(tmp_path, signed_bundle(files, key)), door.pub,
           "gallery.json was enrolled with model 'another-model'")
    refuse(write(tmp_path, signed_bundle(door.source_bytes(), key, users=["alice", "eve"])),
           door.pub, "manifest lists users")
    refuse(write(tmp_path, signed_bundle(door.source_bytes(), key, format_version=2)),
           door.pub, "unsupported bundle format version 2")
    refuse(write(tmp_path, signed_bundle(door.source_bytes(), key, model_id="../../etc")),
           door.pub, "malformed manifest: model_id")


# ------------------------------------------------------------------------------------------
# not a bundle at all


@pytest.mark.parametrize("cut", [1, 511, 512, 1000, 2048 + 512 + 300_000, -1024 - 600, -1024, -512,
                                 -1])
def test_truncated_bundle_is_refused(door: Door, tmp_path: Path, cut: int) -> None:
    data = door.data[:cut]
    assert 0 < len(data) < len(door.data)
    refuse(write(tmp_path, data), door.pub, "truncated|not an uncompressed tar|no manifest.sig|"
                                            "listed in the manifest is missing")


def test_empty_non_tar_and_compressed_files_are_refused(door: Door, tmp_path: Path) -> None:
    refuse(write(tmp_path, b""), door.pub, "empty file \\(0 bytes\\)")
    refuse(write(tmp_path, b"hello, this is not a tar\n" * 100), door.pub,
           "not an uncompressed tar archive")
    refuse(write(tmp_path, gzip.compress(door.data)), door.pub, "not an uncompressed tar archive")
    refuse(write(tmp_path, bytes(4096)), door.pub, "not an uncompressed tar archive|empty tar")
    refuse(write(tmp_path, make_tar([])), door.pub, "not an uncompressed tar archive|empty tar")
    refuse(tmp_path / "missing.twinlock", door.pub, "bundle not found")
    refuse(tmp_path, door.pub, "is a folder")


# ------------------------------------------------------------------------------------------
# writing


def test_gallery_of_another_model_is_refused_at_write_time(door: Door, tmp_path: Path) -> None:
    make_gallery("some-other-model", door.meta.embedding_dim, ["alice"]).save(tmp_path / "g.json")
    out = tmp_path / "out.twinlock"
    with pytest.raises(BundleError, match="enrolled with model 'some-other-model'.*re-enrol"):
        signing.write_bundle(door.model_dir, tmp_path / "g.json", door.key, out)
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "g.json"]


def test_write_bundle_replaces_output_atomically(door: Door, tmp_path: Path) -> None:
    out = tmp_path / "out.twinlock"
    out.write_bytes(b"old")
    signing.write_bundle(door.model_dir, door.gallery_path, door.key, out)
    assert unpacked(out, door.pub, tmp_path / "active") == door.source_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["active", "out.twinlock"]  # no temp


# ------------------------------------------------------------------------------------------
# installing on the door, rollback


def second_bundle(door: Door, tmp_path: Path) -> Path:
    make_gallery(door.meta.model_id, door.meta.embedding_dim, ["alice", "bob", "carol"],
                 seed=3).save(tmp_path / "g2.json")
    path = tmp_path / "second.twinlock"
    signing.write_bundle(door.model_dir, tmp_path / "g2.json", door.key, path)
    return path


def test_install_keeps_previous_and_rollback_swaps(door: Door, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, second = door.bundle.read_bytes(), second_bundle(door, tmp_path).read_bytes()
    with pytest.raises(BundleError, match="no bundle installed"):
        store.current_bundle(state)
    current = store.install_bundle(door.bundle, door.pub, state)
    previous = current.with_name("previous.twinlock")
    assert current == store.current_bundle(state) == state / "bundles" / "current.twinlock"
    assert current.read_bytes() == first and not previous.exists()
    with pytest.raises(BundleError, match="no previous bundle"):
        store.rollback(state, door.pub)

    store.install_bundle(tmp_path / "second.twinlock", door.pub, state)
    assert current.read_bytes() == second and previous.read_bytes() == first
    assert store.verify_bundle(store.current_bundle(state), door.pub).users == ["alice", "bob", "carol"]
    store.install_bundle(tmp_path / "second.twinlock", door.pub, state)  # same again: no shuffle
    assert current.read_bytes() == second and previous.read_bytes() == first

    assert store.rollback(state, door.pub) == current
    assert current.read_bytes() == first and previous.read_bytes() == second
    store.rollback(state, door.pub)  # and forward again
    assert current.read_bytes() == second and previous.read_bytes() == first
    for path in (current, previous):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "bundles").stat().st_mode) == 0o700
    # .lock: what installs and rollbacks hold (tests/test_bundle_race.py)
    assert sorted(p.name for p in (state / "bundles").iterdir()) == [".lock", "current.twinlock",
                                                                     "previous.twinlock"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chown to another user")
def test_install_and_rollback_as_root_leave_the_bundles_to_the_service_user(
        door: Door, tmp_path: Path) -> None:
    """`sudo twinlockd rollback` (or install-bundle) on the door: the files it writes keep the
    bundles folder's owner, else the daemon cannot open its own current bundle (seen under a
    real systemd: tests/vm, "cannot open bundle (Permission denied)" at the reload)."""
    state = tmp_path / "state"
    store.install_bundle(door.bundle, door.pub, state)
    folder = state / "bundles"
    service = (4242, 4343)                              # what install.sh's chown -R would give
    for path in (state, folder, *folder.iterdir()):
        os.chown(path, *service)
    store.install_bundle(second_bundle(door, tmp_path), door.pub, state)
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in folder.iterdir()}
    assert owners == dict.fromkeys([".lock", "current.twinlock", "previous.twinlock"], service)
    store.rollback(state, door.pub)
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in folder.iterdir()}
    assert owners == dict.fromkeys([".lock", "current.twinlock", "previous.twinlock"], service)


def test_failed_install_or_rollback_changes_nothing(door: Door, tmp_path: Path) -> None:
    state = tmp_path / "state"
    store.install_bundle(door.bundle, door.pub, state)
    store.install_bundle(second_bundle(door, tmp_path), door.pub, state)
    folder = state / "bundles"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    tampered = bytearray(door.data)
    tampered[len(tampered) // 2] ^= 0x01
    bad_inputs = [write(tmp_path, bytes(tampered), "tampered.twinlock"),
                  write(tmp_path, door.data[: len(door.data) // 3], "short.twinlock"),
                  write(tmp_path, b"", "empty.twinlock"), tmp_path / "absent.twinlock"]
    other_key, other_pub = tmp_path / "o.key", tmp_path / "o.pub"
    signing.generate_keypair(other_key, other_pub)
    signing.write_bundle(door.model_dir, door.gallery_path, other_key, tmp_path / "foreign.twinlock")
    bad_inputs.append(tmp_path / "foreign.twinlock")
    for bad in bad_inputs:
        with pytest.raises(BundleError):
            store.install_bundle(bad, door.pub, state)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, bad.name

    # a damaged previous cannot be rolled back to, and nothing moves
    (folder / "previous.twinlock").write_bytes(bytes(tampered))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(BundleError, match="previous.twinlock"):
        store.rollback(state, door.pub)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# ------------------------------------------------------------------------------------------
# keys


def test_keypair_files_modes_and_key_id(tmp_path: Path) -> None:
    old_umask = os.umask(0o000)  # the modes must not depend on the caller's umask
    try:
        kid = signing.generate_keypair(tmp_path / "k" / "door.key", tmp_path / "k" / "door.pub")
    finally:
        os.umask(old_umask)
    private, public = tmp_path / "k" / "door.key", tmp_path / "k" / "door.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    raw = fmt.load_public_key(public).public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
    assert kid == hashlib.sha256(raw).hexdigest()[:16] == fmt.key_id(signing.load_private_key(private))
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["door.key", "door.pub"]


def test_keys_are_never_overwritten(tmp_path: Path) -> None:
    private, public = tmp_path / "door.key", tmp_path / "door.pub"
    signing.generate_keypair(private, public)
    before = private.read_bytes(), public.read_bytes()
    for pair in ((private, tmp_path / "new.pub"), (tmp_path / "new.key", public),
                 (private, public)):
        with pytest.raises(BundleError, match="already exists; refusing to overwrite"):
            signing.generate_keypair(*pair)
    assert (private.read_bytes(), public.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["door.key", "door.pub"]


def test_bad_key_files_are_refused_clearly(tmp_path: Path) -> None:
    signing.generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    with pytest.raises(BundleError, match="not a PEM private key"):
        signing.load_private_key(tmp_path / "a.pub")
    with pytest.raises(BundleError, match="not a PEM public key"):
        fmt.load_public_key(write(tmp_path, b"garbage", "g.pub"))
    with pytest.raises(BundleError, match="public key not found"):
        fmt.load_public_key(tmp_path / "none.pub")
    ed448 = Ed448PrivateKey.generate()
    write(tmp_path, ed448.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), "ed448.key")
    with pytest.raises(BundleError, match="Ed25519"):
        signing.load_private_key(tmp_path / "ed448.key")
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(BundleError, match="password-protected"):
        signing.load_private_key(write(tmp_path, encrypted, "enc.key"))
    assert issubclass(BundleError, TwinLockError) and issubclass(BundleError, ValueError)
    assert BundleError.exit_code == 2


# ------------------------------------------------------------------------------------------
# host wrappers


def test_trainer_keygen_and_make_bundle(door: Door, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    keys = keygen(tmp_path / "keys" / "site")
    assert keys["private_key"] == str(tmp_path / "keys" / "site.key")
    assert keys["public_key"] == str(tmp_path / "keys" / "site.pub")
    assert json.loads(capsys.readouterr().out) == keys
    with pytest.raises(BundleError, match="refusing to overwrite"):
        keygen(tmp_path / "keys" / "site")

    out = tmp_path / "site.twinlock"
    summary = make_bundle(door.model_dir, door.gallery_path, tmp_path / "keys" / "site.key", out)
    assert json.loads(capsys.readouterr().out) == summary
    verified = store.verify_bundle(out, tmp_path / "keys" / "site.pub")
    assert summary["bundle_id"] == verified.bundle_id
    assert summary["key_id"] == keys["key_id"] == verified.key_id
    assert summary["sha256"] == file_sha256(out) and summary["bytes"] == out.stat().st_size
    assert summary["users"] == ["alice", "bob"]


# ------------------------------------------------------------------------------------------
# replay of an older bundle


def test_a_replayed_older_bundle_is_refused_and_only_rollback_goes_back(
        door: Door, tmp_path: Path) -> None:
    """Yesterday's bundle still holds bob, removed since: dropped into the door's drop folder
    again, it is refused with the reason, and bob stays out until an administrator rolls back."""
    from twinlock.daemon.bundle.intake import pick_up_incoming
    from twinlock.daemon.config.loader import parse_config
    from twinlock.daemon.storage.audit import AuditLog

    make_gallery(door.meta.model_id, door.meta.embedding_dim, ["alice"], seed=5).save(
        tmp_path / "without-bob.json")
    yesterday, today = tmp_path / "yesterday.twinlock", tmp_path / "today.twinlock"
    signing.write_bundle(door.model_dir, door.gallery_path, door.key, yesterday, sequence=100)
    signing.write_bundle(door.model_dir, tmp_path / "without-bob.json", door.key, today, sequence=200)
    old_data = yesterday.read_bytes()
    state, spool = tmp_path / "state", tmp_path / "spool"
    store.install_bundle(yesterday, door.pub, state)
    store.install_bundle(today, door.pub, state)

    spool.mkdir()
    (spool / "replay.twinlock").write_bytes(old_data)
    cfg = parse_config(f"state_dir: {state}\nmodel:\n  incoming: {spool}\n"
                       f"  public_key: {door.pub}\n")
    with AuditLog(tmp_path / "audit.db") as audit:
        pick_up_incoming(cfg, audit)
        refused = audit.query(event="bundle")
    assert store.verify_bundle(store.current_bundle(state), door.pub).users == ["alice"]
    assert (spool / "rejected" / "replay.twinlock").read_bytes() == old_data
    assert len(refused) == 1 and "older than the installed bundle (sequence 100" in \
        refused[0].reason and "twinlockd rollback" in refused[0].reason
    with pytest.raises(BundleError, match="older than the installed bundle"):
        store.install_bundle(yesterday, door.pub, state)  # by hand: the same answer

    store.rollback(state, door.pub)  # the administrator's way back
    assert store.verify_bundle(store.current_bundle(state), door.pub).users == ["alice", "bob"]
    store.install_bundle(today, door.pub, state)  # and forward again
    assert store.verify_bundle(store.current_bundle(state), door.pub).sequence == 200


def test_bundles_without_a_sequence_order_by_their_signed_creation_time(
        door: Door, tmp_path: Path) -> None:
    key, files = load_signer(door), door.source_bytes()
    legacy = write(tmp_path, signed_bundle(files, key), "legacy.twinlock")  # created 2025-01-01
    assert store.verify_bundle(legacy, door.pub).sequence == 1735689600 * 1_000_000
    state = tmp_path / "state"
    store.install_bundle(door.bundle, door.pub, state)  # written now
    with pytest.raises(BundleError, match="older than the installed bundle"):
        store.install_bundle(legacy, door.pub, state)
    same = write(tmp_path, signed_bundle(files, key, sequence=door.manifest["sequence"]),
                 "same.twinlock")
    with pytest.raises(BundleError, match="same sequence"):
        store.install_bundle(same, door.pub, state)


@pytest.mark.parametrize("sequence", ["5", -1, 1.5, True, 2**63])
def test_a_malformed_sequence_is_refused(door: Door, tmp_path: Path, sequence: object) -> None:
    bad = write(tmp_path, signed_bundle(door.source_bytes(), load_signer(door),
                                        sequence=sequence))
    refuse(bad, door.pub, "malformed manifest: sequence")


# ------------------------------------------------------------------------------------------
# signed but unusable


def test_a_signed_bundle_that_cannot_run_never_becomes_current(door: Door, tmp_path: Path) -> None:
    """64-d anchors for the model's wider embeddings, or a tower the runtime cannot load: signed
    and consistent on paper, refused before it replaces the good bundle, so the door (also after
    a restart) still has a model."""
    from twinlock.daemon.bundle.intake import pick_up_incoming
    from twinlock.daemon.config.loader import parse_config
    from twinlock.daemon.door.assemble import build_matcher
    from twinlock.daemon.storage.audit import AuditLog

    assert door.meta.embedding_dim != 64
    state, spool = tmp_path / "state", tmp_path / "spool"
    store.install_bundle(door.bundle, door.pub, state)
    good = store.current_bundle(state).read_bytes()
    make_gallery(door.meta.model_id, 64, ["alice", "bob"]).save(tmp_path / "narrow.json")
    narrow = tmp_path / "narrow.twinlock"
    signing.write_bundle(door.model_dir, tmp_path / "narrow.json", door.key, narrow)
    store.verify_bundle(narrow, door.pub)  # the signature and manifest are fine
    with pytest.raises(BundleError, match="cannot run on this door: user 'alice' has 64-d"):
        store.install_bundle(narrow, door.pub, state)
    broken_tower = door.source_bytes() | {"model/tower.tflite": b"TFL3" + bytes(4096)}
    junk = write(tmp_path, signed_bundle(broken_tower, load_signer(door),
                                         sequence=2**62), "junk-tower.twinlock")
    with pytest.raises(BundleError, match="cannot run on this door"):
        store.install_bundle(junk, door.pub, state)
    assert store.current_bundle(state).read_bytes() == good

    spool.mkdir()
    shutil.copyfile(narrow, spool / "narrow.twinlock")
    cfg = parse_config(f"state_dir: {state}\nmodel:\n  incoming: {spool}\n"
                       f"  public_key: {door.pub}\n")
    with AuditLog(tmp_path / "audit.db") as audit:
        pick_up_incoming(cfg, audit)
        refused = audit.query(event="bundle")
    assert (spool / "rejected" / "narrow.twinlock").exists()
    assert "64-d anchors" in refused[0].reason
    assert store.current_bundle(state).read_bytes() == good
    assert build_matcher(cfg).users == 2  # what a restart loads


def test_assets_listed_in_model_json_must_be_carried_with_their_hashes(
        door: Door, tmp_path: Path) -> None:
    """A signed bundle whose model.json names a detector it does not carry, or carries another
    file under that name, is refused: the door would otherwise detect with something else."""
    assert ASSETS, "the shipped model carries its detector"
    signer = load_signer(door)
    files = door.source_bytes()
    missing = {k: v for k, v in files.items() if k not in ASSETS}
    refuse(write(tmp_path, signed_bundle(missing, signer), "missing.twinlock"), door.pub,
           "lists assets .* but the bundle carries")
    other = files | {ASSETS[0]: files[ASSETS[0]][:-1] + b"\0"}
    refuse(write(tmp_path, signed_bundle(other, signer), "other.twinlock"), door.pub,
           r"lists assets .*\(or their sha256 differ\)")
    stray = files | {"model/extra.tflite": b"TFL3"}
    refuse(write(tmp_path, signed_bundle(stray, signer), "stray.twinlock"), door.pub,
           "lists assets")


def test_install_makes_a_missing_state_dir_private(door: Door, tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual umask: mkdir would give 0755
    try:
        store.install_bundle(door.bundle, door.pub, tmp_path / "new" / "state")
    finally:
        os.umask(old_umask)
    for folder in (tmp_path / "new", tmp_path / "new" / "state",
                   tmp_path / "new" / "state" / "bundles"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_unsigned_tar_header_metadata_changes_nothing_the_door_uses(door: Door,
                                                                     tmp_path: Path) -> None:
    """What docs/how-it-works/security.md and the module promise, exactly: a member header
    re-forged with a valid
    checksum (here its mtime) is outside the signature, and the door gets the same bundle."""
    data = bytearray(door.data)
    infos = [info for info, _ in tar_members(door.data)]
    header = infos[-1].offset  # the last member's header
    data[header + 136:header + 148] = b"%011o\0" % 12345
    data[header + 148:header + 156] = b" " * 8
    data[header + 148:header + 156] = b"%06o\0 " % sum(data[header:header + tarfile.BLOCKSIZE])
    assert bytes(data) != door.data
    forged = store.verify_bundle(write(tmp_path, bytes(data)), door.pub)
    original = store.verify_bundle(door.bundle, door.pub)
    assert forged.digest == original.digest
    assert unpacked(tmp_path / "x.twinlock", door.pub, tmp_path / "forged") == \
        unpacked(door.bundle, door.pub, tmp_path / "original") == door.source_bytes()
