"""What the door decided, done: records to the outbox, the relay after its record.

:func:`carry_out` performs the door machine's commands in order (an unlock only once its
record is committed); :func:`resume_lockout` carries a lockout over a restart.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np

from ..errors import AuditError, TwinLockError
from ..storage.audit import SnapshotStore, boot_clock, seconds_since
from ..storage.guard import AuditWriter
from .actions import Action
from .events import Outbox, Record
from .machine import Command, DoorMachine, Unlock

logger = logging.getLogger(__name__)


def carry_out(commands: list[Command], door: DoorMachine, outbox: Outbox, action: Action,
              snapshots: SnapshotStore | None = None, image: np.ndarray | None = None) -> None:
    """Do what the door decided, in order. An unlock happens only once its record is committed;
    if it cannot be, the door stays shut and the machine is told. ``image``: the last picture
    with a face (for a snapshot of a refused attempt)."""
    for command in commands:
        if isinstance(command, Record):
            if command.event == "lockout":  # timed by the boot clock too (resume_lockout)
                command = replace(command, details=(command.details or {}) | boot_clock())
            outbox.write(command, image)
        elif isinstance(command, Unlock):
            if outbox.write(command.record, image):
                action.unlock(command.user)
                door.last_decision += f" at {time.strftime('%H:%M:%S')}"
                logger.info("door opened for %s", command.user)
            else:
                door.unlock_not_recorded(command.user)
        elif snapshots is not None and image is not None:
            try:
                snapshots.save(image, time.time(), command.kind)
            except (OSError, TwinLockError) as exc:
                logger.warning("snapshot not saved: %s", exc)


def resume_lockout(log: AuditWriter, door: DoorMachine, outbox: Outbox, now: float) -> float:
    """Carry a lockout over a restart: a crash, an OOM kill or a flood that forces restarts must
    not lift it. The last ``lockout`` record says how long it was to last; how long ago it began
    is measured by the boot clock when it is from this boot (a wall clock set since changes
    nothing), else by the wall clock, with no time passed if that went back. The rest is resumed
    on the door's clock (``now``, the frames' monotonic time) and recorded, so the next restart
    measures from there. Returns the seconds resumed (0: none)."""
    if not door.lockout.enabled:
        return 0.0
    try:
        last = log.last("lockout")
    except AuditError as exc:
        logger.error("cannot look for a lockout to resume: %s", exc)
        return 0.0
    seconds = (last.details or {}).get("lockout_seconds") if last is not None else None
    if last is None or not isinstance(seconds, (int, float)):
        return 0.0
    length = min(float(seconds), door.settings.lockout_seconds)
    left = length - seconds_since(last)
    if left <= 0:
        return 0.0
    door.lockout.resume(now + left, last.reason)
    logger.warning("lockout resumed after a restart: %.0f s left (%s)", left, last.reason)
    outbox.write(Record("lockout", "deny", last.reason,
                        details={"lockout_seconds": round(left, 3), "resumed": True}
                        | boot_clock()))
    return left
