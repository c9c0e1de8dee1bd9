"""LFW-protocol pairs files, read and written in one place.

``read_pairs_file`` reads View 1 (``N``) and View 2 (``K N``) files with their folds, checking
that every image exists. ``twinlock pairs`` (``make_pairs_file``) builds such a file from people
a model will never train on.

LFW's own View 1 pairs name people who are in the training folder here, so measuring a model on
people it never saw needs a held-out set. ``make_pairs_file`` picks identities with a seeded draw,
writes their matched and mismatched pairs in the ``pairsDevTrain.txt`` format, and ``twinlock train
--holdout-pairs FILE`` then keeps every person it names out of training.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twinlock.daemon.errors import DataError, DataNotFoundError, UsageError

from .datasets import _check_folder, load_identity_folders

logger = logging.getLogger(__name__)

_LFW_NAME = re.compile(r"^(?P<name>.+)_(?P<num>\d{4})\.jpg$")


# --------------------------------------------------------------------------------------------------
# Reading a pairs file
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpec:
    """One verification pair from a pairs file: two images, same person or not, and its fold."""

    a: Path
    b: Path
    same: bool
    fold: int


def lfw_image_path(images_root: Path, name: str, number: int) -> Path:
    """LFW's naming: ``<root>/<name>/<name>_0001.jpg``."""
    return images_root / name / f"{name}_{number:04d}.jpg"


def _positive_int(token: str, source: str, lineno: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(
            f"{source}, line {lineno}: {what} must be a positive integer, got {token!r}"
        )
    return value


def _parse_pair_line(
    tokens: list[str], same: bool, source: str, lineno: int, images_root: Path, fold: int
) -> PairSpec:
    """One ``name n1 n2`` (same) or ``name1 n1 name2 n2`` (different) line."""
    if same:
        if len(tokens) != 3:
            raise DataError(
                f"{source}, line {lineno}: expected a matched pair 'name n1 n2', "
                f"got {' '.join(tokens)!r}"
            )
        name, n1, n2 = tokens
        first = _positive_int(n1, source, lineno, "image number")
        second = _positive_int(n2, source, lineno, "image number")
        if first == second:
            raise DataError(f"{source}, line {lineno}: a matched pair names one image twice")
        return PairSpec(
            lfw_image_path(images_root, name, first),
            lfw_image_path(images_root, name, second),
            True,
            fold,
        )
    if len(tokens) != 4:
        raise DataError(
            f"{source}, line {lineno}: expected a mismatched pair 'name1 n1 name2 n2', "
            f"got {' '.join(tokens)!r}"
        )
    name1, n1, name2, n2 = tokens
    if name1 == name2:
        raise DataError(f"{source}, line {lineno}: a mismatched pair names one person twice")
    return PairSpec(
        lfw_image_path(images_root, name1, _positive_int(n1, source, lineno, "image number")),
        lfw_image_path(images_root, name2, _positive_int(n2, source, lineno, "image number")),
        False,
        fold,
    )


def read_pairs_file(
    path: str | os.PathLike[str], images_root: str | os.PathLike[str]
) -> list[PairSpec]:
    """Parse an LFW pairs file (View 1 ``N`` or View 2 ``K N`` header) and check its images exist.

    View 1 (pairsDevTrain/DevTest) has no folds of its own; contiguous tenths of its matched and
    of its mismatched lines become folds 0..9 so both views can be cross-validated the same way.
    """
    pairs_path = Path(path)
    if not pairs_path.exists():
        raise DataNotFoundError(f"pairs file not found: {pairs_path}")
    if not pairs_path.is_file():
        raise DataError(f"pairs file is not a file: {pairs_path}")
    root = _check_folder(images_root, "images folder for pairs")
    source = f"pairs file {pairs_path}"
    lines = [
        (lineno, line.split())
        for lineno, line in enumerate(pairs_path.read_text(encoding="utf-8").splitlines(), 1)
        if line.strip()
    ]
    if not lines:
        raise DataError(f"{source} is empty")
    header_lineno, header = lines[0]
    if len(header) == 1:
        n_per_kind = _positive_int(header[0], source, header_lineno, "pair count")
        n_folds = 1
    elif len(header) == 2:
        n_folds = _positive_int(header[0], source, header_lineno, "fold count")
        n_per_kind = _positive_int(header[1], source, header_lineno, "pair count")
    else:
        raise DataError(
            f"{source}, line {header_lineno}: expected a header 'N' (View 1) or 'K N' (View 2), "
            f"got {' '.join(header)!r}"
        )
    body = lines[1:]
    expected = 2 * n_per_kind * n_folds
    if len(body) < expected:
        raise DataError(
            f"{source}: the header (line {header_lineno}) declares {expected} pairs but the file "
            f"has only {len(body)} pair lines"
        )
    if len(body) > expected:
        raise DataError(
            f"{source}: the header (line {header_lineno}) declares {expected} pairs but the file "
            f"has {len(body) - expected} more lines, from line {body[expected][0]}"
        )
    pairs: list[PairSpec] = []
    for i, (lineno, tokens) in enumerate(body):
        block, within = divmod(i, 2 * n_per_kind)
        same = within < n_per_kind
        position = within if same else within - n_per_kind
        fold = block if len(header) == 2 else position * 10 // n_per_kind
        pairs.append(_parse_pair_line(tokens, same, source, lineno, root, fold))
    _check_pair_images(pairs, pairs_path, root)
    logger.info(
        "%s: %d pairs (%d same), %d folds",
        pairs_path.name,
        len(pairs),
        sum(p.same for p in pairs),
        len({p.fold for p in pairs}),
    )
    return pairs


def _check_pair_images(pairs: list[PairSpec], pairs_path: Path, root: Path) -> None:
    """Fail on any missing image now rather than with a decode error in the middle of a run."""
    exists: dict[Path, bool] = {}
    for pair in pairs:
        for image in (pair.a, pair.b):
            if image not in exists:
                exists[image] = image.is_file()
    missing = [image for image, ok in exists.items() if not ok]
    if not missing:
        return
    bad = sum(1 for pair in pairs if not (exists[pair.a] and exists[pair.b]))
    listed = ", ".join(str(p) for p in missing[:5])
    raise DataError(
        f"{bad} of {len(pairs)} pairs in {pairs_path} name missing images under {root} "
        f"({len(missing)} images missing; first: {listed})"
    )


# --------------------------------------------------------------------------------------------------
# Writing one (``twinlock pairs``)
# --------------------------------------------------------------------------------------------------


def make_pairs_file(images_root: Path, out: Path, identities: int = 300, pairs: int = 1000,
                    seed: int = 0) -> dict[str, int]:
    """Write ``pairs`` matched + ``pairs`` mismatched lines over ``identities`` held-out people
    with 2+ images (and as many one-image people, who appear in mismatched pairs only)."""
    dataset = load_identity_folders(images_root)
    numbers: dict[str, list[int]] = {}
    for record in dataset.records:
        match = _LFW_NAME.match(record.path.name)
        if match is None or match["name"] != record.identity:
            raise DataError(f"{record.path}: not LFW-style naming <person>/<person>_NNNN.jpg, "
                            "which the pairs format needs")
        numbers.setdefault(record.identity, []).append(int(match["num"]))
    rng = np.random.default_rng(seed)
    multi = sorted(n for n, nums in numbers.items() if len(nums) >= 2)
    single = sorted(n for n, nums in numbers.items() if len(nums) == 1)
    if identities < 2 or identities > len(multi):
        raise UsageError(f"--identities must be within 2..{len(multi)} (people with 2+ images)")
    held_multi = sorted(rng.choice(multi, identities, replace=False))
    held_single = sorted(rng.choice(single, min(identities, len(single)), replace=False))
    possible = sum(len(numbers[n]) * (len(numbers[n]) - 1) // 2 for n in held_multi)
    if pairs > possible:
        raise UsageError(f"only {possible} matched pairs exist among {identities} people; "
                         "ask for fewer --pairs or more --identities")
    matched: set[tuple[str, int, int]] = set()
    while len(matched) < pairs:
        name = held_multi[rng.integers(len(held_multi))]
        i, j = sorted(rng.choice(numbers[name], 2, replace=False))
        matched.add((name, int(i), int(j)))
    everyone = held_multi + held_single
    mismatched: set[tuple[str, int, str, int]] = set()
    while len(mismatched) < pairs:
        a, b = sorted(rng.choice(len(everyone), 2, replace=False))
        na, nb = everyone[a], everyone[b]
        mismatched.add((na, int(rng.choice(numbers[na])), nb, int(rng.choice(numbers[nb]))))
    order = rng.permutation
    lines = [str(pairs)]
    lines += ["\t".join(map(str, m)) for m in (sorted(matched)[k] for k in order(pairs))]
    lines += ["\t".join(map(str, m)) for m in (sorted(mismatched)[k] for k in order(pairs))]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    summary = {"identities_with_2plus": len(held_multi), "identities_single": len(held_single),
               "matched": pairs, "mismatched": pairs}
    logger.info("wrote %s: %s", out, summary)
    return summary
