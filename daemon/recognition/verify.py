"""From one face's embedding to an unlock decision.

1. **Per frame**: the face is scored against every anchor of every resident at once; each
   resident's scores are fused into one (``verification.fusion``: the best anchor by default,
   chosen by the door-level measurement in docs/how-it-works/decisions.md); the resident with the
   best fused score is *verified* when it reaches the threshold (the model's door-calibrated
   ``default_threshold`` unless the config names another), or that resident's own stricter
   threshold from the gallery when it has one (a resident with a look-alike sister or twin;
   docs/how-it-works/security.md). With a model calibrated per anchor count, a resident with
   anchors from labels (the door's own faces) gets a bar raised so that those anchors do not
   make them easier to impersonate (``fusion.resident_thresholds``). A resident's own value
   only ever raises the bar: the door's stays the floor whatever a gallery says.
2. **Over frames** (daemon/door/rules.py and machine.py): k of the last n frames must agree, in
   attempts, with a lockout and a cooldown.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .fusion import Fusion, templates
from .gallery import Gallery
from .scoring import l1_head_matrix, l1_head_scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameVerdict:
    """What one face in one frame showed."""

    user: str | None  # the verified user, or None
    best_user: str | None  # the user with the best single anchor score (even if not verified)
    best_score: float  # best anchor score over all users (0 with an empty gallery)
    share: float  # share of ``user``'s (else the top resident's) anchors passing the threshold
    score: float = 0.0  # the top resident's fused score (what the threshold is compared with)
    top_user: str | None = None  # the resident with the best fused score (even if not verified)


class Verifier:
    """Scores a probe against every resident's templates at once (one matrix product), fuses
    each resident's scores with ``fusion`` (daemon/recognition/fusion.py) and verifies the top resident when
    the fused score reaches ``threshold`` or, when higher, that resident's own (``limits``).
    The top resident is the only candidate: a face that looks most like a strict resident but
    misses her bar is refused, not handed to the next resident."""

    def __init__(self, gallery: Gallery, weights: np.ndarray, bias: float, threshold: float,
                 verification_threshold: float = 0.5, fusion: str = "max",
                 per_resident: Sequence[float] | None = None) -> None:
        self.threshold = threshold
        self.verification_threshold = verification_threshold
        self.fusion = fusion
        self.weights, self.bias = weights, bias
        self._users = list(gallery.users)
        blocks = [user.anchors for user in gallery.users.values()]
        self._anchors, self._owner = templates(blocks, fusion)
        if not len(self._anchors):
            self._anchors = np.zeros((0, weights.shape[0]), np.float32)
        self._fuse = Fusion(self._owner, len(self._users), fusion, verification_threshold)
        # the door's bar per resident: ``per_resident`` (raised for anchors from labels,
        # fusion.resident_thresholds) when given, else the one threshold
        door = list(per_resident) if per_resident is not None else [threshold] * len(self._users)
        if len(door) != len(self._users):
            raise ValueError(f"{len(door)} per-resident thresholds for {len(self._users)} "
                             "residents")
        #: each resident's bar (R,): the door's, or the resident's own when stricter
        self.limits = np.array([max(bar, user.threshold or bar)
                                for bar, user in zip(door, gallery.users.values(), strict=True)],
                               dtype=np.float64)
        for bar, user in zip(door, gallery.users.values(), strict=True):
            if user.threshold is not None:
                logger.info("resident %s: own threshold %.6f (door's %.6f)", user.name,
                            max(bar, user.threshold), bar)

    def resident_scores(self, probes: np.ndarray, chunk: int = 64) -> np.ndarray:
        """Fused score of each probe (N, D) for each resident (N, R): the door's per-frame
        numbers for many faces at once (host-side evaluation; the daemon calls ``verify``)."""
        probes = np.atleast_2d(np.asarray(probes, np.float32))
        return self._fuse(l1_head_matrix(probes, self._anchors, self.weights, self.bias, chunk))

    def verify(self, probe: np.ndarray) -> FrameVerdict:
        if not len(self._anchors):
            return FrameVerdict(None, None, 0.0, 0.0)
        scores = l1_head_scores(probe, self._anchors, self.weights, self.bias)
        fused = self._fuse(scores)
        top = int(np.argmax(fused))
        best = int(np.argmax(scores))
        mine = scores[self._owner == top]
        limit = self.limits[top]
        share = float((mine >= limit).mean())
        top_user, best_user = self._users[top], self._users[int(self._owner[best])]
        user = top_user if fused[top] >= limit else None
        return FrameVerdict(user, best_user, float(scores[best]), share, float(fused[top]),
                            top_user)
