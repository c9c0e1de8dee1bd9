"""One recipe per training loss: what the config, the sampler and the loop need to know about it.

Before this registry the loss name was switched on as a string in five places (config defaults,
epoch sampling, the training model, the tf.data batches, the head). A recipe holds all of that
for one loss, so adding a loss is one entry here and a reader sees each loss whole.

Importing this module is cheap (no TensorFlow): the config and the command line read the
recipes' facts; only ``build`` and ``batches`` import Keras and TensorFlow, when a loop calls
them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np

from twinlock.daemon.errors import DataError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

logger = logging.getLogger(__name__)

#: what one epoch draws from the training images (``prepare.epoch_samples``)
SampleKind = Literal["pairs", "triplets", "images"]
#: pixels of training images by index, augmented (the loop's ``images``)
ImagesFn = Callable[["tf.Tensor"], "tf.Tensor"]


class LossSettings(Protocol):
    """What a recipe's ``build`` reads from the training config (``TrainConfig`` has it all).

    A protocol rather than the config class, so that the config reads the recipes without the
    two modules importing each other.
    """

    @property
    def l2_normalize(self) -> bool: ...
    @property
    def contrastive_margin(self) -> float: ...
    @property
    def triplet_margin(self) -> float: ...
    @property
    def min_images_per_class(self) -> int: ...
    @property
    def distill_weight(self) -> float: ...
    @property
    def cosface_scale(self) -> float: ...
    @property
    def cosface_margin(self) -> float: ...


class TrainingModel(NamedTuple):
    """The Keras model a loss trains, with its loss function(s) and their weights."""

    model: keras.Model
    loss: Any
    loss_weights: list[float] | None = None


@dataclass(frozen=True)
class LossRecipe:
    """Everything that depends on the loss, in one place."""

    name: str
    help: str
    samples: SampleKind
    #: embeddings L2-normalised before the head, unless the config's ``unit_embeddings`` says
    unit_embeddings: bool
    #: the training model ends in the twin's own L1 + sigmoid head (kept as the run's head)
    twin_head: bool = False
    #: an identity classifier: needs classes (identities with enough images)
    classes: bool = False
    #: regresses the dlib teacher's embedding
    teacher: bool = False
    #: the teacher runs in the graph on each augmented view (``student.OnlineDistillLoop``, which
    #: builds its own model and batches: ``build`` and ``batches`` stay None)
    online_teacher: bool = False
    build: Callable[[keras.Model, LossSettings, int], TrainingModel] | None = None
    #: (loop, epoch samples, images fn) -> batched tf.data of (inputs, targets)
    batches: Callable[[Any, tuple[np.ndarray, ...], ImagesFn], tf.data.Dataset] | None = None

    @property
    def mines_hard_negatives(self) -> bool:
        """Hard negatives replace some random different pairs: only losses trained on pairs."""
        return self.samples == "pairs"


# -- training models ---------------------------------------------------------------------------


def _build_bce(tower: keras.Model, cfg: LossSettings, n_classes: int) -> TrainingModel:
    import keras

    from .model import build_twin

    return TrainingModel(build_twin(tower, cfg.l2_normalize), keras.losses.BinaryCrossentropy())


def _build_contrastive(tower: keras.Model, cfg: LossSettings, n_classes: int) -> TrainingModel:
    from .model import build_distance_model, contrastive_loss

    return TrainingModel(build_distance_model(tower), contrastive_loss(cfg.contrastive_margin))


def _build_triplet(tower: keras.Model, cfg: LossSettings, n_classes: int) -> TrainingModel:
    from .model import build_triplet_model, triplet_loss

    return TrainingModel(build_triplet_model(tower), triplet_loss(cfg.triplet_margin))


def _build_cosface(tower: keras.Model, cfg: LossSettings, n_classes: int) -> TrainingModel:
    import keras

    from .model import build_classifier, build_classifier_distill, cosine_distill_loss

    if n_classes < 2:
        raise DataError("cosface needs at least 2 training identities with "
                        f"{cfg.min_images_per_class}+ images")
    xent = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if cfg.distill_weight > 0:
        model = build_classifier_distill(tower, n_classes, cfg.cosface_scale, cfg.cosface_margin)
        return TrainingModel(model, [xent, cosine_distill_loss()], [1.0, cfg.distill_weight])
    return TrainingModel(build_classifier(tower, n_classes, cfg.cosface_scale,
                                          cfg.cosface_margin), xent)


# -- batches -----------------------------------------------------------------------------------


def _pair_batches(loop: Any, samples: tuple[np.ndarray, ...], images: ImagesFn) -> tf.data.Dataset:
    import tensorflow as tf

    ia, ib, y = samples
    ds = tf.data.Dataset.from_tensor_slices((ia, ib, y[:, None])).batch(loop.cfg.batch_size, True)
    return ds.map(lambda a, b, t: ((images(a), images(b)), t), tf.data.AUTOTUNE)


def _triplet_batches(loop: Any, samples: tuple[np.ndarray, ...],
                     images: ImagesFn) -> tf.data.Dataset:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(samples).batch(loop.cfg.batch_size, True)
    return ds.map(lambda a, p, n: ((images(a), images(p), images(n)), tf.zeros_like(a)),
                  tf.data.AUTOTUNE)


def _cosface_batches(loop: Any, samples: tuple[np.ndarray, ...],
                     images: ImagesFn) -> tf.data.Dataset:
    import tensorflow as tf

    idx = loop.cosface_images[samples[0] % len(loop.cosface_images)]
    cls = loop.class_of[loop.train_labels[idx]].astype(np.int32)
    if loop.cfg.distill_weight > 0:
        ds = tf.data.Dataset.from_tensor_slices((idx, cls, loop.teacher[idx]))
        return ds.batch(loop.cfg.batch_size, True).map(
            lambda i, c, t: ((images(i), c[:, None]), (c, t)), tf.data.AUTOTUNE)
    ds = tf.data.Dataset.from_tensor_slices((idx, cls)).batch(loop.cfg.batch_size, True)
    return ds.map(lambda i, c: ((images(i), c[:, None]), c), tf.data.AUTOTUNE)


RECIPES: dict[str, LossRecipe] = {r.name: r for r in (
    LossRecipe("bce", "the paper's twin: binary cross-entropy on same/different pairs",
               "pairs", unit_embeddings=False, twin_head=True, build=_build_bce,
               batches=_pair_batches),
    LossRecipe("contrastive", "Hadsell et al. 2006 on pair distances", "pairs",
               unit_embeddings=True, build=_build_contrastive, batches=_pair_batches),
    LossRecipe("triplet", "Schroff et al. 2015 on anchor/positive/negative", "triplets",
               unit_embeddings=True, build=_build_triplet, batches=_triplet_batches),
    LossRecipe("cosface", "identity pre-training with an additive margin (head fitted after)",
               "images", unit_embeddings=True, classes=True, build=_build_cosface,
               batches=_cosface_batches),
    LossRecipe("distill", "regress the imported dlib tower's embedding of the same augmented "
               "view, computed online (--teacher dlib-resnet)", "images", unit_embeddings=True,
               teacher=True, online_teacher=True),
)}
LOSSES = tuple(RECIPES)


def recipe(name: str) -> LossRecipe:
    """The recipe of a loss by name (``KeyError`` for an unknown one; the config checks first)."""
    return RECIPES[name]
