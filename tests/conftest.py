"""Shared fixtures: where the real data lives, and the rule that CI must have it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    return require_data("lfw", "lfw-deepfunneled")


@pytest.fixture(scope="session")
def orl_dir() -> Path:
    return require_data("orl_att_faces")


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return require_data("face_recognition_examples")
