"""A resident's own, stricter threshold against a look-alike sister (issue 20, item 8).

Venus Williams passes for Serena at a door that enrolled Serena (benchmarks/lookalikes.py:
86 % of Venus's photos at a one-resident door). ``twinlock enroll --strict FAR`` gives a resident
her own false-accept target; the signed bundle's gallery carries the threshold it resolves to
with the model's door calibration, and the door's ``Verifier`` holds that resident to it. The
main test runs the household's real commands (enroll, keygen, bundle), installs the bundles on a
door and asks the door's own frame path about real LFW photos of both sisters.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon.bundle import store as bundles
from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.door.assemble import build_matcher
from twinlock.daemon.errors import BundleError, ModelError, UsageError
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.recognition.fusion import (
    STRICT_FAR_MAX,
    STRICT_FAR_MIN,
    door_calibration,
    strict_threshold,
    threshold_for_residents,
)
from twinlock.daemon.recognition.gallery import Gallery, load_gallery
from twinlock.daemon.recognition.model import read_metadata
from twinlock.daemon.recognition.verify import Verifier
from twinlock.trainer.cli import main as twinlock
from twinlock.trainer.household.enroll import export_gallery
from twinlock.trainer.household.enroll_store import EnrolmentStore

pytestmark = [pytest.mark.data]

#: the shipped default model, by name: the measured figures below are this model's
MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
ENROLLED = 5  # Serena's first five photos are her anchors; the rest knock


def _photos(lfw: Path, person: str) -> list[Path]:
    return sorted((lfw / person).iterdir())


def _door(tmp: Path, bundle: Path, public_key: Path, name: str):
    state = tmp / name
    bundles.install_bundle(bundle, public_key, state)
    return build_matcher(parse_config(f"state_dir: {state}\nmodel:\n  public_key: {public_key}\n"))


def _accepted(matcher, photos: list[Path]) -> set[str]:
    """Names of the photos the door verifies as Serena (its own frame path, one frame each)."""
    out = set()
    for path in photos:
        analysis = matcher.analyser.analyse(load_image(path))
        scored = analysis.scored
        if scored and scored[0].verdict is not None and scored[0].verdict.user == "Serena":
            out.add(path.name)
    return out


def test_a_strict_serena_refuses_venus_photos_the_default_accepts(
        tmp_path: Path, lfw_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Serena enrolled from five photos, once as the door's default and once ``--strict 1e-5``,
    each signed into a bundle and installed on a door of one resident. The default door lets
    Venus in on most of her photos; the strict door refuses every one of those it can and still
    lets Serena in on most of her own other photos (the price: benchmarks/lookalikes.py)."""
    serena, venus = _photos(lfw_dir, "Serena_Williams"), _photos(lfw_dir, "Venus_Williams")
    assert len(serena) == 52 and len(venus) == 17
    assert twinlock(["keygen", "--out", str(tmp_path / "home")]) == 0
    made = {}
    for name, strict in (("default", []), ("strict", ["--strict", "1e-5"])):
        db = tmp_path / f"{name}.db"
        assert twinlock(["enroll", "Serena", "--images", *map(str, serena[:ENROLLED]),
                         "--model", str(MODEL), "--db", str(db), *strict]) == 0
        made[name] = tmp_path / f"{name}.twinlock"
        assert twinlock(["bundle", "--model", str(MODEL), "--key", str(tmp_path / "home.key"),
                         "--out", str(made[name]), "--db", str(db)]) == 0
    capsys.readouterr()
    pub = tmp_path / "home.pub"
    default, strict = (_door(tmp_path, made[n], pub, n) for n in ("default", "strict"))
    expected = strict_threshold(door_calibration(read_metadata(MODEL).metrics), 1e-5)[0]
    assert math.isclose(float(strict.analyser.verifier.limits[0]), expected, rel_tol=1e-9)
    assert float(default.analyser.verifier.limits[0]) < expected

    venus_default, venus_strict = _accepted(default, venus), _accepted(strict, venus)
    assert len(venus_default) >= 9, venus_default  # measured: 11 of 17, as in the issue
    assert venus_strict < venus_default and len(venus_strict) <= 2, venus_strict  # 0

    own = serena[ENROLLED:]
    own_default, own_strict = _accepted(default, own), _accepted(strict, own)
    assert own_strict <= own_default
    assert len(own_strict) >= len(own) // 2, (len(own_strict), len(own))  # 38 (46) of 47


def test_the_setting_travels_in_the_signed_gallery_and_only_raises_the_bar(
        tmp_path: Path, lfw_dir: Path) -> None:
    """``users strict`` is stored, written into the gallery as a threshold (only for that
    resident), and a resident's own value below the door's changes nothing at the door."""
    db = tmp_path / "e.db"
    serena, venus = _photos(lfw_dir, "Serena_Williams"), _photos(lfw_dir, "Venus_Williams")
    assert twinlock(["enroll", "Serena", "--images", *map(str, serena[:3]), "--model",
                     str(MODEL), "--db", str(db)]) == 0
    assert twinlock(["enroll", "Venus", "--images", *map(str, venus[:3]), "--model",
                     str(MODEL), "--db", str(db)]) == 0
    assert twinlock(["users", "strict", "serena", "3e-6", "--db", str(db)]) == 0
    with EnrolmentStore(db) as enrolled:
        assert {u.name: u.strict_far for u in enrolled.users()} == {"Serena": 3e-6,
                                                                    "Venus": None}
        gallery = export_gallery(enrolled, MODEL, tmp_path / "gallery.json")
    text = json.loads((tmp_path / "gallery.json").read_text())
    entries = {u["name"]: u for u in text["users"]}
    assert "threshold" not in entries["Venus"]  # galleries without the setting stay as they were
    assert entries["Serena"]["strict_far"] == 3e-6
    loaded = load_gallery(tmp_path / "gallery.json")
    assert loaded.users["Serena"].threshold == gallery.users["Serena"].threshold > 0.9999

    meta = read_metadata(MODEL)
    door = threshold_for_residents(door_calibration(meta.metrics), 1e-3, 2)
    assert door is not None
    loaded.users["Venus"].threshold = 0.6  # looser than the door's: ignored
    verifier = Verifier(loaded, meta.head_weights, meta.head_bias, door[0], fusion="centroid")
    assert verifier.limits.tolist() == [loaded.users["Serena"].threshold, door[0]]

    assert twinlock(["users", "strict", "Serena", "off", "--db", str(db)]) == 0
    with EnrolmentStore(db) as enrolled:
        assert export_gallery(enrolled, MODEL, tmp_path / "g2.json").users["Serena"].threshold \
            is None


@pytest.mark.parametrize("bad", [1.0, 0.2, float("nan"), "0.9999", True, -1])
def test_an_out_of_bounds_threshold_refuses_the_gallery_and_the_bundle(
        tmp_path: Path, bad: object) -> None:
    """Fail safe: a gallery whose resident threshold is not a number within bounds is refused
    by the host before signing and by the door's check before install (never clamped)."""
    gallery = Gallery(read_metadata(MODEL).model_id)
    gallery.add("serena", np.ones((2, 128), np.float32))
    data = gallery.to_json()
    data["users"][0]["threshold"] = bad
    path = tmp_path / "gallery.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="threshold"):
        load_gallery(path)
    from twinlock.trainer.household.bundles import keygen
    from twinlock.trainer.household.signing import write_bundle

    keygen(tmp_path / "k", echo=False)
    with pytest.raises(ModelError, match="threshold"):
        write_bundle(MODEL, path, tmp_path / "k.key", tmp_path / "b.twinlock")
    root = tmp_path / "unpacked"
    shutil.copytree(MODEL, root / "model")
    shutil.copyfile(path, root / "gallery.json")
    with pytest.raises(BundleError, match="threshold"):
        bundles.check_runs(root, "test bundle")


def test_strict_targets_resolve_within_bounds_and_fail_without_a_ladder(tmp_path: Path) -> None:
    """Within the model's measured ladder a target is the ladder's one-resident threshold; past
    it the threshold keeps rising (and says it is extrapolated); out of bounds, or for a model
    without a door calibration, nothing is written."""
    calibration = door_calibration(read_metadata(MODEL).metrics)
    measured, extrapolated = strict_threshold(calibration, 1e-4)
    assert not extrapolated
    assert measured == threshold_for_residents(calibration, 1e-4, 1)[0]  # type: ignore[index]
    values = [strict_threshold(calibration, f) for f in (1e-4, 3e-5, 1e-5, 3e-6, 1e-6)]
    assert all(flag for _, flag in values[1:])
    assert all(a[0] < b[0] < 1.0 for a, b in itertools.pairwise(values))
    for bad in (STRICT_FAR_MIN / 2, STRICT_FAR_MAX * 2, float("inf"), 0.0):
        with pytest.raises(ModelError, match="false-accept target"):
            strict_threshold(calibration, bad)
    with pytest.raises(ModelError, match="no one-resident ladder"):
        strict_threshold({}, 1e-5)

    with EnrolmentStore(tmp_path / "e.db") as enrolled:
        with pytest.raises(UsageError, match="false-accept target"):
            enrolled.add_user("ann")
            enrolled.set_strict("ann", 0.5)
        with pytest.raises(UsageError, match="no user"):
            enrolled.set_strict("bob", 1e-5)


def test_enroll_refuses_a_bad_strict_value_before_keeping_any_photo(
        tmp_path: Path, lfw_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "e.db"
    photo = str(_photos(lfw_dir, "Serena_Williams")[0])
    for bad in ("0.5", "lots"):
        assert twinlock(["enroll", "Serena", "--images", photo, "--model", str(MODEL),
                         "--db", str(db), "--strict", bad]) != 0
    assert "false-accept target" in capsys.readouterr().err
    with EnrolmentStore(db) as enrolled:
        assert enrolled.users() == []


def test_a_model_without_a_door_ladder_cannot_export_a_strict_resident(
        tmp_path: Path, lfw_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    meta = json.loads((model / "model.json").read_text())
    del meta["metrics"]["door"]
    (model / "model.json").write_text(json.dumps(meta))
    with EnrolmentStore(tmp_path / "e.db") as enrolled:
        assert twinlock(["enroll", "Serena", "--images",
                         str(_photos(lfw_dir, "Serena_Williams")[0]), "--model", str(model),
                         "--db", str(tmp_path / "e.db"), "--strict", "1e-5"]) == 0
        with pytest.raises(ModelError, match="Serena: the model has no one-resident ladder"):
            export_gallery(enrolled, model, tmp_path / "gallery.json")
    assert not (tmp_path / "gallery.json").exists()
