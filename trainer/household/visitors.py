"""Unknown visitors, grouped: attempts the door refused, clustered by the tower's own notion of
"the same person".

By default (:func:`group_attempts`) attempts are grouped by average linkage on the cosine
distance between their embeddings, cut at the distance the model carries in model.json
(``metrics.visitor_grouping``: method, distance and cut, written from the benchmark below). The
cut is calibrated, never a number chosen here: the distance at which 3e-4 of the pairs of two
people pass, on the photos of the benchmark's selection half of the model's held-out LFW people.
A model that carries no such entry (models/compact, a newly trained one), or a ``--threshold``
naming one of the head's rungs, groups by the model's head, ``sigmoid(w . |a - b| + b)``, at its
calibrated thresholds, in two stages (:data:`CORES_THEN_AVERAGE`): cores by single linkage at
``door_far_1e-04``, then average linkage over whole cores down to ``door_far_1e-03``.

Chosen by measurement (benchmarks/visitor_grouping.py, docs/benchmarks/visitor_grouping.json,
models/default, 2026-12-06) on one half of the model's held-out LFW people, reported on the
other: the best worst-case pairwise recall on the selection half (its photos, a crowd of 3,000
drawn from them, and its photos capped at 20 a person: one person there has 144 photos, 83 % of
its pairs) among the groupings with pairwise precision >= 0.99 on all three and on 10,000
attempts; candidates: single, average, weighted and complete linkage and the two stages on the
head's logit at every rung, and single, average and the two stages on the embedding's cosine
and euclidean distances at impostor rates 1e-4, 3e-4 and 1e-3. Selection worst case 0.995 /
0.887 (the head's best, the two stages: 0.995 / 0.665). Report half: precision 0.992 / recall
0.927 on its photos, 0.993 / 0.926 in its crowd, 0.991 / 0.925 capped: the 0.99 / 0.8 target is
met (the head's two stages: 0.989 / 0.753). Why the head falls short (JSON
``why_the_target_is_hard``): at ``door_far_1e-04`` it matches only 18-36 % of one person's photo
pairs, while the cosine distance at an impostor rate of 1e-4 passes 76 % of them (selection
photos); the imported dlib tower was metric-learned for exactly this distance, and the head's
L1 weights were fit for verification at the door, not for grouping. 10,000 attempts group in
about 4 s (0.43 GB tracemalloc peak). Measured beside it and not chosen: cores merged by their
centroids, Chinese whispers, approximate rank-order clustering (Otto et al. 2017) and the door's
own centroid rule attempt by attempt (JSON: ``explored_on_the_selection_half``).

The head's weights have both signs, so ``w . |a - b|`` is split into two weighted L1 distances
(non-negative weights each) that scipy computes in C: ``-(-w)+ . |a - b| + w+ . |a - b|``; a
weighted L1 distance is the plain L1 distance of the rows scaled by the weights.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from twinlock.daemon.errors import UsageError
from twinlock.daemon.recognition.model import ModelMetadata
from twinlock.daemon.recognition.thresholds import door_rate, pair_rate

from .activity import ActivityStore, Attempt

logger = logging.getLogger(__name__)

#: two stages: single-linkage cores at the strict threshold, then average linkage over cores
CORES_THEN_AVERAGE = "single+average"
METHODS = ("average", "weighted", "complete", "single", CORES_THEN_AVERAGE)
#: the head's grouping, the best of the head's measured (benchmarks/visitor_grouping.py, see
#: above) and used where a model carries no embedding-distance grouping or a rung is named:
#: cores linked at the door's strictest threshold, then whole cores whose mean pair logit
#: reaches DEFAULT_MERGE
DEFAULT_METHOD = CORES_THEN_AVERAGE
DEFAULT_THRESHOLD = "door_far_1e-04"
DEFAULT_MERGE = "door_far_1e-03"
#: the tower's own distances between embeddings that grouping can use
DISTANCES = ("cosine", "euclidean")
#: model.json's ``metrics`` entry with the embedding-distance grouping measured for that model
GROUPING_METRIC = "visitor_grouping"
#: decisions whose attempts may be unknown visitors (an unlock matched a resident)
UNKNOWN_DECISIONS = ("deny", "liveness", "lockout")
#: what a group marked "not a resident" is called when the household gives no name
NOT_RESIDENT = "not a resident"
MAX_VISITOR_NAME = 64


def head_logits(embeddings: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """The head's logit for every pair of rows, condensed (scipy's pdist order), float64."""
    from scipy.spatial.distance import pdist

    x = np.asarray(embeddings, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    logits = np.full(len(x) * (len(x) - 1) // 2, float(bias))
    negative, positive = np.clip(-w, 0, None), np.clip(w, 0, None)
    if negative.any():
        logits -= pdist(x * negative, "cityblock")
    if positive.any():
        logits += pdist(x * positive, "cityblock")
    return logits


def cross_logits(a: np.ndarray, b: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """The head's logit for every row of ``a`` against every row of ``b`` (len(a) x len(b))."""
    from scipy.spatial.distance import cdist

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    logits = np.full((len(x), len(y)), float(bias))
    negative, positive = np.clip(-w, 0, None), np.clip(w, 0, None)
    if negative.any():
        logits -= cdist(x * negative, y * negative, "cityblock")
    if positive.any():
        logits += cdist(x * positive, y * positive, "cityblock")
    return logits


def logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def group_embeddings(embeddings: np.ndarray, weights: np.ndarray, bias: float, threshold: float,
                     method: str = DEFAULT_METHOD, space: str = "logit",
                     merge: float | None = None) -> np.ndarray:
    """A group number (0..) per row: agglomerative clustering cut where the linkage of two
    groups falls below ``threshold`` (a same-person probability of the head). With
    :data:`CORES_THEN_AVERAGE`, ``threshold`` links the single-linkage cores and ``merge`` (a
    looser probability) is where the average linkage of cores stops."""
    n = len(embeddings)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    return group_logits(head_logits(embeddings, weights, bias), threshold, method, space, merge)


def _zero_within(distance: np.ndarray, labels: np.ndarray) -> None:
    """Set the condensed (pdist order) distances of pairs in one group to 0, in place, row by
    row (no n x n matrix)."""
    n, start = len(labels), 0
    shared = np.bincount(labels)[labels] > 1
    for i in range(n - 1):
        stop = start + n - 1 - i
        if shared[i]:
            distance[start:stop][labels[i + 1:] == labels[i]] = 0.0
        start = stop


def group_logits(logits: np.ndarray, threshold: float, method: str = DEFAULT_METHOD,
                 space: str = "logit", merge: float | None = None) -> np.ndarray:
    """:func:`group_embeddings` on pair logits already computed (condensed, pdist order)."""
    if method not in METHODS:
        raise UsageError(f"grouping method {method!r}: use one of {', '.join(METHODS)}")
    if space == "logit":
        top = float(logits.max())
        distance = top - logits  # >= 0; average linkage averages logits
        cut = top - logit(threshold)
        merge_cut = None if merge is None else top - logit(merge)
    elif space == "probability":
        distance = 1.0 - 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
        cut, merge_cut = 1.0 - threshold, None if merge is None else 1.0 - merge
    else:
        raise UsageError(f"grouping space {space!r}: logit or probability")
    return _cluster(distance, cut, method, merge_cut)


def group_distances(distance: np.ndarray, cut: float, method: str = "average",
                    merge: float | None = None) -> np.ndarray:
    """A group number per row from condensed pair distances (pdist order, smaller is more
    alike): agglomerative clustering cut at the distance ``cut`` (for
    :data:`CORES_THEN_AVERAGE`, cores at ``cut`` and cores merged up to ``merge`` >= ``cut``).
    ``distance`` is left as it is."""
    if method not in METHODS:
        raise UsageError(f"grouping method {method!r}: use one of {', '.join(METHODS)}")
    return _cluster(distance.copy() if method == CORES_THEN_AVERAGE else distance, cut, method,
                    merge)


def embedding_distances(embeddings: np.ndarray, distance: str = "cosine") -> np.ndarray:
    """The tower's own distance between every pair of rows, condensed (pdist order), float64:
    ``cosine`` (1 - cosine similarity) or ``euclidean``."""
    from scipy.spatial.distance import pdist

    if distance not in DISTANCES:
        raise UsageError(f"embedding distance {distance!r}: use one of {', '.join(DISTANCES)}")
    return pdist(np.asarray(embeddings, dtype=np.float64), distance)


def _cluster(distance: np.ndarray, cut: float, method: str, merge: float | None) -> np.ndarray:
    """Agglomerative clustering of condensed distances cut at ``cut``; overwrites ``distance``
    for :data:`CORES_THEN_AVERAGE`."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if method == CORES_THEN_AVERAGE:
        if merge is None or merge < cut:
            raise UsageError(f"{method}: give a merge threshold at or below the core's")
        # the cores: single linkage at ``cut``. Their inner pairs at distance 0 make average
        # linkage join each core first (a cross pair is > 0 unless it is the closest pair,
        # which is then in a core); after that it merges whole cores by the mean distance of
        # their cross pairs, weighted by size, which is average linkage over cores.
        cores = fcluster(linkage(distance, method="single"), t=cut, criterion="distance")
        _zero_within(distance, cores)
        method, cut = "average", merge
    tree = linkage(distance, method=method)
    labels = fcluster(tree, t=cut, criterion="distance")
    # number groups by their first row, so the order does not depend on scipy's numbering
    _, first = np.unique(labels, return_index=True)
    order = {labels[i]: k for k, i in enumerate(sorted(first))}
    return np.array([order[label] for label in labels], dtype=np.int64)


@dataclass(frozen=True)
class Visitor:
    """One group of attempts that the tower takes for one person."""

    key: str  # the group's first attempt's id: stable while that attempt is kept
    attempts: list[Attempt]
    #: the known visitor (not a resident) the household marked some of its attempts as; the
    #: group's later attempts, grouped with those, are that visitor too
    known: str | None = None

    @property
    def count(self) -> int:
        return len(self.attempts)

    @property
    def first_seen(self) -> datetime:
        return min(a.time for a in self.attempts)

    @property
    def last_seen(self) -> datetime:
        return max(a.time for a in self.attempts)

    @property
    def doors(self) -> list[str]:
        return sorted({a.door for a in self.attempts})

    def as_json(self) -> dict[str, object]:
        return {"group": self.key, "count": self.count,
                "first_seen": self.first_seen.isoformat(), "last_seen": self.last_seen.isoformat(),
                "doors": self.doors, "attempts": [a.id for a in self.attempts],
                "residents_refused": sorted({a.resident for a in self.attempts if a.resident}),
                "known_visitor": self.known}


def _level_rate(name: str) -> tuple[str, float] | None:
    """("door", rate) or ("pair", rate) for a threshold name; None for any other (``eer``)."""
    door = door_rate(name)
    if door is not None:
        return "door", door
    pair = pair_rate(name)
    return None if pair is None else ("pair", pair)


def calibrated_threshold(thresholds: dict[str, float], name: str) -> float:
    """A threshold of the model's calibration: one it names (``far_1e-03``,
    ``door_far_1e-02``), or one between two it names at the same level (``door_far_3e-03``),
    interpolated along the calibration curve (the logit, linear in log10 of the rate)."""
    if name in thresholds:
        return float(thresholds[name])
    wanted = _level_rate(name)
    if wanted is None:
        raise UsageError(f"threshold {name!r}: give one the model names "
                         f"({', '.join(sorted(thresholds))}) or LEVEL_RATE such as far_3e-03")
    level, rate = wanted
    known = sorted((found[1], float(v)) for k, v in thresholds.items()
                   if (found := _level_rate(k)) is not None and found[0] == level)
    below = [(r, v) for r, v in known if r <= rate]
    above = [(r, v) for r, v in known if r >= rate]
    if not below or not above:
        raise UsageError(f"threshold {name!r} lies outside the model's calibration at its "
                         f"level (rates {', '.join(f'{r:g}' for r, _ in known) or 'none'})")
    (r0, v0), (r1, v1) = below[-1], above[0]
    if r0 == r1:
        return v0
    share = (math.log10(rate) - math.log10(r0)) / (math.log10(r1) - math.log10(r0))
    value = logit(v0) + share * (logit(v1) - logit(v0))
    return 1.0 / (1.0 + math.exp(-value))


def threshold_of(meta: ModelMetadata, name: str | None = None) -> tuple[str, float]:
    """(name, value) of one of the model's calibrated thresholds (default: the one measured
    best for the head's grouping, :data:`DEFAULT_THRESHOLD`)."""
    chosen = name or DEFAULT_THRESHOLD
    return chosen, calibrated_threshold(meta.thresholds, chosen)


def merge_of(meta: ModelMetadata, core: float) -> float:
    """Where :data:`CORES_THEN_AVERAGE` stops merging cores: the model's :data:`DEFAULT_MERGE`
    threshold, or the core's own when that is looser (``--threshold far_1e-02``)."""
    return min(calibrated_threshold(meta.thresholds, DEFAULT_MERGE), core)


@dataclass(frozen=True)
class DistanceGrouping:
    """A grouping on the tower's own embedding distance that a model carries (model.json
    ``metrics.visitor_grouping``): linkage, distance and the cut, a calibrated distance."""

    method: str
    distance: str
    cut: float


def carried_grouping(meta: ModelMetadata) -> DistanceGrouping | None:
    """The model's measured embedding-distance grouping, or None when its model.json carries
    none (then the head's two stages group)."""
    entry = meta.metrics.get(GROUPING_METRIC)
    if not isinstance(entry, dict):
        return None
    method, distance, cut = entry.get("method"), entry.get("distance"), entry.get("cut")
    if method not in METHODS or method == CORES_THEN_AVERAGE or distance not in DISTANCES \
            or isinstance(cut, bool) or not isinstance(cut, int | float) \
            or not 0 < cut < math.inf:
        raise UsageError(f"model {meta.model_id}: metrics.{GROUPING_METRIC} needs method (one "
                         f"linkage), distance ({', '.join(DISTANCES)}) and a positive cut")
    return DistanceGrouping(str(method), str(distance), float(cut))


def group_attempts(embeddings: np.ndarray, meta: ModelMetadata,
                   threshold: str | None = None, method: str = DEFAULT_METHOD) -> np.ndarray:
    """A group number per row: the model's carried embedding-distance grouping
    (:func:`carried_grouping`) unless a head ``threshold`` is named or the model carries none;
    then the head's ``method`` at ``threshold`` (default :data:`DEFAULT_THRESHOLD`)."""
    carried = None if threshold is not None else carried_grouping(meta)
    if carried is not None:
        if len(embeddings) < 2:
            return np.zeros(len(embeddings), dtype=np.int64)
        return group_distances(embedding_distances(embeddings, carried.distance), carried.cut,
                               carried.method)
    _, value = threshold_of(meta, threshold)
    return group_embeddings(embeddings, meta.head_weights, meta.head_bias, value, method,
                            merge=merge_of(meta, value))


def _groupable(a: Attempt, meta: ModelMetadata) -> bool:
    """A refused attempt with a face decided under ``meta``'s model, not labelled a resident."""
    return (a.decision in UNKNOWN_DECISIONS and a.embedding is not None
            and a.model_id == meta.model_id and a.embedding.size == meta.embedding_dim
            and not any(kind == "as" for kind, _ in a.labels))


def visitor_groups(store: ActivityStore, meta: ModelMetadata, threshold: str | None = None,
                   method: str = DEFAULT_METHOD, door: str | None = None) -> list[Visitor]:
    """Group the refused attempts decided under ``meta``'s model that nobody has labelled as a
    resident, largest group first. A group holding attempts marked as a known visitor (not a
    resident, :func:`mark_not_resident`) is that visitor (``known``), new attempts included."""
    threshold_of(meta, threshold)  # a wrong name fails before the store is read
    rows = [a for a in store.attempts(door=door) if _groupable(a, meta)]
    if not rows:
        return []
    marks = store.visitor_marks()
    rows.sort(key=lambda a: (a.time, a.id))
    labels = group_attempts(np.stack([a.embedding for a in rows]),  # type: ignore[misc]
                            meta, threshold, method)
    groups: dict[int, list[Attempt]] = {}
    for attempt, label in zip(rows, labels, strict=True):
        groups.setdefault(int(label), []).append(attempt)
    visitors = []
    for members in groups.values():
        names = Counter(marks[a.id] for a in members if a.id in marks)
        known = min(names, key=lambda n: (-names[n], n)) if names else None
        visitors.append(Visitor(members[0].id, members, known))
    visitors.sort(key=lambda v: (-v.count, v.first_seen))
    return visitors


def unknown_visitors(store: ActivityStore, meta: ModelMetadata, threshold: str | None = None,
                     method: str = DEFAULT_METHOD, door: str | None = None) -> list[Visitor]:
    """The groups of :func:`visitor_groups` that are nobody known yet."""
    return [v for v in visitor_groups(store, meta, threshold, method, door) if v.known is None]


def check_visitor_name(name: str) -> str:
    text = " ".join(name.split())
    if not text or len(text) > MAX_VISITOR_NAME:
        raise UsageError(f"a known visitor's name: 1 to {MAX_VISITOR_NAME} characters "
                         "(e.g. postman)")
    return text


def mark_not_resident(store: ActivityStore, attempts: Sequence[Attempt],
                      name: str = NOT_RESIDENT) -> str:
    """Mark refused attempts (a visitor group) as the known visitor ``name``, who is not a
    resident: the Visitors page lists the group under known visitors, and later attempts that
    group with it are shown as ``name``. Nothing is enrolled and no door changes; undone by
    :func:`unmark_visitor`. Returns the name as stored."""
    text = check_visitor_name(name)
    for a in attempts:
        if a.decision not in UNKNOWN_DECISIONS:
            raise UsageError(f"attempt {a.id} was an {a.decision}: only refused attempts can be "
                             "a known visitor (on a wrong unlock use --not NAME)")
    store.mark_visitor([a.id for a in attempts], text)
    return text


def unmark_visitor(store: ActivityStore, attempts: Sequence[Attempt]) -> int:
    """Take the known-visitor mark off ``attempts`` (a known group): they are unknown again."""
    return store.unmark_visitor([a.id for a in attempts])


def known_visitor_names(store: ActivityStore, meta: ModelMetadata | None,
                        attempts: Sequence[Attempt], threshold: str | None = None
                        ) -> dict[str, str]:
    """Attempt id -> known visitor, for the attempts shown on one page: marked ones, and refused
    ones whose face the head takes for a marked face of that visitor at the grouping threshold
    (a direct link; the Visitors page also follows chains). Costs len(attempts) x marked
    head scores, so it stays cheap on a page of attempts."""
    marks = store.visitor_marks()
    if not marks:
        return {}
    named = {a.id: marks[a.id] for a in attempts if a.id in marks}
    if meta is None:
        return named
    probes = [a for a in attempts if a.id not in marks and _groupable(a, meta)]
    if not probes:
        return named
    marked = [a for a in store.attempts(ids=list(marks)) if _groupable(a, meta)]
    if not marked:
        return named
    _, value = threshold_of(meta, threshold)
    logits = cross_logits(np.stack([a.embedding for a in probes]),  # type: ignore[misc]
                          np.stack([a.embedding for a in marked]),  # type: ignore[misc]
                          meta.head_weights, meta.head_bias)
    best = logits.argmax(axis=1)
    for probe, j, row in zip(probes, best, logits, strict=True):
        if row[j] >= logit(value):
            named[probe.id] = marks[marked[int(j)].id]
    return named


def find_group(visitors: Sequence[Visitor], key: str) -> Visitor:
    for visitor in visitors:
        if visitor.key == key or key in {a.id for a in visitor.attempts}:
            return visitor
    raise UsageError(f"no visitor group {key!r} now (twinlock activity visitors lists them)")
