"""The detector travels with the model: model folder assets, the bundle members that carry them,
and refusal of an altered detector (in a folder and in a signed bundle).

Works on a copy of the shipped models/default (no TensorFlow); the detector is run on a real
photo from the unpacked bundle to show the door really loads the bundle's file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon.bundle import store
from twinlock.daemon.errors import BundleError, ModelError
from twinlock.daemon.faces.assets import DETECTOR_ROLE, IRIS_ROLE, KNOWN, MESH_ROLE, PACKAGED_DIR
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import read_metadata
from twinlock.trainer.cli import main as twinlock_main
from twinlock.trainer.household import signing
from twinlock.trainer.training.model_assets import add_detector

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "default"
SHORT = "face_detection_short_range.tflite"
MESH = "face_landmark.tflite"


def legacy_copy(dest: Path) -> Path:
    """A model folder as exported before assets: tower + model.json without ``assets``."""
    dest.mkdir(parents=True)
    shutil.copyfile(DEFAULT_MODEL / "tower.tflite", dest / "tower.tflite")
    data = json.loads((DEFAULT_MODEL / "model.json").read_text())
    data.pop("assets", None)
    (dest / "model.json").write_text(json.dumps(data, indent=2))
    return dest


def gallery_for(model_dir: Path, path: Path) -> Path:
    meta = read_metadata(model_dir)
    gallery = Gallery(meta.model_id)
    gallery.add("alice", np.random.default_rng(0).normal(size=(2, meta.embedding_dim))
                .astype(np.float32))
    gallery.save(path)
    return path


def test_packaged_files_have_the_pinned_hashes() -> None:
    from twinlock.daemon.faces.assets import file_sha256

    for name, (sha, notice) in KNOWN.items():
        assert file_sha256(PACKAGED_DIR / name) == sha
        assert "Apache License, Version 2.0" in notice
    assert (PACKAGED_DIR / "LICENSE-Apache-2.0.txt").is_file()


def test_add_detector_records_files_hashes_and_licence(tmp_path: Path) -> None:
    folder = legacy_copy(tmp_path / "m")
    before = json.loads((folder / "model.json").read_text())
    assert twinlock_main(["add-detector", str(folder)]) == 0
    after = json.loads((folder / "model.json").read_text())
    assert {k: v for k, v in after.items() if k != "assets"} == before  # nothing else changed
    assert set(after["assets"]) == {DETECTOR_ROLE, MESH_ROLE, IRIS_ROLE}
    det = after["assets"][DETECTOR_ROLE]
    assert det["file"] == SHORT and det["sha256"] == KNOWN[SHORT][0]
    assert det["bytes"] == (folder / SHORT).stat().st_size
    assert "Apache" in det["licence"] and "MediaPipe" in det["licence"]
    assert (folder / MESH).read_bytes() == (PACKAGED_DIR / MESH).read_bytes()
    meta = read_metadata(folder)
    assert meta.detector.model_path == str(folder / SHORT)  # the door uses the folder's file
    assert meta.asset_path(MESH_ROLE) == folder / MESH
    # model.json written back from the metadata keeps the recorded (relative) detector
    assert meta.to_json()["detector"]["model_path"] is None


def test_no_mesh_and_idempotent(tmp_path: Path) -> None:
    folder = legacy_copy(tmp_path / "m")
    add_detector(folder, mesh=False)
    assert not (folder / MESH).exists()
    first = (folder / "model.json").read_text()
    add_detector(folder, mesh=False)
    assert (folder / "model.json").read_text() == first


def test_a_host_path_in_model_json_gives_way_to_the_folder_copy(tmp_path: Path) -> None:
    """A model exported with detector.model_path naming a file on the training host: once the
    file is in the folder, the door uses the folder's copy, not a path it does not have."""
    folder = legacy_copy(tmp_path / "m")
    data = json.loads((folder / "model.json").read_text())
    data["detector"]["model_path"] = str(PACKAGED_DIR / SHORT)
    (folder / "model.json").write_text(json.dumps(data))
    add_detector(folder, mesh=False)
    assert json.loads((folder / "model.json").read_text())["detector"]["model_path"] is None
    assert read_metadata(folder).detector.model_path == str(folder / SHORT)


def test_altered_detector_in_folder_is_refused(tmp_path: Path) -> None:
    folder = legacy_copy(tmp_path / "m")
    add_detector(folder)
    data = bytearray((folder / SHORT).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / SHORT).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="altered or corrupted"):
        read_metadata(folder)
    (folder / SHORT).unlink()
    with pytest.raises(ModelError, match="missing"):
        read_metadata(folder)


def test_unknown_or_wrong_file_is_not_added(tmp_path: Path) -> None:
    from twinlock.daemon.faces.assets import add_asset

    fake = tmp_path / SHORT
    fake.write_bytes(b"not blazeface")
    with pytest.raises(ModelError, match="refusing an altered"):
        add_asset(tmp_path, fake)


def test_asset_names_must_be_plain(tmp_path: Path) -> None:
    folder = legacy_copy(tmp_path / "m")
    add_detector(folder, mesh=False)
    data = json.loads((folder / "model.json").read_text())
    data["assets"][DETECTOR_ROLE]["file"] = "../../etc/passwd.tflite"
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="plain"):
        read_metadata(folder)


@pytest.fixture()
def signed(tmp_path: Path) -> tuple[Path, Path, dict]:
    folder = legacy_copy(tmp_path / "model")
    add_detector(folder)
    gallery = gallery_for(folder, tmp_path / "gallery.json")
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    signing.generate_keypair(key, pub)
    out = tmp_path / "door.twinlock"
    manifest = signing.write_bundle(folder, gallery, key, out)
    return out, pub, manifest


@pytest.mark.data
def test_bundle_carries_the_detector_and_door_loads_it(signed, tmp_path: Path,
                                                       examples_dir: Path) -> None:
    out, pub, manifest = signed
    assert f"model/{SHORT}" in manifest["files"] and f"model/{MESH}" in manifest["files"]
    assert manifest["files"][f"model/{SHORT}"]["sha256"] == KNOWN[SHORT][0]
    _, root = store.unpack_bundle(out, pub, tmp_path / "active")
    meta = read_metadata(root / "model")
    assert meta.detector.model_path == str(root / "model" / SHORT)
    # and the detector built from it finds the face in a real photo
    from twinlock.daemon.faces.images import load_image

    detector = meta.detector.build()
    assert Path(detector.model_path) == root / "model" / SHORT
    assert len(detector.detect(load_image(examples_dir / "lin-manuel-miranda.png"))) == 1


def test_altered_detector_member_is_refused(signed, tmp_path: Path) -> None:
    out, pub, _ = signed
    data = bytearray(out.read_bytes())
    detector = (PACKAGED_DIR / SHORT).read_bytes()
    at = bytes(data).index(detector[4096:4160])  # inside the detector member's content
    data[at] ^= 0x01
    bad = tmp_path / "bad.twinlock"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"model/{SHORT} does not match its sha256"):
        store.verify_bundle(bad, pub)


@pytest.mark.data
@pytest.mark.slow
def test_export_puts_the_detector_and_liveness_models_in_the_model_folder(
        exported_model: Path) -> None:
    """`twinlock export` (the session's tiny real run) writes the assets with their hashes."""
    data = json.loads((exported_model / "model.json").read_text())
    assert set(data["assets"]) == {DETECTOR_ROLE, MESH_ROLE, IRIS_ROLE}
    for asset in data["assets"].values():
        assert KNOWN[asset["file"]][0] == asset["sha256"]
        assert (exported_model / asset["file"]).stat().st_size == asset["bytes"]
    assert data["detector"]["model_path"] is None  # recorded by name, not by this host's path
    meta = read_metadata(exported_model)
    assert meta.detector.model_path == str(exported_model / SHORT)
