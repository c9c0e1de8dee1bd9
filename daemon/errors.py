"""One exception tree for the whole project.

Every error TwinLock raises on purpose is a ``TwinLockError``. Leaves also subclass the matching
stdlib type, so callers that already catch ``FileNotFoundError`` or ``ValueError`` keep working.
Entry points map these to exit codes and one clear line; library code never prints or exits.
"""

from __future__ import annotations


class TwinLockError(Exception):
    """Base of every error TwinLock raises on purpose."""

    #: exit code an entry point returns for this error
    exit_code: int = 1


class UsageError(TwinLockError, ValueError):
    """The user asked for something that cannot work (bad option values, bad combinations)."""

    exit_code = 2


class DataError(TwinLockError, ValueError):
    """Input data is missing, unreadable or unusable (empty folders, bad pairs files, ...)."""

    exit_code = 2


class DataNotFoundError(DataError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class ConfigError(TwinLockError, ValueError):
    """The daemon's config file is missing, unreadable, not YAML, or breaks the schema.

    The message has one line per problem (``file:line: key.path: problem (got value)``);
    ``problems`` holds the same as ``twinlock.daemon.config.problems.ConfigProblem`` records.
    """

    exit_code = 2

    def __init__(self, message: str, problems: list[object] | None = None) -> None:
        super().__init__(message)
        self.problems: list[object] = list(problems or [])


class ModelError(TwinLockError, ValueError):
    """A model folder or file is missing, malformed or does not match what the code expects."""

    exit_code = 2


class RuntimeBackendError(TwinLockError, RuntimeError):
    """No LiteRT backend could be loaded, or the interpreter failed while running."""


class DetectorError(TwinLockError, RuntimeError):
    """The face detector could not be created or failed on a frame."""


class AuditError(TwinLockError, RuntimeError):
    """The audit log could not be opened, written or read, or was handed a record it cannot keep."""


class ActionError(TwinLockError, RuntimeError):
    """The unlock action (relay, command hook) could not be set up or could not drive its output."""


class CameraError(TwinLockError, OSError):
    """A camera could not be opened or stopped delivering frames (unplugged, busy, bad device)."""


class AlreadyRunningError(TwinLockError, RuntimeError):
    """Another daemon already runs on this state folder (it holds ``state_dir``'s lock): two
    would fight over the relay, the camera, the audit log and the bundles, so the second one
    refuses to start."""

    exit_code = 3


class BundleError(TwinLockError, ValueError):
    """A signed bundle or its keys are missing, malformed, altered, unsigned or signed by a key
    the door does not trust; the message says which check failed. Nothing was installed."""

    exit_code = 2
