"""The relay's pin on a real board: gpiozero over lgpio, never left floating.

gpiozero's lgpio pin (gpiozero 2.0, ``gpiozero/pins/lgpio.py``) claims a line as an input without
bias when it is made and again when it is closed, and claims an output low before writing its
first level. For a door that meant:

- after every stop, including ``twinlockd relay-off`` (the unit's ExecStopPost=), the relay's input
  was left floating with the SoC's pull switched off: whether the door stayed shut then depended
  on the relay board's own resistors;
- an active-low relay saw a blip of its *on* level as the daemon started.

The pin here claims the line as an output directly at the level it is first given (the relay's
off level: :class:`~daemon.door.actions.GpioAction` passes ``initial_value=False``) with the SoC's
pull set to that same level, and on close leaves the line as it is for the kernel to release.
What a released line does is the kernel's: Raspberry Pi OS keeps it driven
(its pin controller's ``persist_gpio_outputs``, on by default there); a kernel without that turns it
into an input, where the pull set at the claim holds it at the off level. Either way the relay's
input is held off, by the pin or by the pull, not left to the board. (One moment remains as
gpiozero makes it: as the pin object is made, gpiozero's own code claims the line as an input
without bias, for the few milliseconds before the output claim.)

lgpio and gpiozero are imported only when a relay is made, not when this module is.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def relay_pin_factory() -> Any | None:
    """An lgpio pin factory whose pins hold their off level, or None to let gpiozero choose.

    None where a default factory is already set (``gpiozero.Device.pin_factory``) or
    ``GPIOZERO_PIN_FACTORY`` names another (tests use ``mock``), and, with a warning, where lgpio
    is not installed or its factory cannot be made here (not a Pi, no access to
    ``/dev/gpiochip*``): gpiozero then chooses as it always did, and reports its own errors.
    """
    from gpiozero import Device

    chosen = os.environ.get("GPIOZERO_PIN_FACTORY")
    if Device.pin_factory is not None or (chosen is not None and chosen.lower() != "lgpio"):
        return None
    try:
        import lgpio
        from gpiozero.pins.lgpio import LGPIOFactory, LGPIOPin
    except ImportError:
        logger.warning("lgpio is not installed: the relay's pin is left to gpiozero's default "
                       "factory, which may leave it floating after a stop")
        return None

    #: lgpio's claim flags for a pull towards each level
    pull_towards = {0: lgpio.SET_PULL_DOWN, 1: lgpio.SET_PULL_UP}

    class HeldLGPIOPin(LGPIOPin):
        """An lgpio pin that is claimed as an output at its first level and never let float."""

        def output_with_state(self, state: Any) -> None:
            """Claim the line as an output at ``state``, the SoC's pull towards it, in one call."""
            level = int(bool(state))
            lgpio.gpio_claim_output(self.factory._handle, self._number, level,
                                    pull_towards[level])

        def close(self) -> None:
            """Leave an output as it is (the factory's close releases the line); gpiozero's own
            close would claim it as an input without pull."""
            if self.factory._handle is not None and self.function != "output":
                super().close()

    class HeldLGPIOFactory(LGPIOFactory):
        """lgpio's factory, making :class:`HeldLGPIOPin` pins."""

        def __init__(self) -> None:
            super().__init__()
            self.pin_class = HeldLGPIOPin

    try:
        return HeldLGPIOFactory()
    except Exception as exc:  # noqa: BLE001  (PinUnknownPi, lgpio.error, ...: any is "not here")
        logger.warning("lgpio cannot drive the relay here (%s: %s): its pin is left to gpiozero's "
                       "default factory", type(exc).__name__, exc)
        return None
