"""The training configuration: every choice that shapes a trained model.

Its own module so that the run-folder code, data preparation and the TensorFlow loop all read
the config without importing each other (train.py only orchestrates them).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from twinlock.daemon.errors import UsageError
from twinlock.daemon.faces.align import DEFAULT_TEMPLATE, TEMPLATES
from twinlock.daemon.faces.pipeline import DetectorSpec

from ..data.crops import CropSpec
from .losses import LOSSES, RECIPES, LossRecipe

logger = logging.getLogger(__name__)

__all__ = ["ARCHITECTURES", "IMPORTED", "LOSSES", "TrainConfig"]

#: the tower whose weights are imported (dlib's public-domain ResNet), not trained from scratch
IMPORTED = "dlib-resnet"
#: the imported tower's alignment (its 150 px chips), also the online student's default
TEACHER_TEMPLATE = "dlib-4pt"
ARCHITECTURES = ("compact", "koch", IMPORTED)


@dataclass
class TrainConfig:
    """Every choice that shapes a trained model; saved in run.json so a run can be resumed and
    exported exactly."""

    data: list[str]
    architecture: str = "compact"
    input_size: int = 0  # 0 -> the architecture's default (koch 105, compact 64)
    channels: int = 0  # 0 -> the architecture's default (koch 1 = grey, compact 3 = RGB)
    embedding_dim: int = 128  # compact only; koch's is 4096
    loss: str = "bce"
    epochs: int = 30
    steps_per_epoch: int = 200
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5
    val_fraction: float = 0.15
    val_different_pairs: int = 20000
    hard_negatives: float = 0.0  # share of different pairs mined as hard negatives (epochs >= 2)
    augment: bool = True
    flip_average: bool = True
    min_images_per_class: int = 2  # cosface: identities with fewer images only serve as negatives
    cosface_scale: float = 20.0
    cosface_margin: float = 0.2
    distill_weight: float = 0.0  # cosface: weight of the dlib-teacher cosine term (0 = off)
    contrastive_margin: float = 1.0
    triplet_margin: float = 0.3
    zoom: float = 1.0
    template: str = ""  # alignment template; "" -> the architecture's (dlib-resnet: dlib-4pt)
    detector: dict[str, Any] = field(default_factory=lambda: dataclasses.asdict(DetectorSpec()))
    holdout_pairs: str | None = None  # a pairs file whose people are never trained on
    max_identities: int = 0  # 0 = all; for quick runs on a subset of a large dataset
    # people left out of training and validation after the split (matched by folder name,
    # case-insensitive): enrolled residents whose photos also sit in a data folder
    exclude_identities: list[str] = field(default_factory=list)
    # unit-length embeddings; None = by the loss. A personalized twin (bce) keeps the setting of
    # the tower it was fine-tuned from, so the device post-processes both alike.
    unit_embeddings: bool | None = None
    strategy: str = "default"  # or "mirrored" (tf.distribute.MirroredStrategy)
    seed: int = 0
    width: int = 32  # compact: channels of the stem (the blocks grow to 16x this)
    # --loss distill (online): the teacher run in the graph on the same augmented view
    teacher: str = ""  # "" -> dlib-resnet for --loss distill
    # face images or videos without labels, used only as distillation views (never validated on)
    unlabelled: list[str] = field(default_factory=list)
    mixup: float = 0.5  # distill: share of views blended with another face
    # distill: the exported compact model the student starts from (its folder and model id;
    # input size, template, zoom and width are the model's), "" = random weights
    init_from: str = ""
    init_model_id: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, not "
                             f"{self.architecture!r}")
        if self.architecture == IMPORTED:
            self._imported_defaults()
        if self.loss not in RECIPES:
            raise UsageError(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.strategy not in ("default", "mirrored"):
            raise UsageError(f"--strategy must be default or mirrored, not {self.strategy!r}")
        if not self.input_size:
            self.input_size = 105 if self.architecture == "koch" else 64
        if not self.channels:
            self.channels = 1 if self.architecture == "koch" else 3
        if self.channels not in (1, 3):
            raise UsageError(f"--channels must be 1 or 3, not {self.channels}")
        if not self.template:
            # the online student sees the teacher's framing (a smaller dlib chip)
            self.template = TEACHER_TEMPLATE if self.recipe.teacher else DEFAULT_TEMPLATE
        if self.template not in TEMPLATES:
            raise UsageError(f"--template must be one of {', '.join(TEMPLATES)}")
        if self.epochs < (0 if self.architecture == IMPORTED else 1):
            raise UsageError("--epochs must be >= 1 (>= 0 for an imported tower: 0 = fit the "
                             "head only)")
        for name in ("steps_per_epoch", "batch_size", "input_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0.0 <= self.hard_negatives <= 1.0:
            raise UsageError("--hard-negatives must be within [0, 1]")
        if self.distill_weight < 0:
            raise UsageError("--distill-weight must be >= 0")
        if self.distill_weight > 0 and not self.recipe.classes:
            raise UsageError("--distill-weight goes with --loss cosface (--loss distill is "
                             "distillation alone)")
        if self.recipe.teacher:
            self.teacher = self.teacher or IMPORTED
            if self.teacher != IMPORTED:
                raise UsageError(f"--teacher must be {IMPORTED}, not {self.teacher!r}")
        elif self.teacher or self.unlabelled:
            raise UsageError("--teacher and --unlabelled go with --loss distill")
        if self.init_from and not (self.recipe.online_teacher and self.init_model_id):
            raise UsageError("--init-from goes with --loss distill")
        if not 0.0 <= self.mixup <= 1.0:
            raise UsageError("--mixup must be within [0, 1]")
        if self.width < 4:
            raise UsageError("--width must be >= 4")
        if self.uses_teacher:
            from .teacher import TEACHER_DIM

            if self.architecture != "compact" or self.embedding_dim != TEACHER_DIM:
                raise UsageError(f"distillation regresses the teacher's {TEACHER_DIM}-d embedding: "
                                 f"use --architecture compact --embedding-dim {TEACHER_DIM}")
            if self.recipe.online_teacher and self.channels != 3:
                raise UsageError("--loss distill trains an RGB student (grey views come from its "
                                 "augmentation): leave --channels at 3")

    def _imported_defaults(self) -> None:
        """dlib's ResNet fixes its input (150 px RGB dlib chips) and embedding (128-d)."""
        from .dlib_resnet import CHIP_SIZE, EMBEDDING_DIM

        if self.input_size not in (0, CHIP_SIZE) or self.channels not in (0, 3) \
                or self.embedding_dim != EMBEDDING_DIM:
            raise UsageError(f"the {IMPORTED} tower takes {CHIP_SIZE} px RGB chips and makes "
                             f"{EMBEDDING_DIM}-d embeddings; leave --input-size, --channels and "
                             "--embedding-dim at their defaults")
        self.input_size, self.channels = CHIP_SIZE, 3
        self.template = self.template or TEACHER_TEMPLATE
        if self.uses_teacher:
            raise UsageError(f"the {IMPORTED} tower is the teacher; it cannot distil from itself")

    @property
    def recipe(self) -> LossRecipe:
        """What the loss needs from every part of training (``losses.RECIPES``)."""
        return RECIPES[self.loss]

    @property
    def uses_teacher(self) -> bool:
        """Distillation from the dlib teacher (--loss distill, or cosface with a distill weight)."""
        return self.recipe.teacher or self.distill_weight > 0

    @property
    def offline_teacher(self) -> bool:
        """cosface's auxiliary term regresses dlib embeddings computed once per image
        (``teacher.py``); ``--loss distill`` runs the teacher online instead."""
        return self.distill_weight > 0

    @property
    def l2_normalize(self) -> bool:
        """Metric-learning losses train unit-length embeddings; the BCE twin does not (unless
        ``unit_embeddings`` says otherwise)."""
        return self.recipe.unit_embeddings if self.unit_embeddings is None \
            else self.unit_embeddings

    @property
    def crop_spec(self) -> CropSpec:
        return CropSpec(self.input_size, self.zoom, DetectorSpec(**self.detector), "center",
                        self.template)
