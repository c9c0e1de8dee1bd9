"""The door's counting rules: frame agreement, attempts and the lockout (pure, clock passed in).

- **Over frames**: the door opens for a user verified in at least k of the last n evaluated
  frames that lie within t seconds. One good frame, or a lucky match, never opens the door.
- **Attempts**: a run of evaluated frames is one attempt; it ends with an unlock, after t seconds
  without a face, or after ``attempt_seconds``. Too many failed attempts (or unrecognised
  face-frames) in a window lock the door out for a while.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from ..recognition.verify import FrameVerdict

logger = logging.getLogger(__name__)


@dataclass
class AgreementWindow:
    """k of the last n evaluated frames within t seconds must agree on one user.

    A frame whose face crop or embedding is identical to the previous frame's, or to a frame
    still in the window, is no new evidence (a still photo, a frozen or replayed feed, two photos
    in turn): it gets no vote. Real camera frames always differ by sensor noise. The previous
    frame's evidence outlives :meth:`clear`, so a frozen picture gets one vote in all, not one
    per attempt.
    """

    frames_required: int
    frame_window: int
    window_seconds: float
    _history: deque[tuple[float, str | None]] = field(default_factory=deque)
    _evidence: deque[tuple[bytes, ...]] = field(default_factory=deque)  # beside _history
    _last_evidence: tuple[bytes, ...] = ()
    #: frames refused as repeats (for the log and tests)
    repeats: int = 0

    def add(self, timestamp: float, user: str | None,
            evidence: tuple[bytes, ...] = ()) -> str | None:
        """Record one frame's verdict; returns the user the window now agrees on, if any.

        ``evidence`` is what identifies the frame's content (e.g. digests of the face crop and
        of the embedding); equal in any position to the previous frame's or to a frame still in
        the window, the frame is a repeat.
        """
        self.expire(timestamp)
        last, self._last_evidence = self._last_evidence, evidence
        if any(a == b for seen in (last, *self._evidence)
               for a, b in zip(evidence, seen, strict=False)):
            self.repeats += 1
            logger.debug("frame at %.3f repeats an earlier one: no new evidence", timestamp)
            return None
        self._history.append((timestamp, user))
        self._evidence.append(evidence)
        while len(self._history) > self.frame_window:
            self._history.popleft()
            self._evidence.popleft()
        self.expire(timestamp)
        if user is None:
            return None
        votes = sum(1 for _, u in self._history if u == user)
        return user if votes >= self.frames_required else None

    def expire(self, now: float) -> None:
        while self._history and now - self._history[0][0] > self.window_seconds:
            self._history.popleft()
            self._evidence.popleft()

    def clear(self) -> None:
        self._history.clear()
        self._evidence.clear()

    def __len__(self) -> int:
        return len(self._history)


@dataclass
class Attempt:
    """One visitor's run of evaluated frames, summarised for the audit log."""

    started: float
    last_seen: float
    frames: int = 0
    verified_frames: int = 0
    best_score: float = 0.0
    best_user: str | None = None
    quality_rejections: dict[str, int] = field(default_factory=dict)

    def add(self, now: float, verdict: FrameVerdict | None, quality: str | None) -> None:
        self.last_seen = now
        if quality is not None:
            self.quality_rejections[quality] = self.quality_rejections.get(quality, 0) + 1
            return
        assert verdict is not None
        self.frames += 1
        self.verified_frames += verdict.user is not None
        if verdict.best_score >= self.best_score:
            self.best_score, self.best_user = verdict.best_score, verdict.best_user


@dataclass
class Lockout:
    """Refuse every unlock for ``lockout_seconds`` after ``max_failures`` failed attempts, or
    ``max_failed_frames`` face-frames that verified nobody, within ``window_seconds``.

    Attempts alone are not enough: an attacker who never lets the face leave the camera makes
    one attempt per ``attempt_seconds``, so a few failed attempts can span more than the window
    while every frame in between was a new guess. Frames are what an attacker spends, so they
    are counted too.
    """

    enabled: bool
    max_failures: int
    window_seconds: float
    lockout_seconds: float
    max_failed_frames: int | None = None
    _failures: deque[float] = field(default_factory=deque)
    _failed_frames: deque[float] = field(default_factory=deque)
    until: float = 0.0
    #: why the current (or last) lockout started
    reason: str = ""

    def locked(self, now: float) -> bool:
        return self.enabled and now < self.until

    def failure(self, now: float) -> bool:
        """Count a failed attempt; True when this one starts a lockout."""
        return self._count(self._failures, now, self.max_failures,
                           f"{self.max_failures} failed attempts")

    def failed_frame(self, now: float) -> bool:
        """Count a face-frame that verified nobody; True when this one starts a lockout."""
        if self.max_failed_frames is None:
            return False
        return self._count(self._failed_frames, now, self.max_failed_frames,
                           f"{self.max_failed_frames} unrecognised face-frames")

    def resume(self, until: float, reason: str) -> None:
        """Carry on a lockout that a restart interrupted (the daemon rebuilds it from the audit
        log): refuse unlocks until ``until``. Never shortens one already running."""
        if self.enabled and until > self.until:
            self.until, self.reason = until, reason

    def _count(self, events: deque[float], now: float, limit: int, what: str) -> bool:
        if not self.enabled or self.locked(now):
            return False  # during a lockout nothing can open anyway; it is not extended
        events.append(now)
        while events and now - events[0] > self.window_seconds:
            events.popleft()
        if len(events) < limit:
            return False
        self.until = now + self.lockout_seconds
        self.reason = f"{what} within {self.window_seconds:g} s"
        self._failures.clear()
        self._failed_frames.clear()
        return True
