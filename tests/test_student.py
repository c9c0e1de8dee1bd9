"""Online distillation (``--loss distill --teacher dlib-resnet``): the views, the step, resume.

Real LFW faces, detected and aligned by the door's own code; a few steps each.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from train_helpers import check_restore, kill_after_first_epoch

from twinlock.daemon.errors import UsageError
from twinlock.daemon.faces.align import align_face
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.faces.pipeline import DetectorSpec, select_face
from twinlock.trainer.cli import main
from twinlock.trainer.training.config import TrainConfig


def _lfw_images(lfw_dir: Path, n: int) -> list[Path]:
    """The first image of the first ``n`` people (sorted): a fixed handful of real faces."""
    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir())[:n]
    return [min(p.iterdir()) for p in people]


def _canvases(lfw_dir: Path, n: int, student_size: int, template: str = "dlib-4pt"):
    from twinlock.trainer.data.views import ViewSpec, make_canvases

    spec = ViewSpec(student_size, template)
    return spec, make_canvases(_lfw_images(lfw_dir, n), spec, use_cache=False, progress=False)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _homogeneous(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def test_config_for_online_distillation(tmp_path: Path) -> None:
    cfg = TrainConfig(data=[str(tmp_path)], loss="distill")
    assert cfg.teacher == "dlib-resnet" and cfg.template == "dlib-4pt"
    assert cfg.recipe.online_teacher and not cfg.offline_teacher and cfg.l2_normalize
    with pytest.raises(UsageError, match="--teacher"):
        TrainConfig(data=[str(tmp_path)], loss="cosface", teacher="dlib-resnet")
    with pytest.raises(UsageError, match="RGB"):
        TrainConfig(data=[str(tmp_path)], loss="distill", channels=1)
    with pytest.raises(UsageError, match="--mixup"):
        TrainConfig(data=[str(tmp_path)], loss="distill", mixup=1.5)
    with pytest.raises(UsageError, match="--init-from goes with --loss distill"):
        TrainConfig(data=[str(tmp_path)], loss="cosface", init_from="models/compact",
                    init_model_id="4a2d4b3a1b1b09d7")


@pytest.mark.data
@pytest.mark.parametrize(("size", "template"), [(96, "dlib-4pt"), (64, "arcface-4pt")])
def test_unaugmented_views_are_the_doors_crops(lfw_dir: Path, size: int, template: str) -> None:
    """With no augmentation, the student crop and the teacher chip are what the door's
    ``align_face`` cuts from the photo (the canvas adds one bilinear resampling), for the
    student's own template too (models/compact's arcface-4pt frames more of the head than the
    teacher's chip, so it must still fit the canvas)."""
    import tensorflow as tf

    from twinlock.trainer.data.views import ViewAugment, make_views

    spec, canvases = _canvases(lfw_dir, 3, size, template)
    student, teacher = make_views(tf.constant(canvases.pixels), canvases.to_student,
                                  canvases.to_teacher, spec, ViewAugment.none())
    detector = DetectorSpec().build(1)
    for i, source in enumerate(canvases.sources):
        image = load_image(source)
        face = select_face(detector.detect(image), image.shape, "center")
        door_student = align_face(image, face, size, 1.0, template).astype(np.float32)
        door_teacher = align_face(image, face, 150, 1.0, "dlib-4pt").astype(np.float32)
        assert np.abs(student[i].numpy() - door_student).mean() < 4.0
        assert np.abs(teacher[i].numpy() - door_teacher).mean() < 4.0
        # and not trivially: another person's door crop is far away
        other = (i + 1) % len(canvases)
        assert np.abs(student[other].numpy() - door_student).mean() > 15.0


@pytest.mark.data
def test_teacher_and_student_see_the_same_augmented_view(lfw_dir: Path) -> None:
    """Canvases whose pixels encode their own coordinates: every student pixel p and the teacher
    pixel q = M_t M_s^-1 p must show the same canvas point under any view transform, lighting
    and mixup (all linear here), which holds only if both crops come from one transform, one
    lighting change and one mixup partner and weight per sample."""
    import tensorflow as tf

    from twinlock.trainer.data.views import ViewAugment, make_views

    spec, canvases = _canvases(lfw_dir, 5, 96)
    c = spec.canvas_size
    yy, xx = np.mgrid[0:c, 0:c].astype(np.float32)
    coords = np.stack([60 + 0.5 * xx, 60 + 0.5 * yy, 60 + 0.25 * (xx + yy)], axis=-1)
    batch = np.repeat(coords[None], len(canvases), axis=0)
    # strong rotation, lighting, grey and mixup; shifts and zooms small enough that views stay
    # (nearly) inside the canvas, whose border fill is the one non-linear step
    aug = ViewAugment(rotation_deg=12.0, scale=0.1, shift=0.03, mixup=1.0, grey=0.5)
    tf.random.set_seed(7)
    student, teacher = (v.numpy() for v in make_views(
        tf.constant(batch), canvases.to_student, canvases.to_teacher, spec, aug))
    plain, _ = make_views(tf.constant(batch), canvases.to_student, canvases.to_teacher, spec,
                          ViewAugment.none())
    assert np.abs(student - plain.numpy()).mean() > 3.0  # the views really were augmented
    s = spec.student_size
    py, px = np.mgrid[4:s - 4, 4:s - 4].astype(np.float64)
    ones = np.ones_like(px)
    for i in range(len(canvases)):
        to_q = _homogeneous(canvases.to_teacher[i]) @ np.linalg.inv(
            _homogeneous(canvases.to_student[i]))
        qx, qy, _ = np.tensordot(to_q, np.stack([px, py, ones]), axes=1)
        inside = (qx > 1) & (qx < spec.teacher_size - 2) & (qy > 1) & (qy < spec.teacher_size - 2)
        assert inside.mean() > 0.9
        sampled = _bilinear(teacher[i].astype(np.float64), qx[inside], qy[inside])
        got = student[i][py[inside].astype(int), px[inside].astype(int)]
        # points whose source falls off the canvas (border fill, corners of rotated views) may
        # differ; with two different transforms nearly every pixel would
        wrong = np.abs(sampled - got).max(axis=-1) > 0.05
        assert wrong.mean() < 0.1, f"sample {i}: {wrong.mean():.3f} of pixels disagree"


@pytest.mark.data
def test_distillation_loss_falls_on_a_fixed_batch(lfw_dir: Path) -> None:
    """A few steps on one fixed batch of views bring the student towards the teacher; the
    teacher does not move."""
    import keras
    import tensorflow as tf

    from twinlock.trainer.data.views import ViewAugment, make_views
    from twinlock.trainer.training.model import compact_tower
    from twinlock.trainer.training.student import OnlineDistiller, build_teacher

    spec, canvases = _canvases(lfw_dir, 8, 64)
    keras.utils.set_random_seed(0)
    student_x, teacher_x = make_views(tf.constant(canvases.pixels), canvases.to_student,
                                      canvases.to_teacher, spec, ViewAugment())
    cfg = TrainConfig(data=["-"], loss="distill", input_size=64)
    model = OnlineDistiller(compact_tower(64, 3, 128, width=8), build_teacher(cfg))
    model(tf.zeros((1, 64, 64, 3)))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    teacher_before = [w.copy() for w in model.teacher.get_weights()]
    first = float(model.distill_loss(student_x, teacher_x, training=False))
    for _ in range(30):
        model.train_on_batch(student_x, teacher_x)
    last = float(model.distill_loss(student_x, teacher_x, training=False))
    assert first > 0.5 and last < 0.6 * first, (first, last)
    for before, after in zip(teacher_before, model.teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.data
@pytest.mark.slow
def test_killed_distillation_resumes_from_its_checkpoint(tmp_path: Path, orl_dir: Path,
                                                         crop_cache: Path) -> None:
    """--loss distill under MirroredStrategy (one replica here), killed after an epoch: the
    loop restores that epoch's weights and optimizer step exactly, and the resumed run keeps
    the finished epochs and completes the rest."""
    run_dir = tmp_path / "run"
    argv = ["train", "--data", str(orl_dir), "--out", str(run_dir), "--loss", "distill",
            "--teacher", "dlib-resnet", "--input-size", "64", "--width", "8", "--epochs", "3",
            "--steps-per-epoch", "15", "--batch-size", "8", "--val-fraction", "0.25",
            "--strategy", "mirrored", "--seed", "1"]
    done, stderr, before = kill_after_first_epoch(argv, run_dir, crop_cache, 400)
    assert 1 <= done < 3, stderr[-2000:]
    assert "MirroredStrategy" in stderr

    from twinlock.trainer.training.prepare import prepare_data
    from twinlock.trainer.training.runs import load_run_config
    from twinlock.trainer.training.student import OnlineDistillLoop

    cfg = load_run_config(run_dir)
    loop = OnlineDistillLoop(cfg, prepare_data(cfg, progress=False), run_dir, progress=False)
    assert loop.strategy.num_replicas_in_sync == 1
    check_restore(loop, run_dir, done)

    assert main(["train", "--resume", str(run_dir)]) == 0
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert rows[:done] == before
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert (run_dir / "tower.keras").is_file() and (run_dir / "head.json").is_file()


COMPACT = Path(__file__).resolve().parents[1] / "models" / "compact"


@pytest.mark.data
def test_warm_start_rebuilds_the_exported_tower(lfw_dir: Path) -> None:
    """--init-from reads models/compact's int8 file back into a trainable Keras tower: it embeds
    real faces as the file does, in inference and (batch statistics) in training mode alike,
    and a tower of another shape is refused."""
    import tensorflow as tf

    from twinlock.daemon.errors import DataError
    from twinlock.trainer.data.views import ViewAugment, make_views
    from twinlock.trainer.training.model import compact_tower
    from twinlock.trainer.training.warm_start import embedding_parity, read_init_model, warm_start

    init = read_init_model(COMPACT)
    assert (init.input_size, init.template, init.width) == (64, "arcface-4pt", 32)
    spec, canvases = _canvases(lfw_dir, 40, init.input_size, init.template)
    crops, _ = make_views(tf.constant(canvases.pixels), canvases.to_student,
                          canvases.to_teacher, spec, ViewAugment.none())
    crops = np.round(crops.numpy()).clip(0, 255).astype(np.uint8)
    tower = compact_tower(init.input_size, 3, init.embedding_dim, init.width)
    random_parity = embedding_parity(tower, init, crops)
    assert random_parity < 0.9  # a random tower is nowhere near the file
    assert warm_start(tower, init, crops) > 0.999
    x = crops.astype(np.float32)
    infer, train = (np.array(tower(x, training=t)) for t in (False, True))
    infer /= np.linalg.norm(infer, axis=1, keepdims=True)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    assert np.sum(infer * train, axis=1).mean() > 0.97
    with pytest.raises(DataError, match="is \\(3, 3, 3, 16\\)"):
        warm_start(compact_tower(init.input_size, 3, 128, 16), init, crops)
    with pytest.raises(DataError, match="only compact towers"):
        read_init_model(COMPACT.parent / "default")


@pytest.mark.data
def test_distillation_starts_from_an_exported_model(tmp_path: Path, orl_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`train --loss distill --init-from models/compact`: the run takes the model's crop and
    width, its epoch 0 is the model itself, and one step later it still tells ORL's people
    apart as well as a trained tower does (a random student scores far lower)."""
    import json

    run_dir = tmp_path / "run"
    base = ["train", "--data", str(orl_dir), "--loss", "distill", "--init-from", str(COMPACT),
            "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8",
            "--val-fraction", "0.3"]
    assert main([*base, "--input-size", "112", "--out", str(run_dir)]) == 2
    assert "--input-size 112 does not fit" in capsys.readouterr().err
    assert main([*base, "--out", str(run_dir)]) == 0
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert (config["input_size"], config["template"], config["width"]) == (64, "arcface-4pt", 32)
    assert config["init_model_id"] == json.loads((COMPACT / "model.json").read_text())["model_id"]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["best_auc"] > 0.95, state
