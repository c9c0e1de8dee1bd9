"""benchmarks/review_loop.py's core on a few real LFW people: the door's refused knocks come home
as review records, the household labels them through ``label_as`` (the enrolment gate), the
door is redeployed from the enrolment store, and what is counted adds up."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import review_loop as rl

from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.trainer.household.enroll import enroll_from_images
from twinlock.trainer.household.enroll_store import EnrolmentStore

RESIDENTS = ("Andre_Agassi", "Angelina_Jolie", "Andy_Roddick")
STRANGERS = ("Al_Gore", "Aaron_Peirsol")


@pytest.fixture(scope="module")
def knocks(lfw_dir: Path, door_model: Path) -> dict[str, list[rl.Knock]]:
    found, _, _ = rl.door_knocks(door_model, lfw_dir, RESIDENTS + STRANGERS)
    return {person: k[:8] for person, k in found.items()}


def _shipped(door_model: Path) -> rl.Calibration:
    meta = FaceEmbedder(door_model).meta
    return meta.thresholds, meta.default_threshold, meta.metrics


def test_labelling_refused_knocks_lets_residents_in_and_counts_add_up(
        knocks: dict[str, list[rl.Knock]], door_model: Path, tmp_path: Path) -> None:
    assert set(knocks) == set(RESIDENTS + STRANGERS)
    out = rl.review_loop(door_model, knocks, door_size=3, workdir=tmp_path,
                         calibration=_shipped(door_model), ks=(1, 3))
    # everyone with two photos or more may be seated; one door of three, each enrolled from one
    candidates = [p for p in knocks if len(knocks[p]) >= 2]
    assert out["doors"] == len(candidates) // 3 == 1
    assert out["residents"] == 3
    resident_knocks = sum(len(knocks[p]) - 1 for p in out["resident_names"])
    stranger_knocks = sum(len(k) for p, k in knocks.items() if p not in out["resident_names"])
    for row in rl.summarise(out["counts"]):
        labels, res = row["labels"], row["residents"]
        # every labelled attempt went through the gate: kept, or refused with its reason
        assert labels["labelled"] == labels["enrolled"] + sum(
            n for key, n in labels.items() if key.startswith("refused: "))
        assert 0 < labels["labelled"] <= row["k"] * out["residents"]
        # residents are measured on the knocks that were not labelled, the same both times
        assert res["knocks"] == resident_knocks - labels["labelled"]
        assert res["refused_before"] > 0
        # the chips the door kept, enrolled, let the residents in more often
        assert res["accepted_after"] > res["accepted_before"]
        assert row["strangers"]["before"]["knocks"] == stranger_knocks
        assert row["strangers"]["after"]["accepted"] <= row["strangers"]["after"]["knocks"]


def test_the_doors_batch_count_is_the_verifiers_own_decision(
        knocks: dict[str, list[rl.Knock]], door_model: Path, tmp_path: Path) -> None:
    meta = FaceEmbedder(door_model).meta
    with EnrolmentStore(tmp_path / "enrolment.db") as store:
        for person in RESIDENTS:
            assert enroll_from_images(store, person, [k.path for k in knocks[person][:2]],
                                      door_model).accepted
        door = rl.Door(store, door_model, meta, _shipped(door_model), tmp_path / "gallery.json")
    probes = np.stack([k.embedding for ks in knocks.values() for k in ks])
    one_by_one = sum(door.who(p) is not None for p in probes)
    assert 0 < one_by_one < len(probes)
    assert door.accepted(probes) == one_by_one


def test_the_calibration_is_measured_on_the_people_it_is_given_only(
        lfw_dir: Path, door_model: Path) -> None:
    """``calibrate`` reads only the photos of the people it is handed (the benchmark hands it
    one half and knocks with the other): the same people give the same thresholds whoever
    else is in the photos, other people give others; and the result is what the daemon's
    ``decision_settings`` reads."""
    from twinlock.daemon.recognition.fusion import decision_settings

    _, _, photos = rl.door_knocks(door_model, lfw_dir, RESIDENTS + STRANGERS)
    _, _, fewer = rl.door_knocks(door_model, lfw_dir, RESIDENTS)
    calibration, summary = rl.calibrate(door_model, photos, np.arange(3), 3, 0)
    again, _ = rl.calibrate(door_model, fewer, np.arange(3), 3, 0)
    other, _ = rl.calibrate(door_model, photos, np.array([0, 1, 3]), 3, 0)
    assert calibration[0] == again[0] and summary["ladders_by_anchors"]
    assert calibration[0] != other[0]
    threshold, said, _ = decision_settings(*calibration, residents=3)
    assert threshold == calibration[0]["door_far_1e-03"] and "3 resident(s)" in said
