"""The TensorFlow part of training: models, tf.data, epochs, checkpoints, early stopping.

Separate from train.py so that loading data and reading run folders never imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from twinlock.daemon.recognition.scoring import unit
from twinlock.daemon.storage.files import atomic_writer, durable_replace

from ..data.augment import AugmentConfig, augment_batch
from ..stats import metrics
from .config import IMPORTED, TrainConfig
from .embed import cosine_pair_scores, head_pair_scores, keras_embed
from .head import fit_l1_head, temperature_scale
from .model import build_tower
from .prepare import PreparedData, epoch_samples, model_input, source_groups, validation_pairs
from .runs import (
    CHECKPOINT_DIR,
    CURVES_FILE,
    HEAD_FILE,
    METRICS_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TOWER_FILE,
    atomic_write_json,
    checkpoint_path,
    write_history,
)

logger = logging.getLogger(__name__)


class TrainLoop:
    #: the checkpoint ``finish`` turns into the model: the epoch with the best validation AUC
    kept_checkpoint = "best"

    def __init__(self, cfg: TrainConfig, data: PreparedData, run_dir: Path, progress: bool) -> None:
        self._setup(cfg, data, run_dir, progress)
        # pixels in the model's format, held once as a constant the input pipeline gathers from
        self.x_train = tf.constant(model_input(data, cfg, data.train_idx))
        # cosface: classes are the training identities with enough images
        counts = np.bincount(self.train_labels)
        classes = np.flatnonzero(counts >= cfg.min_images_per_class)
        self.class_of = np.full(counts.shape[0], -1)
        self.class_of[classes] = np.arange(len(classes))
        self.cosface_images = np.flatnonzero(self.class_of[self.train_labels] >= 0)
        # distillation: the teacher's unit embedding of each training image (NaN rows: excluded)
        self.teacher = None
        if cfg.offline_teacher:
            if data.teacher is None:
                raise RuntimeError("distillation needs PreparedData.teacher")
            self.teacher = np.nan_to_num(data.teacher[data.train_idx]).astype(np.float32)
            has_teacher = np.isfinite(data.teacher[data.train_idx]).all(axis=1)
            self.distill_images = np.flatnonzero(has_teacher)
            self.cosface_images = self.cosface_images[has_teacher[self.cosface_images]]
            if not len(self.distill_images):
                from twinlock.daemon.errors import DataError
                raise DataError("the teacher found no face in any training image")
            logger.info("distillation: %d training images with a teacher embedding (of %d)",
                        len(self.distill_images), len(data.train_idx))
        with self.strategy.scope():
            self.tower = build_tower(cfg.architecture, cfg.input_size, cfg.channels,
                                     cfg.embedding_dim, cfg.width)
            self.loss_weights: list[float] | None = None
            self.model, loss = self._training_model(len(classes))
            self.optimizer = self._make_optimizer()
            self.model.compile(optimizer=self.optimizer, loss=loss,
                               loss_weights=self.loss_weights)
        logger.info("tower %s: %d parameters; training model %s",
                    self.tower.name, self.tower.count_params(), self.model.name)

    def _setup(self, cfg: TrainConfig, data: PreparedData, run_dir: Path, progress: bool) -> None:
        """What every loop needs: run folder, seed, strategy, labels and validation pairs."""
        self.cfg, self.data, self.run_dir, self.progress = cfg, data, run_dir, progress
        self.ckpt_dir = run_dir / CHECKPOINT_DIR
        self.ckpt_dir.mkdir(exist_ok=True)
        keras.utils.set_random_seed(cfg.seed)
        self.strategy = (tf.distribute.MirroredStrategy() if cfg.strategy == "mirrored"
                         else tf.distribute.get_strategy())
        if cfg.strategy == "mirrored":
            logger.info("MirroredStrategy over %d replica(s)", self.strategy.num_replicas_in_sync)
        self.train_labels = data.labels[data.train_idx]
        self.val_labels = data.labels[data.val_idx]
        self.val_pairs = validation_pairs(self.val_labels, cfg.val_different_pairs, cfg.seed,
                                          source_groups(data, data.val_idx))

    def _make_optimizer(self) -> keras.optimizers.Optimizer:
        """AdamW on a cosine schedule over the whole run (build it inside the strategy's scope)."""
        cfg = self.cfg
        schedule = keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=max(cfg.epochs * cfg.steps_per_epoch, 1), alpha=0.02,
            warmup_target=None, warmup_steps=0)
        return keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)

    # -- models and data -------------------------------------------------------------------------

    def _training_model(self, n_classes: int) -> tuple[keras.Model, Any]:
        build = self.cfg.recipe.build
        assert build is not None, "a recipe with its own loop never reaches TrainLoop"
        built = build(self.tower, self.cfg, n_classes)
        self.loss_weights = built.loss_weights
        return built.model, built.loss

    def _dataset(self, samples: tuple[np.ndarray, ...]) -> tf.data.Dataset:
        cfg, x = self.cfg, self.x_train
        aug = AugmentConfig() if cfg.augment else None

        def images(idx: tf.Tensor) -> tf.Tensor:
            batch = tf.cast(tf.gather(x, idx), tf.float32)
            return augment_batch(batch, aug) if aug else batch

        batches = cfg.recipe.batches
        assert batches is not None, "a recipe with its own loop never reaches TrainLoop"
        ds = batches(self, samples, images)
        return ds.prefetch(tf.data.AUTOTUNE)

    def epoch_samples(self, epoch: int, mined: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """This epoch's pairs/triplets/images, as indices into the training images."""
        return epoch_samples(self.cfg, self.train_labels, epoch, mined)

    # -- evaluation ------------------------------------------------------------------------------

    def embed(self, idx: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        return keras_embed(self.tower, self.data.crops[idx], cfg.channels, cfg.flip_average,
                           cfg.l2_normalize)

    def head(self) -> tuple[np.ndarray, float] | None:
        """The twin's own head (bce only). An imported tower is judged by cosine during
        training: its baseline has no trained head to compare with."""
        if not self.cfg.recipe.twin_head or self.cfg.architecture == IMPORTED:
            return None
        kernel, bias = self.model.get_layer("head").get_weights()
        return kernel[:, 0], float(bias[0])

    def val_scores(self, head: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, ...]:
        emb = self.embed(self.data.val_idx)
        ia, ib, y = self.val_pairs
        head = head or self.head()
        scores = (head_pair_scores(emb, ia, ib, *head) if head else cosine_pair_scores(emb, ia, ib))
        return scores, y

    # -- checkpoints -----------------------------------------------------------------------------

    def _save_checkpoint(self, name: str) -> None:
        # written beside, fsynced and renamed, so a reader, a kill or a power cut never meets
        # half a file (state.json, which names the epoch, is written after both)
        tmp = checkpoint_path(self.run_dir, f"{name}.tmp")
        self.model.save_weights(tmp)
        durable_replace(tmp, checkpoint_path(self.run_dir, name))
        if name == "last":
            values = {f"v{i}": np.asarray(v) for i, v in enumerate(self.optimizer.variables)}
            with atomic_writer(self.ckpt_dir / OPTIMIZER_FILE, None) as handle:
                np.savez(handle, **values)  # type: ignore[arg-type]

    def _restore(self) -> dict[str, Any]:
        state_path = self.run_dir / STATE_FILE
        if not state_path.is_file():
            from twinlock.daemon.errors import UsageError
            raise UsageError(f"{self.run_dir}: nothing to resume (no {STATE_FILE})")
        state = json.loads(state_path.read_text())
        self.model.load_weights(checkpoint_path(self.run_dir, "last"))
        with self.strategy.scope():
            self.optimizer.build(self.model.trainable_variables)
        with np.load(self.ckpt_dir / OPTIMIZER_FILE) as saved:
            values = [saved[f"v{i}"] for i in range(len(saved.files))]
        if len(values) != len(self.optimizer.variables):
            raise RuntimeError("optimizer checkpoint does not match the model")
        for var, value in zip(self.optimizer.variables, values, strict=True):
            var.assign(value)
        logger.info("resumed after epoch %d (best val AUC %.4f at epoch %d)",
                    state["epoch"], state["best_auc"], state["best_epoch"])
        return state

    # -- the loop --------------------------------------------------------------------------------

    def run(self, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        state: dict[str, Any] = {"epoch": 0, "best_auc": -1.0, "best_epoch": 0, "bad_epochs": 0,
                                 "history": {"loss": [], "val_auc": [], "val_eer": [],
                                             "seconds": []}}
        if resume:
            state = self._restore()
        history = state["history"]
        if not resume and self.starts_trained:
            self._trained_baseline(state)
        for epoch in range(state["epoch"], cfg.epochs):
            if state["bad_epochs"] >= cfg.patience:
                break
            started = time.monotonic()
            keras.utils.set_random_seed(cfg.seed * 1000 + epoch)
            mined = (self.embed(self.data.train_idx)
                     if cfg.hard_negatives > 0 and epoch > 0 and cfg.recipe.mines_hard_negatives
                     else None)
            samples = self.epoch_samples(epoch, mined)
            logger.info("epoch %d/%d", epoch + 1, cfg.epochs)
            fit = self.model.fit(self._dataset(samples), epochs=1,
                                 verbose=1 if self.progress else 2)
            scores, y = self.val_scores()
            auc = metrics.roc_auc(scores, y)
            eer, _ = metrics.equal_error_rate(scores, y)
            history["loss"].append(float(fit.history["loss"][-1]))
            history["val_auc"].append(auc)
            history["val_eer"].append(eer)
            history["seconds"].append(time.monotonic() - started)
            logger.info("epoch %d: loss %.4f, val AUC %.4f, val EER %.4f (%.0f s)", epoch + 1,
                        history["loss"][-1], auc, eer, history["seconds"][-1])
            state["epoch"] = epoch + 1
            if auc > state["best_auc"] + 1e-4:
                state.update(best_auc=auc, best_epoch=epoch + 1, bad_epochs=0)
                self._save_checkpoint("best")
            else:
                state["bad_epochs"] += 1
            self._save_checkpoint("last")
            atomic_write_json(self.run_dir / STATE_FILE, state)
            write_history(self.run_dir, history)
        if state["bad_epochs"] >= cfg.patience:
            logger.info("early stop: no val AUC gain for %d epochs", cfg.patience)
        return self.finish(state)

    @property
    def starts_trained(self) -> bool:
        """The tower starts from trained weights (the imported one), not at random."""
        return self.cfg.architecture == IMPORTED

    def _trained_baseline(self, state: dict[str, Any]) -> None:
        """A tower that starts trained is the best checkpoint ("epoch 0"): training is kept only
        if it beats the starting weights on validation people, and ``--epochs 0`` fits the head
        on the imported tower alone."""
        scores, y = self.val_scores()
        auc = metrics.roc_auc(scores, y)
        logger.info("tower before any training: val AUC %.4f", auc)
        state.update(best_auc=auc, best_epoch=0)
        if self.cfg.recipe.classes and self.cfg.epochs > 0:
            self._class_centres_from_embeddings()
        self._save_checkpoint("best")
        self._save_checkpoint("last")
        atomic_write_json(self.run_dir / STATE_FILE, state)

    def _class_centres_from_embeddings(self) -> None:
        """CosFace's class centres start at each class's mean unit embedding, not at random:
        fine-tuning a trained tower at a low learning rate would otherwise push it towards
        random centres it can barely move."""
        images = self.cosface_images
        emb = self.embed(self.data.train_idx[images])
        emb = unit(emb, axis=1)
        classes = self.class_of[self.train_labels[images]]
        centres = np.zeros((emb.shape[1], int(classes.max()) + 1), np.float32)
        np.add.at(centres.T, classes, emb)
        centres = unit(centres, axis=0)
        layer = self.model.get_layer("cosface")
        layer.set_weights([centres])
        logger.info("CosFace centres set from the mean embeddings of %d classes",
                    centres.shape[1])

    def finish(self, state: dict[str, Any]) -> dict[str, Any]:
        """Best weights -> fitted head -> calibrated thresholds -> files people look at."""
        from ..stats.plots import plot_training_curves

        cfg = self.cfg
        self.model.load_weights(checkpoint_path(self.run_dir, self.kept_checkpoint))
        self.tower.save(self.run_dir / TOWER_FILE)
        train_emb = self.embed(self.data.train_idx)
        weights, bias = fit_l1_head(train_emb, self.train_labels,
                                    np.random.default_rng([cfg.seed, 99]))
        val_emb = self.embed(self.data.val_idx)
        ia, ib, y = self.val_pairs
        logits = np.abs(val_emb[ia] - val_emb[ib]) @ weights + bias
        weights, bias = temperature_scale(weights, bias, logits, y)
        atomic_write_json(self.run_dir / HEAD_FILE, {"weights": weights.tolist(), "bias": bias})
        scores, y = self.val_scores((weights, bias))
        thresholds = metrics.calibrate_thresholds(scores, y)
        summary = metrics.summarize(scores, y, threshold=thresholds.get(metrics.far_key(1e-3)))
        result = {
            "split": "validation identities (never trained on)",
            "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
            "checkpoint_kept": self.kept_checkpoint,
            "val_auc_during_training": state["best_auc"],
            "thresholds": thresholds,
            **summary,
            "train_seconds": float(sum(state["history"]["seconds"])),
            "tower_parameters": int(self.tower.count_params()),
        }
        atomic_write_json(self.run_dir / METRICS_FILE, result)
        history = {k: v for k, v in state["history"].items() if k != "seconds"}
        if history["loss"]:
            plot_training_curves(self.run_dir / CURVES_FILE, history)
        return result


class FineTuneLoop(TrainLoop):
    """The twin's loop continued from a trained tower and head, on pairs the caller chooses
    (``twinlock train --personalize``).

    Starting from the general head, not a random one, keeps the first gradients from tearing up
    a good tower. Batch norm is frozen (statistics and scale): batches full of a few residents'
    faces would otherwise shift the statistics every stranger is normalised with (measured on
    the default model's run: validation AUC on strangers fell from 0.961 to 0.947 without the
    freeze, and stayed at 0.960 with it). The last epoch is kept: the pairs that matter (the
    residents') have no validation set of their own, and general validation AUC would pick the
    least personal epoch; it is still logged and plotted so a collapse shows.
    """

    kept_checkpoint = "last"

    def __init__(self, cfg: TrainConfig, data: PreparedData, run_dir: Path, progress: bool,
                 tower_path: Path, head: tuple[np.ndarray, float],
                 sampler: Callable[[int], tuple[np.ndarray, ...]]) -> None:
        if not cfg.recipe.twin_head:
            raise RuntimeError("fine-tuning trains the twin with its own head (bce)")
        super().__init__(cfg, data, run_dir, progress)
        from . import keras_layers as _registered_layers  # noqa: F401  (custom layers for load_model)

        general = keras.models.load_model(tower_path, compile=False)
        shapes = [w.shape for w in general.get_weights()]
        if shapes != [w.shape for w in self.tower.get_weights()]:
            from twinlock.daemon.errors import UsageError
            raise UsageError(f"{tower_path}: the tower does not match its run's configuration")
        self.tower.set_weights(general.get_weights())
        frozen = 0
        for layer in self.tower.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # Keras 3: also runs it in inference mode
                frozen += 1
        if frozen:
            with self.strategy.scope():
                self.model.compile(optimizer=self.optimizer, loss=keras.losses.BinaryCrossentropy())
        weights, bias = head
        self.model.get_layer("head").set_weights(
            [np.asarray(weights, np.float32)[:, None], np.array([bias], np.float32)])
        self.sampler = sampler
        logger.info("fine-tuning %s from %s", self.tower.name, tower_path)

    def epoch_samples(self, epoch: int, mined: np.ndarray | None) -> tuple[np.ndarray, ...]:
        return self.sampler(epoch)
