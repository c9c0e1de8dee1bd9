"""Threshold names: the trainer writes them and the door reads them back, through one module."""

from __future__ import annotations

import pytest

from twinlock.daemon.recognition import thresholds as names
from twinlock.trainer.stats import metrics


def test_names_are_spelt_as_model_json_has_them() -> None:
    assert names.pair_name(1e-3) == names.DEFAULT_PAIR == "far_1e-03"
    assert names.door_name(1e-4) == "door_far_1e-04"
    assert metrics.far_key(1e-2) == names.rate_key(1e-2) == "1e-02"


@pytest.mark.parametrize("far", [1e-2, 1e-3, 1e-4, 3e-6])
def test_a_name_parses_back_to_its_rate(far: float) -> None:
    assert names.pair_rate(names.pair_name(far)) == pytest.approx(far)
    assert names.door_rate(names.door_name(far)) == pytest.approx(far)


@pytest.mark.parametrize("name", ["eer", "door_far_1e-03", "far_", "far_x", "personal far_1e-03"])
def test_other_names_are_no_pair_rate(name: str) -> None:
    assert names.pair_rate(name) is None


def test_a_pair_name_is_no_door_rate() -> None:
    assert names.door_rate("far_1e-03") is None
    assert names.door_rate("door_far_abc") is None
