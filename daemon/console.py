"""What the two command lines (``twinlockd``, ``twinlock``) share: logging to stderr, and one
way from the exception tree to an exit status.

Why one place: a shell script, systemd and the tests read the exit codes and the
``<prog> <command>: error: ...`` line of both programs alike; written once here, the two cannot
drift apart.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .errors import TwinLockError

#: the exit status of a command stopped with Ctrl-C (128 + SIGINT), as a shell reports it
INTERRUPTED = 130


def command_parser(prog: str, description: str) -> tuple[argparse.ArgumentParser,
                                                         argparse._SubParsersAction]:
    """The top of both programs' parsers: ``-v`` and a required COMMAND, one subparser each."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def setup_logging(verbose: bool) -> None:
    """Log lines to stderr (stdout is left to a command's output), DEBUG with ``-v``."""
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def run_command(prog: str, command: str, call: Callable[[], int], *,
                say_interrupted: bool = False) -> int:
    """``call()``'s exit status; a TwinLockError is one line on stderr and its ``exit_code``,
    Ctrl-C is :data:`INTERRUPTED` (with a line on stderr when ``say_interrupted``)."""
    try:
        return call()
    except TwinLockError as exc:
        print(f"{prog} {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if say_interrupted:
            print(f"{prog} {command}: interrupted", file=sys.stderr)
        return INTERRUPTED
