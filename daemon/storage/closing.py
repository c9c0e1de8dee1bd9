"""One ``with`` for the things that hold a file, a socket or a connection until ``close()``.

Why: the audit log, the systemd notifier, the enrolment and activity stores and the deploy's SSH
session each wrote the same ``__enter__``/``__exit__``; a class that only has to close takes them
from here. Cameras are not among them: entering one opens it.
"""

from __future__ import annotations

from typing import Self


class Closing:
    """``with thing:`` hands ``thing`` in and calls its ``close()`` on the way out, whatever
    happened inside (an exception is not swallowed)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
