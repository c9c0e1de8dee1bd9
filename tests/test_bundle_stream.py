"""A bundle is read as a stream: memory stays bounded whatever its size, each member is hashed as
it is read, and the first member that does not match the signed manifest ends the read.

Real keys and the shipped model's files; the large bundle's tower is padded with random bytes to
just under the member cap (the reader never runs the tower, so its content does not matter).
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon.bundle import format as fmt
from twinlock.daemon.bundle import store
from twinlock.daemon.bundle.reader import CHUNK, verify_stream
from twinlock.daemon.errors import BundleError
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import read_metadata
from twinlock.trainer.household import signing

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default"
#: the large bundle's tower: near the member cap, so the bundle is as large as one can be
BIG_TOWER = fmt.MAX_MEMBER_SIZE - 1024 * 1024


def make_bundle(root: Path, tower_size: int | None = None) -> tuple[Path, Path]:
    """A signed bundle of the shipped model (its tower padded to ``tower_size``); (bundle, key)."""
    model = root / "model"
    shutil.copytree(DEFAULT_MODEL, model)
    if tower_size is not None:
        with (model / "tower.tflite").open("ab") as tower:
            missing = tower_size - tower.tell()
            tower.write(np.random.default_rng(0).bytes(missing))
    meta = read_metadata(model)
    gallery = Gallery(meta.model_id)
    gallery.add("alice", np.random.default_rng(1).normal(size=(3, meta.embedding_dim)))
    gallery.save(root / "gallery.json")
    key, pub = root / "signer.key", root / "signer.pub"
    signing.generate_keypair(key, pub)
    bundle = root / "door.twinlock"
    signing.write_bundle(model, root / "gallery.json", key, bundle)
    return bundle, pub


def peak_python_memory(call: Callable[[], object]) -> int:
    """Peak bytes Python allocated while ``call()`` ran."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_verifying_and_unpacking_a_large_bundle_needs_little_memory(tmp_path: Path) -> None:
    """A bundle near the size cap is verified and unpacked holding a few chunks, not the file:
    the door's memory does not grow with what the drop folder is given."""
    bundle, pub = make_bundle(tmp_path, BIG_TOWER)
    size = bundle.stat().st_size
    assert BIG_TOWER < size <= fmt.MAX_BUNDLE_SIZE
    verify_peak = peak_python_memory(lambda: store.verify_bundle(bundle, pub))
    unpack_peak = peak_python_memory(lambda: store.unpack_bundle(bundle, pub, tmp_path / "active"))
    print(f"\nbundle {size / 2**20:.1f} MiB: peak {verify_peak / 2**20:.2f} MiB verifying, "
          f"{unpack_peak / 2**20:.2f} MiB unpacking")
    limit = 16 * CHUNK  # a few read chunks, the JSON members and the parsed manifest
    assert verify_peak < limit and unpack_peak < limit, (verify_peak, unpack_peak, size)
    tower = tmp_path / "active" / next(p.name for p in (tmp_path / "active").iterdir()) / \
        "model" / "tower.tflite"
    assert tower.read_bytes() == (tmp_path / "model" / "tower.tflite").read_bytes()


class CountingReader(io.BytesIO):
    """A bundle's bytes that count how far they were read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.furthest = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.furthest = max(self.furthest, self.tell())
        return data


def test_a_member_altered_after_its_header_is_refused_at_its_end(tmp_path: Path) -> None:
    """One byte of the tower changed, everything after it junk: the refusal is the tower's hash
    (not the damage further on), and nothing after the tower's last block was read."""
    bundle, pub = make_bundle(tmp_path)
    data = bytearray(bundle.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as archive:
        tower = archive.getmember(fmt.TOWER_MEMBER)
    data[tower.offset_data + tower.size // 2] ^= 0x01
    end = tower.offset_data + fmt.round_up(tower.size)
    data[end:] = np.random.default_rng(2).bytes(len(data) - end)
    stream = CountingReader(bytes(data))
    with pytest.raises(BundleError, match="model/tower.tflite does not match its sha256"):
        verify_stream(stream, len(data), fmt.load_public_key(pub), "altered.twinlock")
    assert stream.furthest == end
    # and through the door's own paths: refused, nothing unpacked, nothing installed
    altered = tmp_path / "altered.twinlock"
    altered.write_bytes(bytes(data))
    (tmp_path / "active").mkdir()
    with pytest.raises(BundleError, match="model/tower.tflite does not match its sha256"):
        store.unpack_bundle(altered, pub, tmp_path / "active")
    assert list((tmp_path / "active").iterdir()) == []
    with pytest.raises(BundleError, match="model/tower.tflite does not match its sha256"):
        store.install_bundle(altered, pub, tmp_path / "state")
    # only the lock that installs hold (tests/test_bundle_race.py)
    assert [p.name for p in (tmp_path / "state" / "bundles").iterdir()] == [store.LOCK_NAME]
