"""Bad input gets one clear line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from twinlock.trainer.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert "error:" in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_train_missing_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-faces"
    code, _, err = _run(["train", "--data", str(missing), "--out", str(tmp_path / "r")], capsys)
    _assert_clean_error(code, err, "no-such-faces")


def test_train_without_data_or_resume(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["train"], capsys)
    _assert_clean_error(code, err, "--data is required")


def test_bad_option_value(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(tmp_path), "--loss", "hinge"])
    assert exc.value.code == 2
    assert "invalid choice: 'hinge'" in capsys.readouterr().err


def _tiny_dataset(orl_dir: Path, root: Path, people: int, images: int) -> Path:
    for p in range(1, people + 1):
        (root / f"person{p}").mkdir(parents=True)
        for i in range(1, images + 1):
            shutil.copy(orl_dir / f"s{p}" / f"{i}.pgm", root / f"person{p}" / f"{i}.pgm")
    return root


@pytest.mark.data
def test_train_everyone_has_one_image(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      orl_dir: Path, crop_cache: Path) -> None:
    data = _tiny_dataset(orl_dir, tmp_path / "faces", people=5, images=1)
    code, _, err = _run(["train", "--data", str(data), "--out", str(tmp_path / "r")], capsys)
    _assert_clean_error(code, err, "at least 2 people with 2 or more")


@pytest.mark.data
def test_evaluate_skips_and_counts_bad_files(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            orl_dir: Path, exported_model: Path) -> None:
    data = _tiny_dataset(orl_dir, tmp_path / "faces", people=4, images=3)
    (data / "person1" / "broken.jpg").write_text("this is not a JPEG")
    (data / "person2" / "empty.png").write_bytes(b"")
    (data / "person3" / "notes.txt").write_text("not an image at all")
    (data / "person5").mkdir()
    shutil.copy(orl_dir / "s5" / "1.pgm", data / "person5" / "1.pgm")  # a person with one image
    code, out, err = _run(["evaluate", "--model", str(exported_model), "--images", str(data),
                           "--plots", str(tmp_path / "plots")], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["n_unreadable"] == 2
    assert result["n_files_skipped"] == 1
    assert result["n_images"] == 15
    assert result["n_same"] == 12  # 4 people x 3 images: 3 same pairs each; person5 adds none


@pytest.mark.data
def test_evaluate_folder_with_no_same_person_pair(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path, orl_dir: Path,
                                                  exported_model: Path) -> None:
    data = _tiny_dataset(orl_dir, tmp_path / "faces", people=4, images=1)
    code, _, err = _run(["evaluate", "--model", str(exported_model), "--images", str(data)],
                        capsys)
    _assert_clean_error(code, err, "no person has two usable face images")


@pytest.mark.data
def test_pairs_file_naming_missing_images(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          orl_dir: Path, exported_model: Path) -> None:
    data = _tiny_dataset(orl_dir, tmp_path / "faces", people=2, images=2)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\nperson1 1 2\nperson1 1 person2 7\n")
    code, _, err = _run(["evaluate", "--model", str(exported_model), "--images", str(data),
                         "--pairs", str(pairs)], capsys)
    _assert_clean_error(code, err, "pairs.txt", "missing")


@pytest.mark.data
def test_evaluate_missing_model(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                orl_dir: Path) -> None:
    code, _, err = _run(["evaluate", "--model", str(tmp_path / "nomodel"), "--images",
                         str(orl_dir)], capsys)
    _assert_clean_error(code, err, "nomodel")


def test_export_of_a_folder_that_is_not_a_run(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    code, _, err = _run(["export", str(tmp_path), "--out", str(tmp_path / "m")], capsys)
    _assert_clean_error(code, err, "not a training run folder")



@pytest.mark.parametrize(("prog", "argv", "says"), [
    ("twinlock", ["export", "run-dir", "--out", "out"], True), ("twinlockd", ["rollback"], False)])
def test_ctrl_c_exits_130_in_both_programs(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch, prog: str,
                                           argv: list[str], says: bool) -> None:
    """Both command lines go through daemon/console.py: Ctrl-C in a command is exit status 130,
    with a line on stderr from the trainer's (a long run) and none from the daemon's."""
    from twinlock.daemon import cli as daemon_cli
    from twinlock.trainer import cli as trainer_cli

    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    module = trainer_cli if prog == "twinlock" else daemon_cli
    monkeypatch.setitem(module.COMMANDS, argv[0], interrupted)
    assert module.main(argv) == 130
    err = capsys.readouterr().err
    assert (f"{prog} {argv[0]}: interrupted" in err) is says
    assert "Traceback" not in err
