"""``--loss distill``: a compact student distilled from the imported dlib tower, online.

The teacher (the Keras rebuild of dlib's ResNet, ``dlib_resnet.py``) is frozen and runs inside
the training step on the very view the student sees (``data/views.py``), so its outputs are
never cached: function matching, after Beyer et al. 2022. The loss is ``1 - cos(student,
teacher)``; no labels are needed, so unlabelled faces (``--unlabelled``: folders, videos) add
views. Labels still serve what they serve for every loss: validation AUC on held-out
identities each epoch (best checkpoint), the L1 head and the thresholds (``TrainLoop.finish``).

This supersedes the offline distillation of ``teacher.py`` (dlib's embeddings of fixed crops,
computed once) for ``--loss distill``; that path stays only as cosface's auxiliary
``--distill-weight`` term, which reproduces the shipped models/compact.

Checkpoints, resume, early stopping and curves are the ordinary loop's (``TrainLoop``): an epoch
is ``--steps-per-epoch`` steps, and each epoch ends with a checkpoint, so an interrupted run
resumes at the last finished epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from twinlock.daemon.errors import DataError
from twinlock.daemon.faces.pipeline import DetectorSpec

from ..data.views import Canvases, ViewAugment, ViewSpec, list_unlabelled, make_canvases, make_views
from .config import TrainConfig
from .model import build_tower
from .prepare import PreparedData
from .trainloop import TrainLoop

logger = logging.getLogger(__name__)

#: --init-from: the rebuilt Keras tower must embed like the file it was read from (int8
#: rounding of the activations is all that separates them; measured 0.9998 on models/compact)
MIN_INIT_PARITY = 0.99


def cosine_distance(teacher: tf.Tensor, student: tf.Tensor) -> tf.Tensor:
    """mean(1 - cos): only the direction counts (the door unit-normalises the student, and the
    dlib descriptors' lengths vary)."""
    t = tf.math.l2_normalize(tf.cast(teacher, student.dtype), axis=1)
    s = tf.math.l2_normalize(student, axis=1)
    return tf.reduce_mean(1.0 - tf.reduce_sum(t * s, axis=1))


@keras.saving.register_keras_serializable(package="twinlock")
class OnlineDistiller(keras.Model):
    """Student crops and teacher chips in; the student learns the frozen teacher's direction.

    ``call`` is the student alone (what embedding and export use); ``train_step`` runs the
    teacher on the chips of the same views, without gradients.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.student, self.teacher = student, teacher
        self.teacher.trainable = False
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.student(inputs, training=training)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker]

    def distill_loss(self, student_x: tf.Tensor, teacher_x: tf.Tensor,
                     training: bool) -> tf.Tensor:
        target = tf.stop_gradient(self.teacher(teacher_x, training=False))
        return cosine_distance(target, self.student(student_x, training=training))

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        # batches are (student crops, teacher chips): Keras reads them as (x, y)
        student_x, teacher_x, _ = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss = self.distill_loss(student_x, teacher_x, training=True)
            scaled = loss / replicas  # the optimizer sums the replicas' gradients
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables,
                                           strict=True))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def view_spec(cfg: TrainConfig) -> ViewSpec:
    """The student's crop is the run's crop (size, template, zoom); the teacher's is dlib's."""
    from .dlib_resnet import CHIP_SIZE

    return ViewSpec(cfg.input_size, cfg.template, cfg.zoom, CHIP_SIZE,
                    detector=DetectorSpec(**cfg.detector))


def build_teacher(cfg: TrainConfig) -> keras.Model:
    """The frozen teacher named by ``cfg.teacher`` (only the imported dlib tower today)."""
    from .dlib_resnet import dlib_resnet_tower

    teacher = dlib_resnet_tower()
    teacher.trainable = False
    return teacher


class OnlineDistillLoop(TrainLoop):
    """TrainLoop whose epochs are online-distillation views of canvases instead of crop batches.

    Views come from the training identities' images (never the validation identities, whose
    crops measure the student each epoch, nor the --holdout-pairs people, removed before the
    split) and from --unlabelled files.
    """

    def __init__(self, cfg: TrainConfig, data: PreparedData, run_dir: Path, progress: bool,
                 canvases: Canvases | None = None, views: bool = True) -> None:
        """``views=False``: no canvases, for measuring or finishing a checkpoint (no training)."""
        if not cfg.recipe.online_teacher:
            raise RuntimeError("OnlineDistillLoop trains --loss distill")
        self._setup(cfg, data, run_dir, progress)
        self.spec = view_spec(cfg)
        self.augment = ViewAugment(mixup=cfg.mixup) if cfg.augment else ViewAugment.none()
        self.canvases = canvases if canvases is not None or not views \
            else self._canvases(progress)
        if self.canvases is not None:
            logger.info("distillation views from %d faces (student %d px %s, teacher %d px %s)",
                        len(self.canvases), self.spec.student_size, self.spec.student_template,
                        self.spec.teacher_size, self.spec.teacher_template)
        with self.strategy.scope():
            self.tower = build_tower(cfg.architecture, cfg.input_size, cfg.channels,
                                     cfg.embedding_dim, cfg.width)
            self.model = OnlineDistiller(self.tower, build_teacher(cfg), name="online_distiller")
            self.model(tf.zeros((1, cfg.input_size, cfg.input_size, cfg.channels)))
            self.optimizer = self._make_optimizer()
            self.model.compile(optimizer=self.optimizer)
        logger.info("student %s: %d parameters; teacher %s: %d (frozen)", self.tower.name,
                    self.tower.count_params(), self.model.teacher.name,
                    self.model.teacher.count_params())

    def _canvases(self, progress: bool) -> Canvases:
        paths = [self.data.paths[i] for i in self.data.train_idx]
        parts = [make_canvases(paths, self.spec, progress=progress)]
        if self.cfg.unlabelled:
            parts.append(make_canvases(list_unlabelled(self.cfg.unlabelled), self.spec,
                                       progress=progress))
        canvases = Canvases.concat(parts)
        if len(canvases) < 2:
            raise DataError("distillation needs at least 2 faces to make views from")
        return canvases

    @property
    def starts_trained(self) -> bool:
        return bool(self.cfg.init_from)

    def _trained_baseline(self, state: dict[str, Any]) -> None:
        """--init-from: the student starts as the exported tower (epoch 0 is its validation AUC,
        so a run is kept only where distillation beats it)."""
        from .warm_start import read_init_model, warm_start

        if self.canvases is None:
            raise RuntimeError("this loop was built without views (views=False)")
        init = read_init_model(Path(self.cfg.init_from))
        if init.model_id != self.cfg.init_model_id:
            raise DataError(f"--init-from {init.model_dir}: model {init.model_id}, but the run "
                            f"was set up for {self.cfg.init_model_id}")
        rng = np.random.default_rng(self.cfg.seed)
        idx = np.sort(rng.choice(len(self.canvases), min(512, len(self.canvases)), replace=False))
        crops, _ = make_views(self.canvases.pixels[idx], self.canvases.to_student[idx],
                              self.canvases.to_teacher[idx], self.spec, ViewAugment.none())
        worst = warm_start(self.tower, init, np.round(np.asarray(crops)).clip(0, 255)
                           .astype(np.uint8))
        if worst < MIN_INIT_PARITY:
            raise DataError(f"--init-from {init.model_dir}: the rebuilt tower's embeddings differ "
                            f"from its file's (worst cosine {worst:.4f} < {MIN_INIT_PARITY})")
        super()._trained_baseline(state)

    def epoch_samples(self, epoch: int, mined: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """This epoch's canvases, drawn with replacement, seeded by the epoch."""
        if self.canvases is None:
            raise RuntimeError("this loop was built without views (views=False)")
        rng = np.random.default_rng([self.cfg.seed, epoch])
        return (rng.integers(0, len(self.canvases), self.cfg.steps_per_epoch * self.cfg.batch_size),)

    def _dataset(self, samples: tuple[np.ndarray, ...]) -> tf.data.Dataset:
        assert self.canvases is not None  # epoch_samples checked
        return view_batches(self.canvases, samples[0], self.cfg.batch_size, self.spec,
                            self.augment)


def view_batches(canvases: Canvases, idx: np.ndarray, batch_size: int, spec: ViewSpec,
                 augment: ViewAugment) -> tf.data.Dataset:
    """Batches of (student crops, teacher chips) of the canvases ``idx``, in that order.

    The canvases stay in numpy (about 90 kB each, too many for a graph constant); each batch is
    gathered by index, then augmented in the graph.
    """
    size = spec.canvas_size

    def gather(i: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return canvases.pixels[i], canvases.to_student[i], canvases.to_teacher[i]

    @tf.autograph.experimental.do_not_convert  # straight-line code: nothing to convert
    def load(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        pixels, to_s, to_t = tf.numpy_function(gather, [i], [tf.uint8, tf.float32, tf.float32])
        pixels.set_shape([batch_size, size, size, 3])
        to_s.set_shape([batch_size, 2, 3])
        to_t.set_shape([batch_size, 2, 3])
        return pixels, to_s, to_t

    @tf.autograph.experimental.do_not_convert
    def views(c: tf.Tensor, s: tf.Tensor, t: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return make_views(c, s, t, spec, augment)

    ds = tf.data.Dataset.from_tensor_slices(idx.astype(np.int64)).batch(batch_size, True)
    ds = ds.map(load, tf.data.AUTOTUNE).map(views, tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
