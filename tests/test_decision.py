"""Where the door's threshold and fusion rule come from, and the frame-agreement window and
cooldown on a fake clock (frame time stamps are the only clock the door's machine reads)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import Doorway, scored, verdict

from twinlock.daemon.config.loader import parse_config
from twinlock.daemon.door.rules import AgreementWindow
from twinlock.daemon.errors import ModelError
from twinlock.daemon.recognition.fusion import decision_settings
from twinlock.trainer.evaluation.door_eval import first_unlock

PAIR = {"far_1e-02": 0.92, "far_1e-03": 0.98, "eer": 0.5}
DOOR = PAIR | {"door_far_1e-03": 0.996, "door_far_1e-04": 0.998}
CALIBRATED = {"door": {"fusion": "centroid", "residents": 5, "anchors_per_resident": 5}}


def test_a_pair_calibrated_model_keeps_its_default_and_the_share_rule(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="twinlock.daemon.recognition.fusion"):
        assert decision_settings(PAIR, "far_1e-03", {}) == (0.98, "far_1e-03", "share")
    assert "no door calibration" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="twinlock.daemon.recognition.fusion"):
        decision_settings(DOOR, "door_far_1e-03", CALIBRATED)
    assert not caplog.text


def test_a_door_calibrated_model_brings_its_threshold_and_rule() -> None:
    assert decision_settings(DOOR, "door_far_1e-03", CALIBRATED) == \
        (0.996, "door_far_1e-03", "centroid")


def test_a_model_without_far_1e_03_opens_at_its_own_default() -> None:
    """The old daemon asked for far_1e-03 whatever the model said, and stayed shut."""
    thresholds = {"far_1e-02": 0.9, "eer": 0.4}
    assert decision_settings(thresholds, "far_1e-02", {}) == (0.9, "far_1e-02", "share")


def test_config_overrides_are_used_and_said_out_loud(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="twinlock.daemon.recognition.fusion"):
        assert decision_settings(DOOR, "door_far_1e-03", CALIBRATED,
                                 threshold_name="door_far_1e-04") == \
            (0.998, "door_far_1e-04", "centroid")
    assert "overrides the model's default_threshold door_far_1e-03" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="twinlock.daemon.recognition.fusion"):
        assert decision_settings(DOOR, "door_far_1e-03", CALIBRATED, fusion="max")[2] == "max"
    assert "calibrated for fusion 'centroid'" in caplog.text
    assert decision_settings(DOOR, "door_far_1e-03", CALIBRATED, threshold=0.5) == \
        (0.5, "verification.threshold", "centroid")


def test_a_missing_threshold_keeps_the_door_shut_with_a_reason() -> None:
    with pytest.raises(ModelError, match="no calibrated threshold 'far_1e-04'.*far_1e-02"):
        decision_settings(PAIR, "far_1e-03", {}, threshold_name="far_1e-04")
    with pytest.raises(ModelError, match="names it as its default_threshold"):
        decision_settings({"eer": 0.5}, "far_1e-03", {})


def test_the_shipped_config_leaves_threshold_and_rule_to_the_model() -> None:
    text = (Path(__file__).parents[1] / "config.yaml").read_text()
    v = parse_config(text, "config.yaml").verification
    assert v.threshold is None and v.threshold_name is None and v.fusion is None


# -- the agreement window on a fake clock ----------------------------------------------------

def test_k_of_the_last_n_frames_within_t_seconds() -> None:
    window = AgreementWindow(3, 5, 1.0)
    assert window.add(0.0, "ana") is None
    assert window.add(0.1, None) is None
    assert window.add(0.2, "ana") is None
    assert window.add(0.3, "bo") is None  # another user's frame is no vote for ana
    assert window.add(0.4, "ana") == "ana"


def test_frames_older_than_t_no_longer_count() -> None:
    window = AgreementWindow(3, 5, 1.0)
    window.add(0.0, "ana")
    window.add(0.5, "ana")
    assert window.add(1.2, "ana") is None  # the first one is 1.2 s old
    assert window.add(1.4, "ana") == "ana"


def test_only_the_last_n_frames_count() -> None:
    window = AgreementWindow(2, 3, 10.0)
    window.add(0.0, "ana")
    for t in (0.1, 0.2, 0.3):
        window.add(t, None)
    assert window.add(0.4, "ana") is None  # the first vote fell out of the last 3
    assert window.add(0.5, "ana") == "ana"


def test_the_sequence_simulation_ages_the_window_like_the_daemon() -> None:
    times = [0.0, 0.1, 0.2, 1.5, 1.6]
    users = ["ana", "ana", None, "ana", "ana"]
    face = [True, True, False, True, True]
    # a face gone for more than t ends the attempt: the first two votes do not carry over
    assert first_unlock(times, users, face, 3, 5, 1.0) is None
    assert first_unlock(times, users, face, 3, 5, 2.0) == (3, "ana")
    assert first_unlock(times, users, face, 2, 2, 1.0) == (1, "ana")


# -- cooldown through the door's state machine -----------------------------------------------

def _door(tmp_path: Path, cooldown: float) -> Doorway:
    cfg = parse_config(
        "verification: {frames_required: 2, frame_window: 3, window_seconds: 2}\n"
        f"action: {{type: log, cooldown_seconds: {cooldown}}}\n"
        "liveness: {mode: off}\n", "test.yaml")  # the rules of recognition alone
    return Doorway(cfg, tmp_path / "audit.db")


def test_cooldown_swallows_the_rest_of_the_visit_then_a_new_visit_opens(tmp_path: Path) -> None:
    door = _door(tmp_path, cooldown=5.0)
    times = [0.0, 0.2, 0.4, 0.6, 4.9, 5.1, 5.3]
    for i, now in enumerate(times):
        door.step(now, i, scored(verdict("ana"), i))
    # opened at 0.2 (2 of 3); frames until 5.2 are the same visit; 5.3 is a new first vote
    assert door.unlocks() == ["ana"]
    door.step(5.5, 7, scored(verdict("ana"), 7))
    assert door.unlocks() == ["ana", "ana"]
    with door.audit as audit:
        unlocks = audit.query(event="unlock")
    assert sorted(u.frame for u in unlocks) == [1, 7]


def test_without_cooldown_the_next_two_frames_open_again(tmp_path: Path) -> None:
    door = _door(tmp_path, cooldown=0.0)
    for i, now in enumerate([0.0, 0.1, 0.2, 0.3]):
        door.step(now, i, scored(verdict("ana"), i))
    assert len(door.unlocks()) == 2  # frames 0+1, then 2+3: the window starts empty after each


LADDER = [[1e-2, 0.90], [1e-3, 0.98], [1e-4, 0.995]]
FITTED = {"door": CALIBRATED["door"] | {"one_resident": {"anchors": 5, "ladder": LADDER}}}


def test_the_threshold_follows_the_number_of_residents() -> None:
    """A stranger passes if they pass for anyone: the door asks the one-resident ladder for
    target / R, interpolating in log rate between rungs."""
    one, source, rule = decision_settings(DOOR, "door_far_1e-03", FITTED, residents=1)
    assert (one, rule) == (0.98, "centroid") and "1 resident" in source
    ten, _, _ = decision_settings(DOOR, "door_far_1e-03", FITTED, residents=10)
    assert ten == pytest.approx(0.995)
    three, _, _ = decision_settings(DOOR, "door_far_1e-03", FITTED, residents=3)
    # 1e-3 / 3 lies log(3)/log(10) of the way from the 1e-3 rung to the 1e-4 rung
    assert three == pytest.approx(0.98 + np.log10(3) * 0.015)
    assert 0.98 < three < 0.995


def test_past_the_last_rung_the_strictest_is_kept_and_said(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="twinlock.daemon.recognition.fusion"):
        value, _, _ = decision_settings(DOOR, "door_far_1e-04", FITTED, residents=4)
    assert value == 0.995 and "below the strictest measured" in caplog.text


def test_named_or_numeric_thresholds_and_ladderless_models_are_not_fitted() -> None:
    assert decision_settings(DOOR, "door_far_1e-03", FITTED, threshold_name="door_far_1e-03",
                             residents=1)[0] == 0.996
    assert decision_settings(DOOR, "door_far_1e-03", FITTED, threshold=0.5,
                             residents=1)[0] == 0.5
    assert decision_settings(DOOR, "door_far_1e-03", CALIBRATED, residents=1)[0] == 0.996
    assert decision_settings(DOOR, "door_far_1e-03", FITTED, fusion="max",
                             residents=1)[0] == 0.996  # another rule: its calibration is void


def test_the_shipped_ladder_is_monotone_and_brackets_its_own_door_threshold() -> None:
    """models/default: stricter thresholds for rarer strangers, and its R = 5 door threshold
    sits near the one-resident 1e-3 / 5 rung (the union bound; measured 4.4x at R = 5)."""
    import json

    from conftest import REPO

    meta = json.loads((REPO / "models" / "default" / "model.json").read_text())
    ladder = meta["metrics"]["door"]["one_resident"]["ladder"]
    rungs = sorted(ladder)
    assert [t for _, t in rungs] == sorted((t for _, t in rungs), reverse=True)
    five, _, _ = decision_settings(meta["thresholds"], meta["default_threshold"],
                                   meta["metrics"], residents=5)
    assert abs(five - meta["thresholds"]["door_far_1e-03"]) < 0.002
    one, _, _ = decision_settings(meta["thresholds"], meta["default_threshold"],
                                  meta["metrics"], residents=1)
    assert one < five
