"""Child processes that lead their own process group: killing the whole group, and their output.

A hook or an ssh step is started with ``start_new_session=True`` so that a timeout can kill what
it started too (a shell's children, ssh's helpers), not only the process we know about: killing
the leader alone leaves grandchildren holding our pipes open, and reading them would hang.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from typing import Any

logger = logging.getLogger(__name__)


def kill_group(proc: subprocess.Popen[Any], *, reap: bool = False) -> None:
    """SIGKILL the process group ``proc`` leads (and ``proc`` itself, should the group be gone).

    With ``reap``, also wait for ``proc`` and close our ends of its pipes without reading them to
    the end: something outside the group (an ssh master) may keep them open for ever.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except OSError as exc:
        logger.warning("cannot kill process group %s: %s; killing its leader alone", proc.pid, exc)
    proc.kill()
    if not reap:
        return
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def output_tail(output: bytes | str | None, max_chars: int, max_lines: int | None = None) -> str:
    """The end of a process's output for a log line or an error: its last non-blank lines (all
    of them, or ``max_lines``), cut to the last ``max_chars`` characters; "" when there is none."""
    text = output.decode("utf-8", errors="replace") if isinstance(output, bytes) else output or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if max_lines is not None:
        lines = lines[-max_lines:]
    return "\n".join(lines)[-max_chars:]
