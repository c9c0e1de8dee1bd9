"""``twinlockd verify`` and ``check-config``: answers a person at the door can read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_helpers import enrol_miranda

from twinlock.daemon.cli import main

pytestmark = [pytest.mark.data]


def test_verify_answers_for_each_image(tmp_path: Path, door_model: Path, examples_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    gallery = tmp_path / "gallery.json"
    enrol_miranda(door_model, examples_dir, gallery)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    images = [examples_dir / "lin-manuel-miranda.png", examples_dir / "alex-lacamoire.png",
              not_an_image]
    code = main(["verify", *map(str, images), "--model", str(door_model), "--gallery",
                 str(gallery), "--json", "--config", str(tmp_path / "none.yaml")])
    out = capsys.readouterr()
    assert code == 2 and "none.yaml" in out.err  # a named config that does not exist
    (tmp_path / "empty.yaml").write_text("")
    assert main(["verify", *map(str, images), "--model", str(door_model), "--gallery",
                 str(gallery), "--json", "--config", str(tmp_path / "empty.yaml")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results[0]["decision"] == "match lin" and results[0]["faces"] == 1
    assert results[1]["decision"] == "no match" and results[1]["closest_user"] == "lin"
    assert results[1]["best_score"] < results[0]["best_score"]
    assert "not a readable image" in results[2]["error"]


def test_verify_needs_model_and_gallery_together(tmp_path: Path, door_model: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.yaml").write_text("")
    code = main(["verify", "x.jpg", "--model", str(door_model), "--config",
                 str(tmp_path / "empty.yaml")])
    assert code == 2 and "--gallery" in capsys.readouterr().err


def test_check_config_names_line_and_key(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("camera:\n  type: opencv\n  fps: -3\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml:3: camera.fps" in err and "(got -3)" in err
    good = tmp_path / "good.yaml"
    good.write_text("action:\n  type: log\n")
    assert main(["check-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_config_warns_about_a_camera_larger_than_needed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 4K camera is valid (frames are shrunk at capture) but costs the Pi for nothing."""
    config = tmp_path / "config.yaml"
    for camera, warned in (("{type: opencv, width: 3840, height: 2160}", True),
                           ("{type: picamera2, width: 4056, height: 3040, max_side: 2560}", True),
                           ("{type: opencv, width: 1920, height: 1080}", False),
                           ("{type: picamera2}", False)):
        config.write_text(f"camera: {camera}\naction: {{type: log}}\n")
        assert main(["check-config", str(config)]) == 0
        err = capsys.readouterr().err
        assert ("larger than the door needs" in err) is warned, (camera, err)
        assert ("camera.max_side" in err) is warned
