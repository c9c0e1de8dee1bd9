"""Groupings of unknown visitors measured on the selection half of benchmarks/visitor_grouping.py
beside the linkages trainer/household/visitors.py offers, and not chosen there (issue 22).

Each takes the held-out embeddings ``x`` (N, D) and their condensed pair logits, and returns a
group number per row; "the same person" stays a calibrated threshold of the model:

- centroid merging (two stages): single-linkage cores at a strict rung, then clusters whose
  centroids (mean embeddings; the tower's embeddings are not unit vectors) score above a looser
  rung merge, reciprocal best pairs first, until none does;
- Chinese whispers (Biemann 2006; dlib's ``chinese_whispers``) on the graph of pairs above a
  rung, weighted by how far above;
- approximate rank-order clustering (Otto, Wang and Jain 2017): pairs above a rung that are in
  each other's ``k`` nearest neighbours and whose normalised rank-order distance is below ``t``;
- the door's own rule, attempt by attempt in order: an attempt joins the group whose centroid
  it matches best at the rung, else starts a group (centroid fusion, as models/default's door
  calibration).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from twinlock.trainer.household.visitors import cross_logits, group_logits, logit


def _renumber(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def centroid_merge(x: np.ndarray, logits: np.ndarray, core: float, merge: float,
                   weights: np.ndarray, bias: float) -> np.ndarray:
    labels = _renumber(group_logits(logits, core, "single"))
    while True:
        k = int(labels.max()) + 1
        centres = np.stack([x[labels == g].mean(axis=0) for g in range(k)])
        score = cross_logits(centres, centres, weights, bias)
        np.fill_diagonal(score, -np.inf)
        best = score.argmax(axis=1)
        parent = np.arange(k)
        for g in range(k):
            h = int(best[g])
            if g < h and best[h] == g and score[g, h] >= logit(merge):
                parent[h] = g
        if (parent == np.arange(k)).all():
            return labels
        labels = _renumber(parent[labels])


def chinese_whispers(logits: np.ndarray, threshold: float, rounds: int = 20,
                     seed: int = 0) -> np.ndarray:
    square = squareform(logits)
    edges = np.where(square >= logit(threshold), square - logit(threshold) + 1e-3, 0.0)
    np.fill_diagonal(edges, 0.0)
    labels = np.arange(len(square))
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        changed = 0
        for i in rng.permutation(len(square)):
            near = np.flatnonzero(edges[i])
            if len(near):
                best = int(np.bincount(labels[near], weights=edges[i, near]).argmax())
                changed += best != labels[i]
                labels[i] = best
        if not changed:
            break
    return _renumber(labels)


def rank_order(logits: np.ndarray, threshold: float, t: float, k: int = 20) -> np.ndarray:
    square = squareform(logits)
    n = len(square)
    np.fill_diagonal(square, np.inf)  # each list starts with the face itself
    near = np.argsort(-square, axis=1)[:, :k]
    rank = np.full((n, n), k, dtype=np.int64)
    rank[np.arange(n)[:, None], near] = np.arange(k)[None, :]
    links = []
    for a in range(n):
        for b in near[a, 1:]:
            if b <= a or rank[b, a] >= k or square[a, b] < logit(threshold):
                continue
            oa, ob = rank[a, b], rank[b, a]
            d = (rank[b, near[a, :oa]].sum() + rank[a, near[b, :ob]].sum()) / max(min(oa, ob), 1)
            if d < t:
                links.append((a, b))
    pairs = np.array(links, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def door_online(x: np.ndarray, threshold: float, weights: np.ndarray,
                bias: float) -> np.ndarray:
    labels = np.zeros(len(x), dtype=np.int64)
    sums: list[np.ndarray] = []
    counts: list[int] = []
    for i, row in enumerate(np.asarray(x, dtype=np.float64)):
        if sums:
            score = cross_logits(row[None], np.stack(sums) / np.array(counts)[:, None],
                                 weights, bias)[0]
            g = int(score.argmax())
            if score[g] >= logit(threshold):
                labels[i], sums[g], counts[g] = g, sums[g] + row, counts[g] + 1
                continue
        labels[i] = len(sums)
        sums.append(row.copy())
        counts.append(1)
    return labels
