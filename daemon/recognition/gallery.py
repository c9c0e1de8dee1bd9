"""Enrolled users' anchors: the embeddings a probe face is compared with.

A gallery is tied to the model that made it (``model_id``): embeddings of different models live in
different spaces, so the daemon refuses a gallery made by another model rather than silently
comparing apples with pears.

A resident may carry a stricter threshold of their own (``threshold``, with the
``strict_far`` it was resolved from on the host): a sister or twin passes for a resident far
more often than a stranger does (docs/how-it-works/security.md). Being tied to the model, the
gallery can carry the number itself; the door only ever makes a resident stricter with it
(``Verifier``), and a gallery whose value is out of bounds is refused, not clamped.

A resident may also say how many of their anchors came from enrolment (``enrolled_anchors``);
the rest came from the door's own faces by a label (``twinlock activity label --as``), and the
door raises that resident's bar so those anchors do not make them easier to impersonate
(``fusion.resident_thresholds``). Absent (an older gallery, or no labelled anchor): all
enrolled. A count that is not a whole number within 0..anchors refuses the gallery.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..storage.files import atomic_write_json

logger = logging.getLogger(__name__)

GALLERY_FORMAT = "twinlock-gallery"
GALLERY_VERSION = 1
#: bounds of a resident's own threshold: a same-person probability, never 1 (nobody would pass)
#: and never below an even chance (it can only make the door stricter; see ``Verifier``)
MIN_USER_THRESHOLD, MAX_USER_THRESHOLD = 0.5, 0.999999


@dataclass
class User:
    name: str
    anchors: np.ndarray  # (A, D) float32
    enrolled: str = ""  # ISO time
    sources: list[str] = field(default_factory=list)  # where each anchor came from (file names)
    threshold: float | None = None  # this resident's own, stricter threshold (None: the door's)
    strict_far: float | None = None  # the one-resident target it was resolved from on the host
    #: how many of ``anchors`` came from enrolment, not from labels (None: all of them)
    enrolled_anchors: int | None = None

    @property
    def anchor_counts(self) -> tuple[int, int]:
        """(anchors, of them from enrolment): what ``fusion.resident_thresholds`` reads."""
        total = len(self.anchors)
        return total, total if self.enrolled_anchors is None else self.enrolled_anchors


def check_user_threshold(name: str, threshold: object) -> float | None:
    """A resident's own threshold, or None; ModelError unless a finite number within
    [MIN_USER_THRESHOLD, MAX_USER_THRESHOLD] (a bad value refuses the gallery: fail safe)."""
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) \
            or not math.isfinite(threshold) \
            or not MIN_USER_THRESHOLD <= threshold <= MAX_USER_THRESHOLD:
        raise ModelError(f"user {name!r}: threshold {threshold!r} must be a number within "
                         f"{MIN_USER_THRESHOLD}..{MAX_USER_THRESHOLD}")
    return float(threshold)


def check_enrolled_anchors(name: str, count: object, anchors: int) -> int | None:
    """A resident's count of anchors from enrolment, or None (all); ModelError unless a whole
    number within 0..``anchors``: a gallery claiming more enrolled anchors than it holds would
    lower that resident's bar, so it is refused (fail safe)."""
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= anchors:
        raise ModelError(f"user {name!r}: enrolled_anchors {count!r} must be a whole number "
                         f"within 0..{anchors} (its anchors)")
    return count


@dataclass
class Gallery:
    model_id: str
    users: dict[str, User] = field(default_factory=dict)

    @property
    def embedding_dim(self) -> int | None:
        for user in self.users.values():
            return int(user.anchors.shape[1])
        return None

    def add(self, name: str, anchors: np.ndarray, sources: list[str] | None = None) -> User:
        anchors = np.asarray(anchors, dtype=np.float32)
        if anchors.ndim != 2 or len(anchors) == 0:
            raise ModelError(f"user {name!r}: anchors must be a non-empty (A, D) array")
        dim = self.embedding_dim
        if dim is not None and anchors.shape[1] != dim and name not in self.users:
            raise ModelError(f"user {name!r}: {anchors.shape[1]}-d anchors, gallery has {dim}-d")
        user = User(name, anchors, datetime.now(UTC).isoformat(timespec="seconds"),
                    list(sources or []))
        self.users[name] = user
        return user

    def to_json(self) -> dict[str, Any]:
        return {
            "format": GALLERY_FORMAT, "format_version": GALLERY_VERSION, "model_id": self.model_id,
            "users": [self._user_json(u) for u in self.users.values()],
        }

    @staticmethod
    def _user_json(user: User) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": user.name, "enrolled": user.enrolled,
                                 "sources": user.sources}
        if user.threshold is not None:  # only when set: galleries without it stay as they were
            entry["threshold"] = check_user_threshold(user.name, user.threshold)
            if user.strict_far is not None:
                entry["strict_far"] = float(user.strict_far)
        if user.enrolled_anchors is not None and user.enrolled_anchors < len(user.anchors):
            # only with labelled anchors: galleries without them stay as they were
            entry["enrolled_anchors"] = check_enrolled_anchors(
                user.name, user.enrolled_anchors, len(user.anchors))
        entry["anchors"] = user.anchors.round(6).tolist()
        return entry

    def save(self, path: Path) -> None:
        """Atomic, durable write, mode 0600: anchors are biometric data."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_json(), 0o600, indent=None)


def load_gallery(path: Path) -> Gallery:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: gallery not found (enrol users first)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable gallery ({exc})") from None
    if data.get("format") != GALLERY_FORMAT or data.get("format_version") != GALLERY_VERSION:
        raise ModelError(f"{path}: not a TwinLock gallery (version {GALLERY_VERSION})")
    gallery = Gallery(str(data.get("model_id", "")))
    try:
        for entry in data["users"]:
            user = gallery.add(str(entry["name"]), np.asarray(entry["anchors"], np.float32),
                               [str(s) for s in entry.get("sources", [])])
            user.enrolled = str(entry.get("enrolled", ""))
            user.threshold = check_user_threshold(user.name, entry.get("threshold"))
            far = entry.get("strict_far")
            user.strict_far = None if far is None else float(far)
            user.enrolled_anchors = check_enrolled_anchors(
                user.name, entry.get("enrolled_anchors"), len(user.anchors))
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: malformed gallery ({exc!r})") from None
    return gallery
