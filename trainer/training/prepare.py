"""Training data made ready: aligned crops, labels, the identity-disjoint split, validation
pairs and each epoch's samples.

TensorFlow-free (numpy and the daemon's face code), so export, personalisation and benchmarks
can rebuild a run's data without importing the training loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinlock.daemon.errors import DataError
from twinlock.daemon.faces.align import to_model_input

from ..data.crops import make_crops
from ..data.datasets import (
    all_same_pairs,
    load_datasets,
    mine_hard_negatives,
    sample_different_pairs,
    sample_pairs,
    sample_triplets,
    split_identities,
)
from .config import TrainConfig

logger = logging.getLogger(__name__)


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
        held = pairs_identities(Path(cfg.holdout_pairs))
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
    usable = _not_excluded(identities, labels, cfg.exclude_identities, report)
    train_idx, val_idx = np.flatnonzero(~is_val & usable), np.flatnonzero(is_val & usable)
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


def pairs_identities(path: Path) -> set[str]:
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


def model_input(data: PreparedData, cfg: TrainConfig, idx: np.ndarray) -> np.ndarray:
    return to_model_input(data.crops[idx], cfg.channels)


def epoch_samples(cfg: TrainConfig, labels: np.ndarray, epoch: int,
                  embeddings: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Indices (into ``labels``) for one epoch: pairs, triplets or images, seeded by epoch."""
    rng = np.random.default_rng([cfg.seed, epoch])
    n = cfg.steps_per_epoch * cfg.batch_size
    kind = cfg.recipe.samples
    if kind == "triplets":
        return sample_triplets(labels, n, rng)
    if kind == "images":
        return (rng.choice(len(labels), n, replace=True),)
    ia, ib, y = sample_pairs(labels, n, rng)
    if embeddings is not None and cfg.hard_negatives > 0:
        different = np.flatnonzero(y == 0)
        n_hard = int(len(different) * cfg.hard_negatives)
        ha, hb = mine_hard_negatives(embeddings, labels, n_hard, rng)
        ia[different[:n_hard]], ib[different[:n_hard]] = ha, hb
    return ia, ib, y
