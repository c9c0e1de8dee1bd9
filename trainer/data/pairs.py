"""``twinlock pairs``: build an LFW-protocol pairs file from people a model will never train on.

LFW's own View 1 pairs name people who are in the training folder here, so measuring a model on
people it never saw needs a held-out set. This picks identities with a seeded draw, writes their
matched and mismatched pairs in the ``pairsDevTrain.txt`` format, and ``twinlock train
--holdout-pairs FILE`` then keeps every person it names out of training.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from twinlock.daemon.errors import DataError, UsageError

from .datasets import load_identity_folders

logger = logging.getLogger(__name__)

_LFW_NAME = re.compile(r"^(?P<name>.+)_(?P<num>\d{4})\.jpg$")


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
