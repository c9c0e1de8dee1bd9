"""Face datasets on disk, identity-disjoint splits, pair/triplet sampling (pairs files: pairs.py).

Everything here works on file paths and integer labels only: decoding, detection and alignment
happen elsewhere, so this module imports fast (numpy only, no TensorFlow) and its tests run on
tiny synthetic folders.

Two folder layouts are understood:

* identity folders: ``<root>/<person>/<image>`` (LFW, ORL/AT&T, Extended Yale B, knn examples);
* the tutorial layout: ``<root>/anchor/``, ``<root>/positive/``, ``<root>/negative/``, where anchor
  and positive images show the one resident and every negative image is some other person.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twinlock.daemon.errors import DataError, DataNotFoundError, UsageError
from twinlock.daemon.recognition.scoring import unit

logger = logging.getLogger(__name__)

#: File name suffixes (lower case, with the dot) that are listed as images; compared case-blind.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}
)

LAYOUT_IDENTITY_FOLDERS = "identity_folders"
LAYOUT_TUTORIAL = "tutorial"
LAYOUT_MERGED = "merged"

#: Sub-folders of the tutorial layout; anchor and positive hold the resident.
TUTORIAL_RESIDENT_FOLDERS = ("anchor", "positive")
TUTORIAL_NEGATIVE_FOLDER = "negative"
#: Prefix of the one-image identities given to tutorial negatives (their names are unknown).
NEGATIVE_IDENTITY_PREFIX = "negative/"

SKIP_NOT_IMAGE = "not an image extension"
SKIP_NESTED_FOLDER = "folder inside an image folder (not searched)"
SKIP_EMPTY_IDENTITY = "identity folder has no images"
SKIP_UNKNOWN_TUTORIAL_FOLDER = "not a tutorial folder (expected anchor/, positive/, negative/)"

#: Upper bound on the floats gathered at once while mining hard negatives (keeps memory flat).
_MINING_CHUNK_FLOATS = 8_000_000


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the name ends in one of ``IMAGE_EXTENSIONS`` (any case); content is not read."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    """One image file and the identity it shows."""

    path: Path
    identity: str


@dataclass
class FaceDataset:
    """Images with identities, plus what listing skipped, so callers can report both."""

    root: Path
    records: list[ImageRecord]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    layout: str = LAYOUT_IDENTITY_FOLDERS

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        # The default dataclass repr would print thousands of records.
        return (
            f"FaceDataset(root={str(self.root)!r}, layout={self.layout!r}, images={len(self)}, "
            f"identities={len(self.identities)}, skipped={len(self.skipped)})"
        )

    @property
    def identities(self) -> list[str]:
        """Sorted distinct identities; a label is an index into this list."""
        return sorted({record.identity for record in self.records})

    @property
    def labels(self) -> np.ndarray:
        """Integer label (index into ``identities``) of every record, in record order."""
        index = {name: i for i, name in enumerate(self.identities)}
        return np.fromiter(
            (index[record.identity] for record in self.records), dtype=np.int64, count=len(self)
        )

    @property
    def paths(self) -> list[Path]:
        """Image paths in record order (aligned with ``labels``)."""
        return [record.path for record in self.records]

    def by_identity(self) -> dict[str, list[int]]:
        """Record indices per identity, identities in sorted order."""
        groups: dict[str, list[int]] = {name: [] for name in self.identities}
        for i, record in enumerate(self.records):
            groups[record.identity].append(i)
        return groups

    def image_counts(self) -> dict[str, int]:
        """Number of images per identity; what ``split_identities`` needs."""
        return dict(sorted(Counter(record.identity for record in self.records).items()))

    def count_multi_image_identities(self, min_images: int = 2) -> int:
        """Identities with at least ``min_images`` images: only those can give same-person pairs."""
        return sum(1 for n in self.image_counts().values() if n >= min_images)

    def subset(self, identities: Iterable[str]) -> FaceDataset:
        """The records of the given identities (order kept); e.g. one side of a split."""
        wanted = set(identities)
        unknown = sorted(wanted - {record.identity for record in self.records})
        if unknown:
            raise UsageError(
                f"{len(unknown)} identities are not in the dataset at {self.root}, "
                f"e.g. {', '.join(unknown[:5])}"
            )
        records = [record for record in self.records if record.identity in wanted]
        return FaceDataset(self.root, records, list(self.skipped), self.layout)


def _check_folder(root: str | os.PathLike[str], what: str = "dataset folder") -> Path:
    """The root as a Path, or a clear error when it is missing or not a folder."""
    path = Path(root)
    if not path.exists():
        raise DataNotFoundError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DataError(f"{what} is not a folder: {path}")
    return path


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """Non-hidden entries of a folder sorted by name, so listings are the same on every OS."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _list_images(folder: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Image files directly in ``folder``; everything else that is not hidden goes to skipped."""
    images: list[Path] = []
    for entry in _entries(folder):
        path = Path(entry.path)
        if entry.is_dir():
            skipped.append((path, SKIP_NESTED_FOLDER))
        elif is_image_file(entry.name):
            images.append(path)
        else:
            skipped.append((path, SKIP_NOT_IMAGE))
    return images


def load_identity_folders(root: str | os.PathLike[str]) -> FaceDataset:
    """``<root>/<person>/<image>``; files directly in root (README, SOURCE.md) are ignored."""
    root_path = _check_folder(root)
    records: list[ImageRecord] = []
    skipped: list[tuple[Path, str]] = []
    for entry in _entries(root_path):
        if not entry.is_dir():
            continue  # README, SOURCE.md, licences: documentation, not data
        images = _list_images(Path(entry.path), skipped)
        if not images:
            skipped.append((Path(entry.path), SKIP_EMPTY_IDENTITY))
        records.extend(ImageRecord(path, entry.name) for path in images)
    for path, reason in skipped:
        logger.debug("skipped %s: %s", path, reason)
    return FaceDataset(root_path, records, skipped, LAYOUT_IDENTITY_FOLDERS)


def _resident_name(root: Path) -> str:
    """The identity of the tutorial's anchor/positive images: the dataset folder's name."""
    return root.resolve().name or "resident"


def load_tutorial_layout(root: str | os.PathLike[str]) -> FaceDataset:
    """``root/{anchor,positive,negative}``: one resident plus one-image identities for negatives.

    Negative images are "other people" whose names are unknown, so each one gets its own identity
    ``negative/<filename>``: they can be the second image of a different-person pair but never
    form a same-person pair (two negatives may show the same stranger).
    """
    root_path = _check_folder(root)
    resident = _resident_name(root_path)
    records: list[ImageRecord] = []
    skipped: list[tuple[Path, str]] = []
    for name in TUTORIAL_RESIDENT_FOLDERS:
        folder = root_path / name
        if not folder.is_dir():
            raise DataError(f"tutorial layout needs a folder {folder} (anchor/ and positive/)")
        records.extend(ImageRecord(path, resident) for path in _list_images(folder, skipped))
    negative = root_path / TUTORIAL_NEGATIVE_FOLDER
    if negative.is_dir():
        records.extend(
            ImageRecord(path, NEGATIVE_IDENTITY_PREFIX + path.name)
            for path in _list_images(negative, skipped)
        )
    else:
        logger.warning("%s has no negative/ folder: only the resident's images are used", root_path)
    known = {*TUTORIAL_RESIDENT_FOLDERS, TUTORIAL_NEGATIVE_FOLDER}
    for entry in _entries(root_path):
        if entry.is_dir() and entry.name not in known:
            skipped.append((Path(entry.path), SKIP_UNKNOWN_TUTORIAL_FOLDER))
    for path, reason in skipped:
        logger.debug("skipped %s: %s", path, reason)
    return FaceDataset(root_path, records, skipped, LAYOUT_TUTORIAL)


def is_tutorial_layout(root: str | os.PathLike[str]) -> bool:
    """The tutorial layout is recognised by its anchor/ and positive/ folders."""
    return all((Path(root) / name).is_dir() for name in TUTORIAL_RESIDENT_FOLDERS)


def _log_summary(dataset: FaceDataset, name: str) -> None:
    logger.info(
        "%s (%s): %d images, %d identities, %d with >= 2 images, %d skipped",
        name,
        dataset.layout,
        len(dataset),
        len(dataset.identities),
        dataset.count_multi_image_identities(),
        len(dataset.skipped),
    )


def load_dataset(root: str | os.PathLike[str]) -> FaceDataset:
    """Load one dataset folder, detecting its layout; a dataset without images is an error."""
    root_path = _check_folder(root)
    if is_tutorial_layout(root_path):
        dataset = load_tutorial_layout(root_path)
    else:
        dataset = load_identity_folders(root_path)
    if not dataset.records:
        loose = sum(1 for e in _entries(root_path) if e.is_file() and is_image_file(e.name))
        hint = (
            f"; {loose} images lie directly in it, but images must be in one folder per person"
            if loose
            else ""
        )
        raise DataError(
            f"no images found in {root_path}{hint} (expected <root>/<person>/<image> or "
            f"<root>/anchor/, positive/, negative/; {len(dataset.skipped)} files skipped)"
        )
    _log_summary(dataset, str(root_path))
    return dataset


def _unique_prefixes(roots: Sequence[Path]) -> list[str]:
    """Shortest trailing path of each root that tells it apart ("orl_att_faces", "a/data")."""
    parts = [root.resolve().parts for root in roots]
    depth = 1
    while True:
        prefixes = ["/".join(p[-depth:]) for p in parts]
        if len(set(prefixes)) == len(prefixes) or depth >= max(len(p) for p in parts):
            return prefixes
        depth += 1


def load_datasets(roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> FaceDataset:
    """Load and merge several dataset folders.

    With more than one root, identities become ``<root folder name>/<identity>`` so that, say,
    ORL's ``s1`` and Yale's ``s1`` (or two tutorial residents) never merge into one person.
    One root is loaded unchanged.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    root_paths = [Path(root) for root in roots]
    if not root_paths:
        raise UsageError("no dataset folders given")
    if len(root_paths) == 1:
        return load_dataset(root_paths[0])
    resolved = [path.resolve() for path in root_paths]
    duplicates = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if duplicates:
        raise UsageError(f"dataset folder given more than once: {', '.join(duplicates)}")
    records: list[ImageRecord] = []
    skipped: list[tuple[Path, str]] = []
    for path, prefix in zip(root_paths, _unique_prefixes(root_paths), strict=True):
        dataset = load_dataset(path)
        records.extend(ImageRecord(r.path, f"{prefix}/{r.identity}") for r in dataset.records)
        skipped.extend(dataset.skipped)
    merged = FaceDataset(Path(os.path.commonpath(resolved)), records, skipped, LAYOUT_MERGED)
    _log_summary(merged, f"{len(root_paths)} datasets merged")
    return merged


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def _image_counts(
    identities: Iterable[str] | Mapping[str, int] | FaceDataset, counts: Mapping[str, int] | None
) -> tuple[dict[str, int], bool]:
    """Images per identity, and whether they are known (a bare list of names does not say)."""
    if isinstance(identities, FaceDataset):
        known = identities.image_counts()
        names = list(known)
    elif isinstance(identities, Mapping) and counts is None:
        known = {str(name): int(n) for name, n in identities.items()}
        names = list(known)
    elif isinstance(identities, str):
        raise UsageError("split_identities needs a collection of identities, not one string")
    else:
        names = [str(name) for name in identities]
        known = None
    if counts is not None:
        known = {str(name): int(n) for name, n in counts.items()}
    if known is None:
        # Unknown counts: every identity is assumed to have >= 2 images (the caller's promise).
        return {name: 2 for name in names}, False
    missing = sorted(set(names) - set(known))
    if missing:
        raise UsageError(
            f"counts has no entry for {len(missing)} identities, e.g. {', '.join(missing[:5])}"
        )
    return {name: known[name] for name in names}, True


def _take(n: int, fraction: float) -> int:
    """Round half up (not to even) so the same fraction always gives the same count."""
    return int(np.floor(n * fraction + 0.5))


def split_identities(
    identities: Iterable[str] | Mapping[str, int] | FaceDataset,
    val_fraction: float,
    seed: int,
    min_val_images: int | None = None,
    counts: Mapping[str, int] | None = None,
) -> tuple[list[str], list[str]]:
    """Identity-disjoint (train, validation) split, seeded, sorted.

    ``identities`` is a list of names (with ``counts``, images per identity, from e.g.
    ``by_identity``), a ``{name: n_images}`` mapping, or a FaceDataset. Multi-image and single-image
    identities are shuffled separately and ``val_fraction`` of each goes to validation, so both
    sides keep identities that can form same-person pairs (a plain shuffle of LFW could leave
    validation with almost none). Without counts every identity is assumed to have >= 2 images.
    ``min_val_images`` optionally asks for at least that many validation images (needs counts);
    more identities are then moved from train (multi-image ones first, in the same seeded order)
    while train keeps at least one multi-image identity.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    sizes, counts_known = _image_counts(identities, counts)
    if min_val_images is not None and not counts_known:
        raise UsageError("min_val_images needs image counts per identity (pass counts=...)")
    multi = sorted(name for name, n in sizes.items() if n >= 2)
    single = sorted(name for name, n in sizes.items() if n < 2)
    if len(multi) < 2:
        found = f"{len(multi)} among {len(sizes)} identities" if counts_known else len(sizes)
        raise UsageError(
            f"an identity-disjoint split needs at least 2 identities with >= 2 images (one for "
            f"each side), found {found}"
        )
    rng = np.random.default_rng(seed)
    multi_order = [multi[i] for i in rng.permutation(len(multi))]
    single_order = [single[i] for i in rng.permutation(len(single))]
    n_val_multi = min(max(_take(len(multi), val_fraction), 1), len(multi) - 1)
    n_val_single = _take(len(single), val_fraction)
    val = multi_order[:n_val_multi] + single_order[:n_val_single]
    train_multi = multi_order[n_val_multi:]
    train_single = single_order[n_val_single:]
    if min_val_images is not None:
        val_images = sum(sizes[name] for name in val)
        while val_images < min_val_images and (len(train_multi) > 1 or train_single):
            name = train_multi.pop(0) if len(train_multi) > 1 else train_single.pop(0)
            val.append(name)
            val_images += sizes[name]
        if val_images < min_val_images:
            raise UsageError(
                f"cannot give validation {min_val_images} images: at most {val_images} while "
                "train keeps an identity with >= 2 images"
            )
    train = sorted(train_multi + train_single)
    val = sorted(val)
    logger.info(
        "split %d identities: %d train, %d validation (%d and %d with >= 2 images), seed %d",
        len(sizes),
        len(train),
        len(val),
        len(train_multi),
        sum(1 for name in val if sizes[name] >= 2),
        seed,
    )
    return train, val


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


class _Groups:
    """Images grouped by identity: ``order[starts[k]:starts[k] + sizes[k]]`` are identity k's."""

    def __init__(self, labels: np.ndarray | Sequence[int]) -> None:
        array = np.asarray(labels)
        if array.ndim != 1:
            raise UsageError(f"labels must be one-dimensional, got shape {array.shape}")
        _, self.labels = np.unique(array, return_inverse=True)
        self.labels = self.labels.astype(np.int64).reshape(-1)
        self.order = np.argsort(self.labels, kind="stable")
        self.sizes = np.bincount(self.labels).astype(np.int64)
        self.starts = np.cumsum(self.sizes) - self.sizes
        self.multi = np.flatnonzero(self.sizes >= 2)

    @property
    def n_images(self) -> int:
        return int(self.labels.size)

    @property
    def n_identities(self) -> int:
        return int(self.sizes.size)

    def require(self, *, same: bool, different: bool) -> None:
        """DataError when the requested kind of pair cannot be drawn at all."""
        if different and self.n_identities < 2:
            raise DataError(
                f"different-person pairs need at least 2 identities, found {self.n_identities}"
            )
        if same and self.multi.size == 0:
            raise DataError(
                f"same-person pairs need an identity with >= 2 images; none of the "
                f"{self.n_identities} identities ({self.n_images} images) has one"
            )

    def two_distinct_images(
        self, ids: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two different images of each given identity (which must have >= 2 images)."""
        sizes = self.sizes[ids]
        first = (rng.random(ids.size) * sizes).astype(np.int64)
        second = (rng.random(ids.size) * (sizes - 1)).astype(np.int64)
        second += second >= first
        return self.order[self.starts[ids] + first], self.order[self.starts[ids] + second]

    def one_image(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniformly chosen image of each given identity."""
        within = (rng.random(ids.shape) * self.sizes[ids]).astype(np.int64)
        return self.order[self.starts[ids] + within]

    def other_identity(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniformly chosen identity different from each given one."""
        other = rng.integers(0, self.n_identities - 1, size=ids.shape)
        return other + (other >= ids)

    def image_of_other_identity(
        self, anchors: np.ndarray, rng: np.random.Generator, size: tuple[int, ...]
    ) -> np.ndarray:
        """Images drawn uniformly among those whose identity differs from each anchor's."""
        ids = self.labels[anchors].reshape(anchors.shape + (1,) * (len(size) - anchors.ndim))
        others = self.n_images - self.sizes[ids]
        rank = (rng.random(size) * others).astype(np.int64)
        rank += np.where(rank >= self.starts[ids], self.sizes[ids], 0)
        return self.order[rank]


def _check_count(n: int, what: str) -> int:
    if int(n) != n or n < 0:
        raise UsageError(f"{what} must be a non-negative integer, got {n}")
    return int(n)


def sample_pairs(
    labels: np.ndarray | Sequence[int],
    n_pairs: int,
    rng: np.random.Generator | int,
    same_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random training pairs ``(idx_a, idx_b, same)``, ``same`` float32 1/0, in shuffled order.

    Same pairs: an identity with >= 2 images is picked uniformly, then two distinct images, so
    every such identity is used about evenly (George W. Bush does not dominate LFW). Different
    pairs: two different identities picked uniformly, then one image of each; picking identities
    (not images) keeps frequent people from appearing mostly in different pairs, which would let a
    model learn "this face means different".
    """
    n_pairs = _check_count(n_pairs, "n_pairs")
    if not 0.0 <= same_fraction <= 1.0:
        raise UsageError(f"same_fraction must be between 0 and 1, got {same_fraction}")
    rng = np.random.default_rng(rng)
    groups = _Groups(labels)
    n_same = _take(n_pairs, same_fraction)
    n_diff = n_pairs - n_same
    groups.require(same=n_same > 0, different=n_diff > 0)

    same_ids = groups.multi[rng.integers(0, groups.multi.size, size=n_same)]
    same_a, same_b = groups.two_distinct_images(same_ids, rng)
    ids_a = rng.integers(0, groups.n_identities, size=n_diff)
    ids_b = groups.other_identity(ids_a, rng)
    diff_a, diff_b = groups.one_image(ids_a, rng), groups.one_image(ids_b, rng)

    idx_a = np.concatenate([same_a, diff_a]).astype(np.int64)
    idx_b = np.concatenate([same_b, diff_b]).astype(np.int64)
    same = np.concatenate([np.ones(n_same, np.float32), np.zeros(n_diff, np.float32)])
    order = rng.permutation(n_pairs)
    return idx_a[order], idx_b[order], same[order]


def all_same_pairs(labels: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered same-identity pair ``(a, b)`` with ``a < b``, grouped by identity."""
    groups = _Groups(labels)
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    for k in groups.multi:
        members = np.sort(groups.order[groups.starts[k] : groups.starts[k] + groups.sizes[k]])
        i, j = np.triu_indices(members.size, k=1)
        firsts.append(members[i])
        seconds.append(members[j])
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def count_different_pairs(labels: np.ndarray | Sequence[int]) -> int:
    """How many unordered pairs of images show two different identities."""
    groups = _Groups(labels)
    n = groups.n_images
    return int((n * n - int(np.sum(groups.sizes**2))) // 2)


def _all_different_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered different-identity pair ``(a, b)``, ``a < b``, listed in row chunks."""
    size = labels.size
    rows = max(1, _MINING_CHUNK_FLOATS // max(size, 1))
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    columns = np.arange(size)
    for start in range(0, size, rows):
        a = np.arange(start, min(start + rows, size))
        mask = (labels[a][:, None] != labels[None, :]) & (columns[None, :] > a[:, None])
        i, j = np.nonzero(mask)
        firsts.append(a[i])
        seconds.append(j)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def sample_different_pairs(
    labels: np.ndarray | Sequence[int], n: int, rng: np.random.Generator | int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct unordered different-identity pairs ``(a, b)``, ``a < b``, no duplicates.

    Made for evaluation, where a repeated pair would count twice; asking for more pairs than
    exist returns all of them (fewer than ``n``) with a warning.
    """
    n = _check_count(n, "n")
    rng = np.random.default_rng(rng)
    groups = _Groups(labels)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    groups.require(same=False, different=True)
    possible = count_different_pairs(groups.labels)
    if n > possible:
        # A small validation set: every pair once beats repeats that would count twice.
        logger.warning(
            "asked for %d different-person pairs but only %d exist: using all", n, possible
        )
        n = possible
    size = groups.n_images
    if 2 * n >= possible:
        # Dense request: list them all (at most 2n) and choose without replacement.
        first, second = _all_different_pairs(groups.labels)
        pick = rng.choice(possible, size=n, replace=False)
        return first[pick], second[pick]
    # Sparse request: draw valid pairs and drop repeats until there are enough (most draws are
    # new because at most half of all pairs are wanted).
    keys = np.empty(0, np.int64)
    while keys.size < n:
        need = n - keys.size
        a = rng.integers(0, size, size=2 * need + 16)
        b = groups.image_of_other_identity(a, rng, a.shape)
        batch = np.minimum(a, b) * size + np.maximum(a, b)
        merged = np.concatenate([keys, batch])
        _, first = np.unique(merged, return_index=True)
        keys = merged[np.sort(first)][:n]
    return keys // size, keys % size


def _pairwise_distance(anchor: np.ndarray, candidates: np.ndarray, distance: str) -> np.ndarray:
    """Distances between each anchor row (B, D) and its candidates (B, P, D)."""
    if distance == "l2":
        return np.sqrt(np.sum((candidates - anchor[:, None, :]) ** 2, axis=-1))
    return 1.0 - np.einsum("bd,bpd->bp", anchor, candidates)


def mine_hard_negatives(
    embeddings: np.ndarray,
    labels: np.ndarray | Sequence[int],
    n: int,
    rng: np.random.Generator | int,
    pool: int = 64,
    distance: str = "l2",
) -> tuple[np.ndarray, np.ndarray]:
    """For ``n`` random anchors, the closest of ``pool`` random other-identity images.

    Random different-person pairs soon become easy; mixing in these look-alike pairs keeps the
    pair stream informative (semi-hard mining on a budget: cost is ``n * pool`` distances).
    ``distance`` is ``"l2"`` or ``"cosine"`` (1 - cosine similarity).
    """
    n = _check_count(n, "n")
    if int(pool) != pool or pool < 1:
        raise UsageError(f"pool must be a positive integer, got {pool}")
    if distance not in ("l2", "cosine"):
        raise UsageError(f"distance must be 'l2' or 'cosine', got {distance!r}")
    vectors = np.asarray(embeddings, dtype=np.float64)
    groups = _Groups(labels)
    if vectors.ndim != 2 or vectors.shape[0] != groups.n_images:
        raise UsageError(
            f"embeddings must have shape (N, D) with N = {groups.n_images} labels, "
            f"got {vectors.shape}"
        )
    if not np.all(np.isfinite(vectors)):
        raise DataError("embeddings contain NaN or infinite values")
    rng = np.random.default_rng(rng)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    groups.require(same=False, different=True)
    if distance == "cosine":
        vectors = unit(vectors, axis=1)

    anchors = rng.integers(0, groups.n_images, size=n).astype(np.int64)
    candidates = groups.image_of_other_identity(anchors, rng, (n, int(pool)))
    negatives = np.empty(n, np.int64)
    chunk = max(1, _MINING_CHUNK_FLOATS // (int(pool) * max(vectors.shape[1], 1)))
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        dist = _pairwise_distance(vectors[anchors[rows]], vectors[candidates[rows]], distance)
        negatives[rows] = candidates[rows][np.arange(dist.shape[0]), np.argmin(dist, axis=1)]
    return anchors, negatives


def sample_triplets(
    labels: np.ndarray | Sequence[int], n: int, rng: np.random.Generator | int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` triplets (anchor, positive, negative) drawn like ``sample_pairs``.

    Anchor and positive are two distinct images of a uniformly picked multi-image identity; the
    negative is an image of a uniformly picked other identity.
    """
    n = _check_count(n, "n")
    rng = np.random.default_rng(rng)
    groups = _Groups(labels)
    if n == 0:
        empty = np.empty(0, np.int64)
        return empty, empty.copy(), empty.copy()
    groups.require(same=True, different=True)
    ids = groups.multi[rng.integers(0, groups.multi.size, size=n)]
    anchor, positive = groups.two_distinct_images(ids, rng)
    negative = groups.one_image(groups.other_identity(ids, rng), rng)
    return anchor.astype(np.int64), positive.astype(np.int64), negative.astype(np.int64)
