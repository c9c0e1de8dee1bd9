"""``twinlock train``: face folders in, a run folder with a trained tower, head and metrics out.

Flow: load datasets -> aligned crops (cached) -> identity-disjoint split -> train the twin with the
chosen loss (an epoch = fresh seeded pairs/triplets/images, augmented) -> validation AUC after each
epoch (checkpoint, early stopping) -> fit the L1 head on the best tower -> calibrate thresholds on
the validation identities -> write curves and metrics.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinlock.daemon.errors import DataError, UsageError
from twinlock.daemon.faces.align import DEFAULT_TEMPLATE, TEMPLATES, to_model_input
from twinlock.daemon.faces.pipeline import DetectorSpec

from ..data.crops import CROP_CODE_VERSION, CropSpec, make_crops
from ..data.datasets import (
    all_same_pairs,
    load_datasets,
    mine_hard_negatives,
    sample_different_pairs,
    sample_pairs,
    sample_triplets,
    split_identities,
)
from .provenance import data_fingerprint, provenance

logger = logging.getLogger(__name__)

LOSSES = ("bce", "contrastive", "triplet", "cosface", "distill")
#: the tower whose weights are imported (dlib's public-domain ResNet), not trained from scratch
IMPORTED = "dlib-resnet"
ARCHITECTURES = ("compact", "koch", IMPORTED)
RUN_FILE = "run.json"
STATE_FILE = "state.json"
CHECKPOINT_DIR = "checkpoints"
TOWER_FILE = "tower.keras"
HEAD_FILE = "head.json"
METRICS_FILE = "metrics.json"


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

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise UsageError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, not "
                             f"{self.architecture!r}")
        if self.architecture == IMPORTED:
            self._imported_defaults()
        if self.loss not in LOSSES:
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
            self.template = DEFAULT_TEMPLATE
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
        if self.distill_weight > 0 and self.loss != "cosface":
            raise UsageError("--distill-weight goes with --loss cosface (--loss distill is "
                             "distillation alone)")
        if self.uses_teacher:
            from .teacher import TEACHER_DIM

            if self.architecture != "compact" or self.embedding_dim != TEACHER_DIM:
                raise UsageError(f"distillation regresses the teacher's {TEACHER_DIM}-d embedding: "
                                 f"use --architecture compact --embedding-dim {TEACHER_DIM}")

    def _imported_defaults(self) -> None:
        """dlib's ResNet fixes its input (150 px RGB dlib chips) and embedding (128-d)."""
        from .dlib_resnet import CHIP_SIZE, EMBEDDING_DIM

        if self.input_size not in (0, CHIP_SIZE) or self.channels not in (0, 3) \
                or self.embedding_dim != EMBEDDING_DIM:
            raise UsageError(f"the {IMPORTED} tower takes {CHIP_SIZE} px RGB chips and makes "
                             f"{EMBEDDING_DIM}-d embeddings; leave --input-size, --channels and "
                             "--embedding-dim at their defaults")
        self.input_size, self.channels = CHIP_SIZE, 3
        self.template = self.template or "dlib-4pt"
        if self.uses_teacher:
            raise UsageError(f"the {IMPORTED} tower is the teacher; it cannot distil from itself")

    @property
    def uses_teacher(self) -> bool:
        """Distillation from the dlib teacher (--loss distill, or cosface with a distill weight)."""
        return self.loss == "distill" or self.distill_weight > 0

    @property
    def l2_normalize(self) -> bool:
        """Metric-learning losses train unit-length embeddings; the BCE twin does not (unless
        ``unit_embeddings`` says otherwise)."""
        return self.loss != "bce" if self.unit_embeddings is None else self.unit_embeddings

    @property
    def crop_spec(self) -> CropSpec:
        return CropSpec(self.input_size, self.zoom, DetectorSpec(**self.detector), "center",
                        self.template)


@dataclass
class PreparedData:
    """Aligned crops of every usable image, with labels and the identity-disjoint split."""

    crops: np.ndarray  # (N, S, S, 3) uint8 RGB
    labels: np.ndarray  # (N,) int identity index
    identities: list[str]
    paths: list[Path]
    train_idx: np.ndarray
    val_idx: np.ndarray
    report: dict[str, Any]
    teacher: np.ndarray | None = None  # (N, 128) dlib embeddings (distillation); NaN rows: none


def prepare_data(cfg: TrainConfig, progress: bool = True) -> PreparedData:
    """Load, crop and split the data; every count a user may want to see goes into ``report``."""
    dataset = load_datasets([Path(p) for p in cfg.data])
    report: dict[str, Any] = {
        "roots": cfg.data, "images_listed": len(dataset), "identities_listed": len(dataset.identities),
        "files_skipped": len(dataset.skipped),
    }
    if cfg.holdout_pairs:
        held = _pairs_identities(Path(cfg.holdout_pairs))
        keep = [i for i in dataset.identities if i.split("/")[-1] not in held]
        report["holdout_identities_removed"] = len(dataset.identities) - len(keep)
        dataset = dataset.subset(keep)
    if cfg.max_identities and len(dataset.identities) > cfg.max_identities:
        rng = np.random.default_rng(cfg.seed)
        multi = [i for i, idx in dataset.by_identity().items() if len(idx) >= 2]
        single = [i for i, idx in dataset.by_identity().items() if len(idx) < 2]
        n_multi = min(len(multi), cfg.max_identities)
        chosen = list(rng.choice(multi, n_multi, replace=False)) + list(
            rng.choice(single, min(len(single), cfg.max_identities - n_multi), replace=False))
        dataset = dataset.subset(sorted(chosen))
    crops = make_crops(dataset.paths, cfg.crop_spec, progress=progress)
    report.update({f"images_{k.replace(' ', '_')}": v for k, v in crops.counts().items()})
    ok = crops.ok
    if not ok.any():
        raise DataError(f"no face was found in any of the {len(dataset)} images")
    paths = [p for p, good in zip(dataset.paths, ok, strict=True) if good]
    names = [dataset.identities[label] for label in dataset.labels[ok]]
    identities = sorted(set(names))
    index = {name: i for i, name in enumerate(identities)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(identities))
    report["identities"] = len(identities)
    report["identities_with_2plus_images"] = int((counts >= 2).sum())
    if (counts >= 2).sum() < 2:
        raise DataError("training needs at least 2 people with 2 or more usable face images; "
                        f"found {(counts >= 2).sum()} in {', '.join(cfg.data)}")
    _, val_ids = split_identities(identities, cfg.val_fraction, cfg.seed,
                                  counts={n: int(c) for n, c in zip(identities, counts)})
    val_set = {index[n] for n in val_ids}
    is_val = np.array([label in val_set for label in labels])
    keep = _not_excluded(identities, labels, cfg.exclude_identities, report)
    train_idx, val_idx = np.flatnonzero(~is_val & keep), np.flatnonzero(is_val & keep)
    val_counts = np.bincount(labels[val_idx], minlength=len(identities))
    if cfg.exclude_identities and ((val_counts > 0).sum() < 2 or val_counts.max() < 2):
        raise DataError(f"after leaving out {', '.join(report['identities_excluded'])}, "
                        f"validation keeps {(val_counts > 0).sum()} people: it needs 2 or more, "
                        "one of them with 2+ images")
    report["train_images"], report["val_images"] = len(train_idx), len(val_idx)
    report["train_identities"] = len(np.unique(labels[train_idx]))
    report["val_identities"] = len(np.unique(labels[val_idx]))
    return PreparedData(crops.crops[ok], labels, identities, paths, train_idx, val_idx, report)


def _not_excluded(identities: list[str], labels: np.ndarray, exclude: Sequence[str],
                  report: dict[str, Any]) -> np.ndarray:
    """Mask of images whose identity is not in ``exclude`` (by folder name, ignoring case); the
    identities dropped go into ``report``."""
    if not exclude:
        return np.ones(len(labels), dtype=bool)
    wanted = {name.casefold() for name in exclude}
    dropped = [i for i, name in enumerate(identities) if name.split("/")[-1].casefold() in wanted]
    report["identities_excluded"] = [identities[i] for i in dropped]
    if dropped:
        logger.info("left out of training and validation: %s", ", ".join(
            report["identities_excluded"]))
    return ~np.isin(labels, dropped)


def attach_teacher(cfg: TrainConfig, data: PreparedData, progress: bool = True) -> None:
    """Distillation only: the dlib teacher's embedding of every image (cached; needs the
    optional [teacher] extra). Export and evaluation never need it."""
    from .teacher import teacher_embeddings

    data.teacher = teacher_embeddings(data.paths, cfg.crop_spec.detector, cfg.crop_spec.policy,
                                      progress=progress)
    data.report["teacher_embeddings_missing"] = int(np.isnan(data.teacher[:, 0]).sum())


def _pairs_identities(path: Path) -> set[str]:
    """Names of every person a pairs file mentions (the images need not be present)."""
    names: set[str] = set()
    try:
        lines = path.read_text().splitlines()[1:]
    except FileNotFoundError:
        raise DataError(f"--holdout-pairs: {path} not found") from None
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            names.add(parts[0])
        elif len(parts) == 4:
            names.update((parts[0], parts[2]))
    return names


def validation_pairs(labels: np.ndarray, n_different: int, seed: int,
                     groups: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """A fixed set of validation pairs: every same-person pair (capped) plus random different
    pairs. Returns (ia, ib, y) as indices into ``labels``.

    ``groups`` (one source-dataset id per image) keeps different-person pairs inside one source:
    an ORL face against an LFW face is trivially "different" (grey studio shot vs colour news
    photo) and would flatter the AUC.
    """
    rng = np.random.default_rng([seed, 7])
    sa, sb = all_same_pairs(labels)
    if len(sa) > 50000:
        keep = rng.choice(len(sa), 50000, replace=False)
        sa, sb = sa[keep], sb[keep]
    groups = np.zeros(len(labels), dtype=np.int64) if groups is None else groups
    parts_a, parts_b = [], []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        if len(np.unique(labels[members])) < 2:
            continue
        want = max(1, round(n_different * len(members) / len(labels)))
        da, db = sample_different_pairs(labels[members], want, rng)
        parts_a.append(members[da])
        parts_b.append(members[db])
    da, db = np.concatenate(parts_a), np.concatenate(parts_b)
    ia = np.concatenate([sa, da])
    ib = np.concatenate([sb, db])
    y = np.concatenate([np.ones(len(sa)), np.zeros(len(da))]).astype(np.float32)
    return ia, ib, y


def source_groups(data: PreparedData, idx: np.ndarray) -> np.ndarray:
    """Source-dataset id of each image in ``idx`` (the root prefix of merged identities)."""
    roots = [name.split("/", 1)[0] if "/" in name else "" for name in data.identities]
    _, group_of_identity = np.unique(np.array(roots), return_inverse=True)
    return group_of_identity[data.labels[idx]]


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def load_run_config(run_dir: Path) -> TrainConfig:
    try:
        data = json.loads((run_dir / RUN_FILE).read_text())
    except FileNotFoundError:
        raise UsageError(f"{run_dir}: not a training run folder (no {RUN_FILE})") from None
    return TrainConfig(**data["config"])


def train(cfg: TrainConfig, run_dir: Path, argv: Sequence[str] | None = None,
          resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a run; returns the validation metrics also written to metrics.json."""
    from .trainloop import TrainLoop  # TensorFlow is imported only when training really starts

    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, progress)
    if cfg.uses_teacher:
        attach_teacher(cfg, data, progress)
    for key, value in data.report.items():
        logger.info("data: %s = %s", key, value)
    if not resume:
        _atomic_write_json(run_dir / RUN_FILE, {
            "config": dataclasses.asdict(cfg),
            "crop_code_version": CROP_CODE_VERSION,
            "provenance": provenance(argv),
            "data": data.report | {"fingerprint": data_fingerprint(data.paths)},
        })
        (run_dir / "command.txt").write_text(
            (provenance(argv)["command"] or "") + "\n")
        (run_dir / "val_identities.txt").write_text(
            "\n".join(sorted({data.identities[data.labels[i]] for i in data.val_idx})) + "\n")
    loop = TrainLoop(cfg, data, run_dir, progress)
    return loop.run(resume)


def write_history(run_dir: Path, history: dict[str, list[float]]) -> None:
    keys = list(history)
    with (run_dir / "history.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for epoch in range(len(history[keys[0]]) if keys else 0):
            writer.writerow([epoch + 1, *(history[k][epoch] for k in keys)])


def model_input(data: PreparedData, cfg: TrainConfig, idx: np.ndarray) -> np.ndarray:
    return to_model_input(data.crops[idx], cfg.channels)


def epoch_samples(cfg: TrainConfig, labels: np.ndarray, epoch: int,
                  embeddings: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Indices (into ``labels``) for one epoch: pairs, triplets or images, seeded by epoch."""
    rng = np.random.default_rng([cfg.seed, epoch])
    n = cfg.steps_per_epoch * cfg.batch_size
    if cfg.loss == "triplet":
        return sample_triplets(labels, n, rng)
    if cfg.loss in ("cosface", "distill"):
        return (rng.choice(len(labels), n, replace=True),)
    ia, ib, y = sample_pairs(labels, n, rng)
    if embeddings is not None and cfg.hard_negatives > 0:
        different = np.flatnonzero(y == 0)
        n_hard = int(len(different) * cfg.hard_negatives)
        ha, hb = mine_hard_negatives(embeddings, labels, n_hard, rng)
        ia[different[:n_hard]], ib[different[:n_hard]] = ha, hb
    return ia, ib, y


