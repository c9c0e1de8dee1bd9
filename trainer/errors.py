"""The host side's own leaves of the one exception tree (twinlock.daemon.errors): failures that
only the desktop can meet, so the door's package does not carry them."""

from __future__ import annotations

from twinlock.daemon.errors import TwinLockError


class DeployError(TwinLockError, RuntimeError):
    """Shipping a bundle to a door failed; ``step`` says where (connect, upload, rename, reload,
    or copy for a card), ``stderr`` holds the tail of what the failing command said."""

    def __init__(self, message: str, step: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.stderr = stderr


class EnrolmentError(TwinLockError, RuntimeError):
    """The host's enrolment store could not be opened, read or written (locked, damaged, or made
    by a newer TwinLock)."""
