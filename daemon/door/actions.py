"""What happens when a user is recognised: a relay pulse, a command hook, or a log line.

Every action returns from :meth:`Action.unlock` at once (the frame loop must keep watching) and
does its work in the background. The relay's one hard rule: it is never switched on at start,
restart or stop, and :meth:`Action.safe` switches it off at once, even mid-pulse. An optional
``on_event(kind, detail)`` callback reports what the hardware actually did ("pulse_start",
"pulse_end", "hook_ok", "hook_failed") so the service can audit it; the callback's own errors are
logged and never reach the hardware path.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import ActionError, UsageError
from ..processes import kill_group, output_tail
from .relay_pin import relay_pin_factory

if TYPE_CHECKING:
    from ..config.schema import Config

logger = logging.getLogger(__name__)

#: ``on_event(kind, detail)``; kind is "pulse_start", "pulse_end", "hook_ok" or "hook_failed"
EventCallback = Callable[[str, str], None]

#: how much of a failed hook's output goes into the log
HOOK_OUTPUT_TAIL = 2000


@runtime_checkable
class Action(Protocol):
    """The small interface the service drives; chosen by the config's ``action.type``."""

    name: str

    def unlock(self, user: str) -> None:
        """Start opening the door for ``user``; returns at once."""
        ...

    def safe(self) -> None:
        """Force the lock closed now (relay off, hook stopped)."""
        ...

    def close(self) -> None:
        """``safe()``, then release the hardware; idempotent."""
        ...

    @property
    def busy(self) -> bool:
        """True while a pulse or hook is running."""
        ...


def _emit(callback: EventCallback | None, kind: str, detail: str) -> None:
    """Report to the service; a broken callback must not break the door."""
    if callback is None:
        return
    try:
        callback(kind, detail)
    except Exception:
        logger.exception("action event callback failed for %s (%s)", kind, detail)


def _check_seconds(what: str, value: float) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number of seconds, not {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(f"{what} must be > 0 seconds, not {value!r}")
    return seconds


class GpioAction:
    """A relay on a GPIO pin, pulsed for ``pulse_seconds`` per unlock.

    ``initial_value=False`` makes gpiozero drive the pin to the *inactive* level as it claims it,
    so the relay never clicks at start; ``active_high=False`` serves the common active-low relay
    boards. A second unlock during a pulse neither extends nor restarts it (the door is already
    open; extending would let a stream of frames hold it open). Nothing global is registered: no
    atexit hook, no signal handler, no default pin factory. Without a factory given, the relay
    makes lgpio's own with pins that are never let float (:mod:`daemon.door.relay_pin`) and
    closes it with itself, so the kernel has the line, held off, once the relay is closed.
    """

    name = "gpio"

    def __init__(
        self,
        pin: int,
        active_high: bool = True,
        pulse_seconds: float = 1.0,
        pin_factory: Any = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.pin = pin
        self.active_high = active_high
        self.pulse_seconds = _check_seconds("pulse_seconds", pulse_seconds)
        self._on_event = on_event
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._pulse_user: str | None = None
        self._pulse_started = 0.0
        self._generation = 0
        self._closed = False
        try:
            from gpiozero import OutputDevice  # lazily: a device-only dependency
        except ImportError as exc:
            raise ActionError(
                "the gpio action needs gpiozero (pip install 'twinlock[device]'); "
                "use the 'log' action on machines without GPIO"
            ) from exc
        #: the factory this relay made for itself (lgpio's, holding the pin off when let go; see
        #: relay_pin.py), closed with the relay; None when given one or gpiozero chooses
        self._own_factory: Any = None
        try:
            if pin_factory is None:
                pin_factory = self._own_factory = relay_pin_factory()
            self._device = OutputDevice(
                pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
            )
        except Exception as exc:  # gpiozero raises many unrelated types (BadPinFactory, ...)
            if self._own_factory is not None:
                self._own_factory.close()
            raise ActionError(
                f"cannot drive GPIO pin {pin} for the relay: {type(exc).__name__}: {exc}. "
                "Off a Raspberry Pi set GPIOZERO_PIN_FACTORY=mock for tests, or use the 'log' "
                "action"
            ) from exc
        logger.info("relay on GPIO%s (active %s), pulse %.2f s", pin,
                    "high" if active_high else "low", self.pulse_seconds)

    @property
    def busy(self) -> bool:
        """A pulse is running."""
        with self._lock:
            return self._pulse_user is not None

    def unlock(self, user: str) -> None:
        """Switch the relay on and schedule it off; ignored (and logged) during a pulse.

        Raises ActionError only if the pin cannot be written (a hardware fault to audit).
        """
        with self._lock:
            if self._closed:
                logger.error("unlock for %s ignored: the relay is closed", user)
                return
            if self._pulse_user is not None:
                logger.info("unlock for %s ignored: a pulse for %s is running", user,
                            self._pulse_user)
                return
            try:
                self._device.on()
            except Exception as exc:
                self._off_quietly()
                raise ActionError(f"cannot switch the relay on GPIO{self.pin} on: {exc}") from exc
            self._generation += 1
            self._pulse_user = user
            self._pulse_started = time.monotonic()
            timer = threading.Timer(self.pulse_seconds, self._end_pulse, args=(self._generation,))
            timer.daemon = True
            timer.name = f"twinlock-relay-{self.pin}"
            self._timer = timer
            timer.start()
        logger.info("relay pulse for %s (%.2f s)", user, self.pulse_seconds)
        _emit(self._on_event, "pulse_start", user)

    def _end_pulse(self, generation: int) -> None:
        """Timer thread: the pulse is over, unless safe() already ended it."""
        with self._lock:
            if generation != self._generation or self._pulse_user is None:
                return
            try:
                detail = self._finish_pulse("timer")
            except Exception:
                # nobody to raise to on this thread; the service's safe()/close() will retry
                logger.critical("cannot switch the relay on GPIO%s off after the pulse", self.pin,
                                exc_info=True)
                return
        if detail is not None:
            _emit(self._on_event, "pulse_end", detail)

    def _finish_pulse(self, why: str) -> str | None:
        """Relay off and pulse state cleared; caller holds the lock. Returns the event detail."""
        user = self._pulse_user
        self._pulse_user = None
        self._generation += 1  # a timer that already fired but waits for the lock stands down
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._device.off()
        if user is None:
            return None
        held = time.monotonic() - self._pulse_started
        logger.info("relay off for %s after %.3f s (%s)", user, held, why)
        return f"{user} after {held:.3f} s ({why})"

    def _off_quietly(self) -> None:
        try:
            self._device.off()
        except Exception:
            logger.exception("cannot switch the relay on GPIO%s off", self.pin)

    def safe(self) -> None:
        """Relay off now, pulse timer cancelled; ActionError if the pin cannot be written."""
        with self._lock:
            if self._closed:
                return
            try:
                detail = self._finish_pulse("safe")
            except Exception as exc:
                raise ActionError(f"cannot switch the relay on GPIO{self.pin} off: {exc}") from exc
        if detail is not None:
            _emit(self._on_event, "pulse_end", detail)

    def close(self) -> None:
        """Relay off, then release the pin (idempotent)."""
        try:
            self.safe()
        finally:
            with self._lock:
                if not self._closed:
                    self._closed = True
                    try:
                        self._device.close()
                    finally:
                        if self._own_factory is not None:
                            self._own_factory.close()  # the kernel now has the line

    def __repr__(self) -> str:
        return f"GpioAction(pin={self.pin}, active_high={self.active_high}, " \
            f"pulse_seconds={self.pulse_seconds})"


class CommandAction:
    """Runs a hook program per unlock, one at a time, with ``TWINLOCK_USER`` in its environment.

    The hook starts in its own session so that a timeout (or :meth:`safe`) kills the whole
    process group: ``subprocess.run``'s kill reaches only the direct child and would leave a
    shell script's children running. Failures are logged and reported via ``on_event``; nothing
    is raised into the caller.
    """

    name = "command"

    def __init__(
        self,
        argv: Sequence[str],
        timeout_s: float = 10.0,
        on_event: EventCallback | None = None,
    ) -> None:
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise UsageError(f"the command hook must be a non-empty list of strings, not {argv!r}")
        self.argv = list(argv)
        self.timeout_s = _check_seconds("timeout_s", timeout_s)
        self._on_event = on_event
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._running = False
        self._closed = False

    @property
    def busy(self) -> bool:
        """A hook is running."""
        with self._lock:
            return self._running

    def unlock(self, user: str) -> None:
        """Start the hook in the background; ignored (and logged) while one runs."""
        with self._lock:
            if self._closed:
                logger.error("unlock for %s ignored: the command action is closed", user)
                return
            if self._running:
                logger.info("unlock for %s ignored: the hook is still running", user)
                return
            self._running = True
            thread = threading.Thread(target=self._run, args=(user,), daemon=True,
                                      name="twinlock-hook")
            self._thread = thread
            thread.start()

    def _run(self, user: str) -> None:
        """Worker thread: run the hook, report, never raise."""
        started = time.monotonic()
        try:
            kind, detail = self._run_hook(user, started)
        except Exception as exc:  # a bug here must not kill the door silently
            logger.exception("command hook for %s failed unexpectedly", user)
            kind, detail = "hook_failed", f"{user}: {type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._running = False
                self._proc = None
        _emit(self._on_event, kind, detail)

    def _run_hook(self, user: str, started: float) -> tuple[str, str]:
        env = os.environ | {"TWINLOCK_USER": user, "TWINLOCK_EVENT": "unlock"}
        try:
            proc = subprocess.Popen(
                self.argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            logger.error("command hook %s could not start: %s", self.argv[0], exc)
            return "hook_failed", f"{user}: could not start {self.argv[0]}: {exc.strerror or exc}"
        with self._lock:
            self._proc = proc
            stopped = self._closed
        if stopped:  # close() ran between Popen and here
            kill_group(proc)
        try:
            output, _ = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            output, _ = _drain(proc)
            logger.error("command hook for %s timed out after %.1f s; killed. Output: %s",
                         user, self.timeout_s, _tail(output))
            return "hook_failed", f"{user}: timed out after {self.timeout_s:g} s; killed"
        elapsed = time.monotonic() - started
        if proc.returncode == 0:
            logger.info("command hook for %s done in %.2f s", user, elapsed)
            logger.debug("hook output: %s", _tail(output))
            return "hook_ok", f"{user}: exit 0 in {elapsed:.2f} s"
        if proc.returncode < 0:  # safe()/close() killed it
            logger.warning("command hook for %s stopped by signal %s", user, -proc.returncode)
            return "hook_failed", f"{user}: stopped by signal {-proc.returncode} (safe)"
        logger.error("command hook for %s exited with %s. Output: %s", user, proc.returncode,
                     _tail(output))
        return "hook_failed", f"{user}: exit {proc.returncode} after {elapsed:.2f} s"

    def safe(self) -> None:
        """Kill a running hook: from now on nothing more happens at the door.

        A hook that has already opened something is not undone; there is no relay to switch off.
        """
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            logger.warning("stopping the running command hook (safe)")
            kill_group(proc)

    def close(self) -> None:
        """Refuse further unlocks, kill a running hook and wait briefly for its thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self.safe()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
            if thread.is_alive():
                logger.warning("command hook thread did not finish within 5 s")

    def __repr__(self) -> str:
        return f"CommandAction(argv={self.argv!r}, timeout_s={self.timeout_s})"


def _drain(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes | None]:
    """Collect what a killed hook wrote, without waiting for ever on a stray pipe holder."""
    try:
        return proc.communicate(timeout=2.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return b"", None


def _tail(output: bytes | None) -> str:
    return output_tail(output, HOOK_OUTPUT_TAIL) or "(none)"


class LogAction:
    """No hardware: logs "door would open for <user>" and keeps the calls, for tests and dry runs.

    It reports "pulse_start" and "pulse_end" at once, so a dry run's audit trail has the same
    shape as a real door's.
    """

    name = "log"

    def __init__(self, on_event: EventCallback | None = None) -> None:
        self._on_event = on_event
        self._lock = threading.Lock()
        #: (time.monotonic(), user) for every unlock, oldest first
        self.calls: list[tuple[float, str]] = []
        self.closed = False

    @property
    def busy(self) -> bool:
        """Never busy: nothing runs in the background."""
        return False

    def unlock(self, user: str) -> None:
        """Log and record the call."""
        with self._lock:
            if self.closed:
                logger.error("unlock for %s ignored: the log action is closed", user)
                return
            self.calls.append((time.monotonic(), user))
        logger.info("door would open for %s", user)
        _emit(self._on_event, "pulse_start", f"{user} (log action, no hardware)")
        _emit(self._on_event, "pulse_end", f"{user} (log action, no hardware)")

    def safe(self) -> None:
        """Nothing to switch off."""

    def close(self) -> None:
        """Refuse further unlocks."""
        with self._lock:
            self.closed = True


# --------------------------------------------------------------------------------------------
# which action a config's ``action.type`` names


def _gpio(a: Any, on_event: EventCallback | None) -> Action:
    return GpioAction(a.pin, a.active_high, a.pulse_seconds, on_event=on_event)


def _command(a: Any, on_event: EventCallback | None) -> Action:
    return CommandAction(list(a.argv), a.timeout_s, on_event=on_event)


def _log(a: Any, on_event: EventCallback | None) -> Action:
    return LogAction(on_event=on_event)


#: ``action.type`` -> a builder taking that type's config section and the event callback; a new
#: kind of action is a class above and one line here
ACTIONS: dict[str, Callable[[Any, EventCallback | None], Action]] = {
    "gpio": _gpio, "command": _command, "log": _log,
}


def build_action(cfg: Config, on_event: EventCallback | None = None) -> Action:
    """The action ``cfg.action`` describes, reporting what the hardware did to ``on_event``."""
    return ACTIONS[cfg.action.type](cfg.action, on_event)
