"""Enrolled users' anchors: the embeddings a probe face is compared with.

A gallery is tied to the model that made it (``model_id``): embeddings of different models live in
different spaces, so the daemon refuses a gallery made by another model rather than silently
comparing apples with pears.
"""

from __future__ import annotations

import json
import logging
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


@dataclass
class User:
    name: str
    anchors: np.ndarray  # (A, D) float32
    enrolled: str = ""  # ISO time
    sources: list[str] = field(default_factory=list)  # where each anchor came from (file names)


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
            "users": [{"name": u.name, "enrolled": u.enrolled, "sources": u.sources,
                       "anchors": u.anchors.round(6).tolist()} for u in self.users.values()],
        }

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
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: malformed gallery ({exc!r})") from None
    return gallery
