"""The door's decisions as a pure state machine: observations and a clock in, commands out.

``DoorMachine.step(now, frame, observations)`` decides (attempts, k-of-n agreement, liveness,
cooldown, lockout) and returns what should happen, in order: audit :class:`Record`\\ s, an
:class:`Unlock` (whose record must be committed before the relay moves) and
:class:`SaveSnapshot`. It touches no relay, file or clock of its own, so every rule is tested
with a fake clock (tests/test_door_machine.py); the daemon (service.py) alone carries the
commands out and tells the machine when an unlock could not be recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..faces import quality as q
from ..recognition.analyser import Observation, Rejected, Scored
from ..recognition.verify import FrameVerdict
from .events import AttemptEnd, EventKind, Record
from .liveness import LivenessSettings, LivenessTracker
from .rules import AgreementWindow, Attempt, Lockout

logger = logging.getLogger(__name__)

#: refusals during one lockout that keep a review record (the face of each); a resident waiting
#: a lockout out is refused every few frames, and the thousandth copy of one face tells the
#: household nothing the first twenty did not
REVIEWED_REFUSALS_PER_LOCKOUT = 20


@dataclass(frozen=True)
class Unlock:
    """Open the door for ``user`` ("remote" for a remote unlock), once ``record`` is committed.
    No record, no unlock: the daemon then calls :meth:`DoorMachine.unlock_not_recorded`."""

    user: str
    record: Record


@dataclass(frozen=True)
class SaveSnapshot:
    """Keep the last face picture of a refused attempt (audit.snapshots)."""

    kind: str = "deny"


Command = Record | Unlock | SaveSnapshot


@dataclass(frozen=True)
class DoorSettings:
    """The config keys the decisions read (bounds and meaning: daemon/config/schema.py; built
    from a config by daemon/door/assemble.door_settings)."""

    frames_required: int
    frame_window: int
    window_seconds: float
    cooldown_seconds: float
    attempt_seconds: float
    lockout_enabled: bool
    max_failures: int
    lockout_window_seconds: float
    lockout_seconds: float
    max_failed_frames: int | None
    liveness: LivenessSettings

    def new_lockout(self) -> Lockout:
        return Lockout(self.lockout_enabled, self.max_failures, self.lockout_window_seconds,
                       self.lockout_seconds, self.max_failed_frames)


def vetoed(observations: Sequence[Observation]) -> bool:
    """Whether several faces are in view (``quality.multiple_faces: each``) and not all of them
    are one verified resident: then no face of the frame votes for an unlock.

    Any face in view that is not the verified resident vetoes: a stranger, another resident,
    or a face the quality gate refused (a stranger's face held blurred in front of the camera
    opened the door 1 time in 6 while it only counted as a quality rejection).
    """
    if len(observations) < 2:
        return False
    users = {o.verdict.user if isinstance(o, Scored) and o.verdict is not None else None
             for o in observations}
    return len(users) > 1 or None in users


class DoorMachine:
    """Attempts, agreement, liveness, cooldown and lockout; see the module docstring."""

    def __init__(self, settings: DoorSettings, lockout: Lockout | None = None) -> None:
        self.settings = settings
        self.window = AgreementWindow(settings.frames_required, settings.frame_window,
                                      settings.window_seconds)
        #: passed on across a reload with unchanged lockout settings (a reload must not lift it)
        self.lockout = lockout or settings.new_lockout()
        self.attempt: Attempt | None = None
        self.cooldown_until = 0.0
        self._cooldown_before = 0.0
        #: unlocks refused per user during the current lockout (recorded once, when it ends)
        self._refusals: dict[str, int] = {}
        self.last_decision = "none yet"
        self.liveness: LivenessTracker | None = None  # the open attempt's evidence
        #: when recognition first agreed in this attempt while liveness had not passed
        self.awaiting_liveness_since: float | None = None
        #: frames of this attempt vetoed by another face in view (multiple_faces: each)
        self.vetoed_frames = 0
        #: the open attempt's best-scoring face (its crop and embedding go to the review store)
        self.best_face: Scored | None = None

    @property
    def needs_liveness(self) -> bool:
        """Whether a verified face's mesh is wanted (liveness on)."""
        return self.settings.liveness.enabled

    @property
    def tracking_face(self) -> bool:
        """Whether faces that do not verify want a mesh too: a resident verified in the open
        attempt, and the motion check follows the face frame by frame (a continuous sweep,
        daemon/door/liveness.py). A stranger's frames still cost nothing."""
        return self.settings.liveness.needs_motion and self.liveness is not None \
            and self.liveness.frames > 0

    # -- inputs ------------------------------------------------------------------------------

    def step(self, now: float, frame: int | None = None,
             observations: Sequence[Observation] = ()) -> list[Command]:
        """One camera frame at ``now`` (its frame number ``frame``, for the records), with what
        the analyser saw in it: nothing for a frame without a face or one not analysed."""
        out: list[Command] = []
        self._tick(now, out)
        veto = vetoed(observations)
        for observation in observations:
            self._observe(now, frame, observation, out, veto)
        if veto and self.attempt is not None:
            self.vetoed_frames += 1
            logger.debug("frame %s: %d faces in view, not all the verified resident: no vote",
                         frame, len(observations))
        return out

    def remote(self, now: float, source: str, allowed: bool) -> list[Command]:
        """An unlock asked for over MQTT (Home Assistant's lock entity). Refused unless
        ``allowed`` (``mqtt.remote_unlock``), during a lockout and during the cooldown (a flood
        of commands must not pulse the relay over and over)."""
        details = {"source": source}
        if not allowed:
            logger.warning("remote unlock refused (disabled): %s", source)
            return [Record("remote", "deny", "remote unlock refused: mqtt.remote_unlock is "
                           "false", details=details)]
        if self.lockout.locked(now):
            return [Record("remote", "deny", "remote unlock refused: locked out after repeated "
                           "failures", details=details | {"locked_until_s": self.lockout.until - now})]
        if now < self.cooldown_until:  # one pulse per cooldown, as for a face
            return [Record("remote", "deny", "remote unlock refused: the door opened less than "
                           "action.cooldown_seconds ago",
                           details=details | {"cooldown_left_s": round(self.cooldown_until - now,
                                                                       3)})]
        self._start_cooldown(now, "remote unlock")
        logger.warning("door opening remotely: %s", source)
        # an attempt that ended in an unlock, for the review store too: decision "remote",
        # no face (nobody's face decided it; a visitor in view is not who pressed the button)
        return [Unlock("remote", Record("unlock", "unlock", "remote unlock", details=details,
                                        attempt=AttemptEnd("remote")))]

    def finish(self, why: str = "daemon stopped during the attempt") -> list[Command]:
        """Records for an attempt still open when the daemon stops or reloads, so no decision
        goes unlogged. Not a failed attempt: the daemon cut the visitor off (a reload must not
        bring a lockout nearer)."""
        out: list[Command] = []
        if self.attempt is not None:
            self._end_attempt(why, EventKind.DENIED, out, failure=False)
        self._refusals_summary(out)
        return out

    def unlock_not_recorded(self, user: str) -> None:
        """The daemon could not commit the unlock's record, so the door stayed shut."""
        logger.critical("NOT opening for %s: the unlock could not be recorded", user)
        self.cooldown_until = self._cooldown_before
        self.last_decision = f"refused {user}: audit log not writable"

    # -- the rules ---------------------------------------------------------------------------

    def _tick(self, now: float, out: list[Command]) -> None:
        """Every frame: expire old votes, end an attempt once the face has been gone a while."""
        self.window.expire(now)
        if self._refusals and not self.lockout.locked(now):
            self._refusals_summary(out)
        if self.attempt is not None and (
                self._liveness_timed_out(now)
                or now - self.attempt.last_seen > self.settings.window_seconds):
            self._end_attempt(*self._failure("face left without a match"), out)

    def _observe(self, now: float, frame: int | None, observation: Observation,
                 out: list[Command], veto: bool = False) -> None:
        if now < self.cooldown_until:
            return  # the door just opened for this visit
        if self.attempt is None:
            self.attempt = Attempt(started=now, last_seen=now)
            self.liveness = LivenessTracker(self.settings.liveness)
            self.awaiting_liveness_since = None
            self.vetoed_frames = 0
            self.best_face = None
        if isinstance(observation, Rejected):
            self.attempt.add(now, None, observation.reason)
        else:
            self._scored(now, frame, observation, out, veto)
        if self.attempt is not None and now - self.attempt.started > self.settings.attempt_seconds:
            self._end_attempt(*self._failure("not recognised within the attempt time"), out)

    def _scored(self, now: float, frame: int | None, scored: Scored, out: list[Command],
                veto: bool = False) -> None:
        """``veto``: another face in the same frame is not this resident, so the frame gives
        no vote and no liveness evidence (see :func:`vetoed`)."""
        assert self.attempt is not None and self.liveness is not None
        verdict = scored.verdict
        if verdict is None:
            raise ValueError("the door needs verdicts: the analyser has no gallery")
        self.attempt.add(now, verdict, None)
        best = self.best_face
        if best is None or best.verdict is None or verdict.best_score >= best.verdict.best_score:
            self.best_face = scored
        vote = None if veto else verdict.user
        if scored.mesh is not None and (vote is not None or (not veto and self.liveness.frames)):
            self.liveness.add(now, scored.mesh, frame)  # unverified: see tracking_face
        agreed = self.window.add(now, vote, scored.evidence)
        logger.debug("frame %s: best %s %.4f, verified %s, agreed %s", frame, verdict.best_user,
                     verdict.best_score, verdict.user, agreed)
        if agreed is not None and (self.liveness.passed or self.lockout.locked(now)):
            self._agreed(now, frame, agreed, verdict, out)
            return
        if agreed is not None and self.awaiting_liveness_since is None:
            self.awaiting_liveness_since = now
            logger.info("%s recognised; waiting for liveness (%s)", agreed,
                        self.settings.liveness.mode)
        if self._liveness_timed_out(now):
            self._end_attempt(*self._failure("liveness timed out"), out)
            return
        if verdict.user is None and self.lockout.failed_frame(now):
            self._locked_out(out)

    def _failure(self, otherwise: str) -> tuple[str, EventKind]:
        """Why an attempt failed, and its kind: liveness's reason when recognition had agreed
        and only liveness was missing, else ``otherwise`` (a plain refusal)."""
        if self.awaiting_liveness_since is None or self.liveness is None:
            return otherwise, EventKind.DENIED
        return self.liveness.failure_reason(), EventKind.LIVENESS_FAILURE

    def _liveness_timed_out(self, now: float) -> bool:
        """Recognised, but no liveness within ``liveness.timeout_seconds`` of that."""
        since = self.awaiting_liveness_since
        return since is not None and now - since > self.settings.liveness.timeout_seconds

    def _agreed(self, now: float, frame: int | None, user: str, verdict: FrameVerdict,
                out: list[Command]) -> None:
        assert self.attempt is not None
        details = self._details(self.attempt) | self._liveness_details()
        if self.lockout.locked(now):
            # the first refusal of a lockout is audited; the rest are counted and audited once
            # when it ends (a resident waiting it out would add a record every few frames).
            # Each keeps its face for the review store, up to REVIEWED_REFUSALS_PER_LOCKOUT.
            self._refusals[user] = self._refusals.get(user, 0) + 1
            refusals = sum(self._refusals.values())
            if refusals <= REVIEWED_REFUSALS_PER_LOCKOUT:
                out.append(Record("deny", "deny", "locked out after repeated failures", user,
                                  verdict.best_score, frame,
                                  details | {"locked_until_s": self.lockout.until - now},
                                  attempt=self._attempt_end("lockout"),
                                  audited=refusals == 1))
            self.last_decision = f"deny {user} (locked out)"
        else:
            reason = f"verified in {self.window.frames_required} of {self.window.frame_window} " \
                "frames"
            out.append(Unlock(user, Record("unlock", "unlock", reason, user, verdict.best_score,
                                           frame, details, attempt=self._attempt_end("unlock"))))
            self._start_cooldown(now, user)
            logger.info("door opening for %s (score %.4f)", user, verdict.best_score)
        self.window.clear()
        self.attempt, self.best_face = None, None
        self.liveness, self.awaiting_liveness_since = None, None

    def _attempt_end(self, decision: str) -> AttemptEnd:
        """The ending attempt for the review store: ``decision`` and its best-scoring face."""
        best = self.best_face
        if best is None:
            return AttemptEnd(decision)
        return AttemptEnd(decision, best.crop, best.embedding)

    def _start_cooldown(self, now: float, who: str) -> None:
        self._cooldown_before = self.cooldown_until
        self.cooldown_until = now + self.settings.cooldown_seconds
        self.last_decision = f"unlock {who}"

    def _end_attempt(self, reason: str, kind: EventKind, out: list[Command],
                     failure: bool = True) -> None:
        """Record the attempt's end (``kind``: a plain refusal or a liveness failure);
        ``failure``: it counts towards the lockout."""
        attempt, self.attempt = self.attempt, None
        self.window.clear()
        liveness = self._liveness_details()
        self.liveness, self.awaiting_liveness_since = None, None
        if attempt is None:
            return
        details = self._details(attempt) | liveness
        end = self._attempt_end("liveness" if kind is EventKind.LIVENESS_FAILURE else "deny")
        self.best_face = None
        if self.vetoed_frames:
            details["vetoed_frames"] = self.vetoed_frames  # several faces, not all the resident
        if attempt.frames == 0:
            worst = max(attempt.quality_rejections, key=attempt.quality_rejections.__getitem__)
            out.append(Record("quality", "deny", f"face unusable: {q.describe(worst)}",
                              details=details, attempt=end))
            self.last_decision = f"deny ({worst})"
            return
        out.append(Record("deny", "deny", reason, None, attempt.best_score,
                          details=details | {"closest_user": attempt.best_user}, kind=kind,
                          attempt=end))
        out.append(SaveSnapshot())
        self.last_decision = ("deny (liveness)" if kind is EventKind.LIVENESS_FAILURE
                              else "deny (not recognised)")
        if failure and self.lockout.failure(attempt.last_seen):
            self._locked_out(out)

    def _refusals_summary(self, out: list[Command]) -> None:
        """One record for the unlocks refused during a lockout that is over (or cut short)."""
        if not self._refusals:
            return
        refusals, self._refusals = self._refusals, {}
        total = sum(refusals.values())
        out.append(Record("deny", "deny", f"{total} unlock(s) refused during the lockout "
                          f"({', '.join(f'{u} x{n}' for u, n in sorted(refusals.items()))})",
                          details={"refused": total, "users": refusals}))

    def _locked_out(self, out: list[Command]) -> None:
        """A lockout just started: say why, once."""
        out.append(Record("lockout", "deny", self.lockout.reason,
                          details={"lockout_seconds": self.lockout.lockout_seconds}))
        logger.warning("lockout for %.0f s: %s", self.lockout.lockout_seconds,
                       self.lockout.reason)

    def _liveness_details(self) -> dict[str, Any]:
        """The attempt's liveness evidence for its audit record (empty when liveness is off)."""
        if self.liveness is None or not self.settings.liveness.enabled:
            return {}
        return {"liveness": self.liveness.summary()}

    @staticmethod
    def _details(attempt: Attempt) -> dict[str, Any]:
        return {"frames": attempt.frames, "verified_frames": attempt.verified_frames,
                "quality_rejections": dict(attempt.quality_rejections),
                "seconds": round(attempt.last_seen - attempt.started, 3)}
