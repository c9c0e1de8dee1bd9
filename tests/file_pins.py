"""A gpiozero mock pin whose level lives in a file, for tests only.

A real GPIO line keeps the level it was driven to when the process that drove it dies (kill -9,
OOM): the relay stays on. gpiozero's MockFactory forgets everything with its process, so it
cannot show that, nor that a later process switched it off. ``FilePin`` writes the driven level
to ``$TWINLOCK_TEST_PIN_DIR/GPIO<n>`` ("1" or "0") on every change and starts from what the file
says, like a line another process left behind.

Run as a script it is ``twinlockd`` with this factory installed::

    TWINLOCK_TEST_PIN_DIR=DIR python tests/file_pins.py run --config FILE
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

ENV = "TWINLOCK_TEST_PIN_DIR"


def pin_file(pin_dir: Path, number: int) -> Path:
    return Path(pin_dir) / f"GPIO{number}"


def read_level(pin_dir: Path, number: int) -> bool | None:
    """The level a test's pin was last driven to; None if it never was."""
    path = pin_file(pin_dir, number)
    return path.read_text() == "1" if path.exists() else None


def write_level(pin_dir: Path, number: int, level: bool) -> None:
    """Atomically: a reader never sees a half-written file."""
    path = pin_file(pin_dir, number)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("1" if level else "0")
    os.replace(tmp, path)


class FilePin(MockPin):
    """A MockPin that starts at, and writes every change to, its file."""

    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self._dir = Path(os.environ[ENV])
        self._number = int(str(info.name).removeprefix("GPIO"))
        level = read_level(self._dir, self._number)
        if level is not None:
            self._state = level
            self.clear_states()

    def _change_state(self, value: bool) -> bool:
        changed = super()._change_state(value)
        write_level(self._dir, self._number, bool(value))
        return changed


def factory() -> MockFactory:
    return MockFactory(pin_class=FilePin)


def main(argv: list[str]) -> int:
    from gpiozero import Device

    from twinlock.daemon.cli import main as twinlockd

    Device.pin_factory = factory()
    return twinlockd(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
