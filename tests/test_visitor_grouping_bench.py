"""benchmarks/visitor_grouping.py's explored two-link rule: a lone look-alike link does not
chain two people into one group, a match at the strict level links on its own, and the pair
indices are pdist's order."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.spatial.distance import squareform

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import visitor_grouping as vg

from twinlock.trainer.household.visitors import group_logits, logit

T, STRICT = 0.9, 0.999  # probabilities: the threshold and the level where one link suffices


def condensed(n: int, links: dict[tuple[int, int], float]) -> np.ndarray:
    """Pair logits (pdist order): the given pairs at their probability, the rest far apart."""
    square = np.full((n, n), -20.0)
    for (a, b), p in links.items():
        square[a, b] = square[b, a] = logit(p)
    np.fill_diagonal(square, 0.0)
    return squareform(square, checks=False)


def test_pairs_are_pdist_order() -> None:
    n = 9
    i, j = vg._pairs(np.arange(n * (n - 1) // 2), n)
    want = np.triu_indices(n, 1)
    assert np.array_equal(i, want[0]) and np.array_equal(j, want[1])


def test_a_lone_look_alike_link_does_not_chain_two_people() -> None:
    # 0-3 one person (four attempts), 4-7 another; 3 and 4 look alike at the threshold only
    links = {(a, b): 0.95 for a in range(4) for b in range(a + 1, 4)}
    links |= {(a, b): 0.95 for a in range(4, 8) for b in range(a + 1, 8)}
    links[(3, 4)] = 0.95
    logits = condensed(8, links)
    assert len(set(group_logits(logits, T, "single").tolist())) == 1  # single linkage chains
    assert vg.two_links(logits, T, STRICT).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_a_strict_match_links_on_its_own() -> None:
    logits = condensed(4, {(0, 1): 0.9995, (2, 3): 0.95})
    assert vg.two_links(logits, T, STRICT).tolist() == [0, 0, 1, 2]
