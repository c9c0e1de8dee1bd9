"""The audit log as the running door holds it: opened once, guarded on every write.

A door must keep running, locked, when its audit log cannot be opened (made immutable, damaged,
on a full or read-only card) or stops taking writes: a crash would become a restart loop, and
an unlock must never happen unrecorded. :func:`open_audit` gives a real log or an
:class:`UnavailableAudit` standing in for it; both are an :class:`AuditWriter`, so the code
above needs no union of the two. :class:`GuardedAudit` turns a failed write into a logged,
reported False instead of an exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..errors import AuditError
from .audit import AuditLog, AuditRecord

logger = logging.getLogger(__name__)


class AuditWriter(Protocol):
    """What the door needs of its audit log: write a record, find the last of an event,
    close. ``record`` raises AuditError when it cannot commit."""

    def record(self, event: str, decision: str, reason: str, user: str | None = None,
               best_score: float | None = None, frame: int | None = None,
               details: Mapping[str, Any] | None = None, ts: float | None = None) -> int: ...

    def last(self, event: str) -> AuditRecord | None: ...

    def close(self) -> None: ...


class UnavailableAudit:
    """Stands in for an audit log that could not be opened (made immutable, damaged, on a full
    or read-only card): every write fails with the reason, so the door never unlocks, while the
    daemon keeps running, locked and saying so, instead of a restart loop."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason

    def record(self, event: str, decision: str, reason: str, user: str | None = None,
               best_score: float | None = None, frame: int | None = None,
               details: Mapping[str, Any] | None = None, ts: float | None = None) -> int:
        raise AuditError(f"audit log {self.path} is not open ({self.reason}); fix it and "
                         "restart the daemon")

    def last(self, event: str) -> AuditRecord | None:
        """Nothing can be read either (and nothing resumed: the door opens for no one)."""
        return None

    def close(self) -> None:
        """Nothing is open."""


def open_audit(path: Path, retention_days: float) -> AuditWriter:
    """The audit log at ``path``, pruned to ``retention_days``; an :class:`UnavailableAudit`
    (logged at CRITICAL) when it cannot be opened."""
    try:
        audit = AuditLog(path)
    except AuditError as exc:
        logger.critical("audit log %s cannot be opened: %s. Running LOCKED: no unlock until it "
                        "is fixed and the daemon restarted", path, exc)
        return UnavailableAudit(path, str(exc))
    try:
        audit.prune(retention_days)
    except AuditError as exc:
        logger.error("old audit records not pruned: %s", exc)
    return audit


class GuardedAudit:
    """The audit log as the running door writes it.

    A failed write (disk full, read-only or damaged file) is logged at CRITICAL, handed to
    ``on_change`` (the daemon tells systemd's STATUS= and MQTT) and returned as None instead of
    raised: the door keeps running, locked. Whatever must not happen unrecorded (an unlock)
    checks the result first. ``on_change(None)`` says that writes work again.
    """

    def __init__(self, log: AuditWriter,
                 on_change: Callable[[str | None], None] | None = None) -> None:
        self.log = log
        self.on_change = on_change
        self.failures = 0
        self.failing = False

    def record(self, event: str, decision: str, reason: str, **fields: Any) -> int | None:
        """Write and commit one record: its id, or None (reported, never raised) when it
        cannot be."""
        try:
            record_id = self.log.record(event, decision, reason, **fields)
        except AuditError as exc:
            self.failures += 1
            logger.critical("AUDIT LOG WRITE FAILED (%s: %s): %s", event, reason, exc)
            if not self.failing:  # once per outage: the status line keeps saying it
                self.failing = True
                self._tell(str(exc))
            return None
        if self.failing:
            self.failing = False
            logger.warning("audit log writable again after %d failed write(s)", self.failures)
            self._tell(None)
        return record_id

    def _tell(self, error: str | None) -> None:
        if self.on_change is not None:
            try:
                self.on_change(error)
            except Exception:
                logger.exception("audit state callback failed")
