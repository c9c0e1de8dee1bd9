"""Shared fixtures: where the real data lives, and the rule that CI must have it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gpiozero.pins.mock import MockFactory

REPO = Path(__file__).resolve().parents[1]
#: the real-systemd suite boots a Debian VM (minutes): collected only when scripts/vm-tests.sh
#: runs it (it sets TWINLOCK_VM_IMAGE), so the ordinary run neither boots nor lists it as skipped
collect_ignore = [] if os.environ.get("TWINLOCK_VM_IMAGE") else ["vm"]


def data_root() -> Path:
    """``$TWINLOCK_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("TWINLOCK_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def require_data(*parts: str) -> Path:
    """Path to a data folder/file; skip without it, fail under CI (``TWINLOCK_REQUIRE_DATA=1``)."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        message = f"test data not found: {path}"
        if os.environ.get("TWINLOCK_REQUIRE_DATA") == "1":
            pytest.fail(message + " (TWINLOCK_REQUIRE_DATA=1)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require_data()


@pytest.fixture(scope="session", autouse=True)
def private_household_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The household's default stores (``$XDG_DATA_HOME/twinlock``: enrolment.db, activity.db)
    in a folder of this test session's own: a test that forgets --db never writes into the
    home of whoever runs the suite. Subprocesses inherit it."""
    path = tmp_path_factory.mktemp("xdg-data")
    os.environ["XDG_DATA_HOME"] = str(path)
    os.environ.pop("TWINLOCK_ENROL_DB", None)
    os.environ.pop("TWINLOCK_ACTIVITY_DB", None)
    return path


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    return require_data("lfw", "lfw-deepfunneled")


@pytest.fixture(scope="session")
def orl_dir() -> Path:
    return require_data("orl_att_faces")


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return require_data("face_recognition_examples")


@pytest.fixture(scope="session")
def crop_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A crop cache private to this test session (tests never touch the user's cache)."""
    path = tmp_path_factory.mktemp("crop-cache")
    os.environ["TWINLOCK_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, crop_cache: Path) -> Path:
    """A tiny real training run on ORL faces (about half a minute), shared by several tests."""
    from twinlock.trainer.cli import main

    orl = require_data("orl_att_faces")
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(["train", "--data", str(orl), "--out", str(run_dir), "--epochs", "4",
                 "--steps-per-epoch", "10", "--batch-size", "16", "--learning-rate", "0.003",
                 "--val-fraction", "0.25", "--no-augment", "--seed", "0"])
    assert code == 0
    return run_dir


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory, trained_run: Path) -> Path:
    from twinlock.trainer.cli import main

    model_dir = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["export", str(trained_run), "--out", str(model_dir)]) == 0
    return model_dir


@pytest.fixture(scope="session")
def door_model() -> Path:
    """The shipped default model (models/default), used by the daemon's end-to-end tests.

    ``$TWINLOCK_TEST_MODEL`` names another shipped model folder: the aarch64 pass under qemu
    runs the daemon's tests on models/compact, whose tower emulates 10x faster (70 ms against
    700 ms a run measured under qemu); the default's own decision is tested natively.
    """
    path = REPO / os.environ.get("TWINLOCK_TEST_MODEL", "models/default")
    if not (path / "model.json").is_file():
        pytest.fail(f"{path} is missing: the repository must ship a default model")
    return path


@pytest.fixture()
def mock_pins() -> MockFactory:
    """gpiozero's MockFactory as the pin factory: real pin objects that record every state
    change with its time, so tests assert on what the relay line really did."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    previous = Device.pin_factory
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = previous
