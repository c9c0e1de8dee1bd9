"""The door's outbox: every event, with its kind as a field, to an ordered list of sinks.

An event is an audit :class:`Record` the door decided on (an unlock, a refusal, a lockout, a
fault, an installed bundle, a start...) or a notice that is not audited (the camera went away,
the relay pulses, the audit log fails). :class:`Outbox` hands each one to its sinks in order:
the audit log first, which may stop it (a record that could not be committed reaches no other
sink, and an unlock without its record never pulses the relay), then MQTT, systemd's status
line and whatever a later issue adds. Nothing downstream parses reason text: the kind says
what happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from ..storage.guard import GuardedAudit
from .notify import Notifier

logger = logging.getLogger(__name__)


class EventKind(StrEnum):
    """What happened; the value is MQTT's ``event_type`` for the published kinds."""

    UNLOCK = "unlock"
    DENIED = "denied"
    LIVENESS_FAILURE = "liveness_failure"
    LOCKOUT = "lockout"
    FAULT = "fault"
    CAMERA_LOST = "camera_lost"
    CAMERA_BACK = "camera_back"
    RELOAD = "reload"
    REMOTE_REFUSED = "remote_unlock_refused"
    BUNDLE = "bundle"
    START = "start"
    STOP = "stop"
    NO_MATCH = "no_match"
    # notices of the door's own state, never audited nor published as events
    RELAY_OPEN = "relay_open"
    RELAY_CLOSED = "relay_closed"
    AUDIT_FAILING = "audit_failing"
    AUDIT_BACK = "audit_back"

    @classmethod
    def of(cls, event: str) -> EventKind:
        """The kind of an audit record by its audit event (a refused attempt's liveness
        failure is said by the door machine, which knows it, not guessed here)."""
        if event in ("deny", "quality"):
            return cls.DENIED
        if event == "remote":
            return cls.REMOTE_REFUSED
        return cls(event)


@dataclass(frozen=True)
class AttemptEnd:
    """The attempt a record ends, for the review store: the door machine says its decision
    (one of daemon/review/format.DECISIONS) and hands over its best-scoring face, the tower's
    own aligned chip and its embedding (None when no face of the attempt was scored; always
    None for a remote unlock, which nobody's face decided)."""

    decision: str
    crop: np.ndarray | None = None
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class Record:
    """One audit record to write (``AuditLog.record``'s arguments) and its kind."""

    event: str
    decision: str
    reason: str
    user: str | None = None
    best_score: float | None = None
    frame: int | None = None
    details: dict[str, Any] | None = None
    #: what happened; left out, the audit event's own kind (:meth:`EventKind.of`)
    kind: EventKind = field(default=None)  # type: ignore[assignment]
    #: set on the record that ends a visitor's attempt (not audited: the review store's)
    attempt: AttemptEnd | None = field(default=None, compare=False, repr=False)
    #: False for a record only the review store keeps: a refusal during a lockout after the
    #: first (the audit log counts those in one summary record when the lockout ends, and MQTT
    #: publishes none of them) still leaves its face for the household
    audited: bool = True

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", EventKind.of(self.event))

    def fields(self) -> dict[str, Any]:
        """The keyword arguments of ``AuditLog.record`` beyond event, decision and reason."""
        return {"user": self.user, "best_score": self.best_score, "frame": self.frame,
                "details": self.details}


@dataclass
class Event:
    """One event on its way through the sinks."""

    kind: EventKind
    #: the audit record; None for a notice (nothing to audit)
    record: Record | None = None
    #: a notice's words (a record's are its reason)
    reason: str = ""
    #: the last picture that showed a face, when there is one (snapshots, the review store)
    image: np.ndarray | None = None
    #: the audit record's id, set by the audit sink once it is committed
    audit_id: int | None = None

    @classmethod
    def of(cls, record: Record, image: np.ndarray | None = None) -> Event:
        return cls(record.kind, record, record.reason, image)


class EventSink(Protocol):
    """Where events go. ``handle`` returns False only to stop the event there (the audit log,
    when it could not commit it); a sink's own trouble is its own (logged, never raised)."""

    def handle(self, event: Event) -> bool: ...


class Outbox:
    """Every event to every sink, in order; see the module docstring."""

    def __init__(self, sinks: Sequence[EventSink] = ()) -> None:
        self.sinks = list(sinks)

    def send(self, event: Event) -> bool:
        """Hand ``event`` to each sink in turn; False when one stopped it (not committed)."""
        for sink in self.sinks:
            try:
                if not sink.handle(event):
                    return False
            except Exception:  # a sink's bug must not stop the door nor the sinks after it
                logger.exception("event sink %s failed on %s", type(sink).__name__, event.kind)
        return True

    def write(self, record: Record, image: np.ndarray | None = None) -> bool:
        """Send one audit record; True once it is committed (and handed on)."""
        return self.send(Event.of(record, image))

    def record(self, event: str, decision: str, reason: str, **fields: Any) -> bool:
        """``AuditLog.record``'s shape, for code below the door (the drop folder's intake)."""
        return self.write(Record(event, decision, reason, **fields))


class AuditSink:
    """The audit log as the first sink: commits each record and stops an event it could not
    commit (no other sink hears of it, and an unlock stays shut)."""

    def __init__(self, log: GuardedAudit) -> None:
        self.log = log

    def handle(self, event: Event) -> bool:
        record = event.record
        if record is None or not record.audited:  # a notice, or the review store's alone
            return True
        event.audit_id = self.log.record(record.event, record.decision, record.reason,
                                         **record.fields())
        return event.audit_id is not None


class StatusSink:
    """systemd's STATUS= line, said again at once when the audit log fails or works again
    (``line`` builds the rest of it: model, frame rate, camera, last decision)."""

    def __init__(self, notifier: Notifier, line: Callable[[], str]) -> None:
        self.notifier, self.line = notifier, line
        self.audit_error: str | None = None

    def handle(self, event: Event) -> bool:
        if event.kind in (EventKind.AUDIT_FAILING, EventKind.AUDIT_BACK):
            self.audit_error = event.reason if event.kind is EventKind.AUDIT_FAILING else None
            self.show()
        return True

    def show(self) -> None:
        text = self.line()
        if self.audit_error is not None:
            text = f"AUDIT LOG FAILING ({self.audit_error}): no unlock until it is fixed; {text}"
        self.notifier.status(text)
