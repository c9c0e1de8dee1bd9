"""systemd's ``sd_notify`` protocol, spoken directly over a datagram socket (no libsystemd).

The unit runs as ``Type=notify-reload`` with a watchdog: the daemon says READY=1 once the camera
and bundle are up, pings WATCHDOG=1 at half the watchdog timeout, and announces reloads and its
shutdown. The protocol is one datagram of newline-separated ``KEY=value`` lines sent to the path
in ``$NOTIFY_SOCKET`` (a leading ``@`` means Linux's abstract namespace), so it needs nothing but
the standard library.

A failed send is logged and swallowed: if systemd goes away the door must keep working, and the
watchdog (not an exception here) is what deals with a daemon that stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

from ..storage.closing import Closing

logger = logging.getLogger(__name__)

#: a send waits at most this long when systemd's queue is full, so the frame loop never stalls
SEND_TIMEOUT_S = 0.5


def _address(value: str) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET``, or None when it is not one we can use."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    logger.warning("NOTIFY_SOCKET=%r is neither an absolute path nor @abstract; not notifying",
                   value)
    return None


class Notifier(Closing):
    """Sends sd_notify messages to systemd; with no socket every method is a no-op (False)."""

    def __init__(self, address: str | None, send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        #: the socket address as ``socket.sendto`` takes it (abstract names start with NUL)
        self.address = address
        self._timeout = send_timeout_s
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET``; a disabled one when it is unset or empty."""
        value = environ.get("NOTIFY_SOCKET", "")
        return cls(_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given (systemd started us with Type=notify*)."""
        return self.address is not None

    # -- the protocol ------------------------------------------------------------------------

    def send(self, text: str) -> bool:
        """Send one raw message; True when the datagram left, False otherwise (never raises)."""
        if self.address is None:
            return False
        data = text.encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(self._timeout)
                    self._sock = sock
                self._sock.sendto(data, self.address)
            except OSError as exc:
                # first failure loud, repeats quiet: a watchdog ping every few seconds into a
                # vanished socket must not fill the journal
                log = logger.debug if self._failing else logger.warning
                log("sd_notify to %r failed (%s); carrying on without systemd", self._shown(), exc)
                self._failing = True
                return False
        if self._failing:
            logger.info("sd_notify to %r works again", self._shown())
            self._failing = False
        return True

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=value`` fields in one datagram, e.g. ``notify(READY=1, STATUS="up")``."""
        if not fields:
            return False
        lines = []
        for key, value in fields.items():
            # a newline inside a value would start a bogus field of its own
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key}={text}")
        return self.send("\n".join(lines))

    def ready(self) -> bool:
        """Start-up is done: systemd considers the unit started from now on."""
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive ping; call at :func:`watchdog_interval`."""
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun (the relay is being made safe)."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """A reload has begun; Type=notify-reload wants the monotonic time with it.

        Send :meth:`ready` again when the reload is done.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    # -- life cycle --------------------------------------------------------------------------

    def _shown(self) -> str:
        address = self.address or ""
        return "@" + address[1:] if address.startswith("\0") else address

    def close(self) -> None:
        """Close the socket (idempotent); a later send opens a new one."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __repr__(self) -> str:
        return f"Notifier({self._shown() or None!r})"


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled advises.

    None when no watchdog is set, when the value is unusable, or when ``$WATCHDOG_PID`` names
    another process (the variables were inherited, not meant for us).
    """
    raw = environ.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                logger.debug("WATCHDOG_PID=%s is not us (%s); no watchdog", pid, os.getpid())
                return None
        except ValueError:
            logger.warning("WATCHDOG_PID=%r is not a number; no watchdog", pid)
            return None
    try:
        usec = int(raw)
    except ValueError:
        logger.warning("WATCHDOG_USEC=%r is not a number; no watchdog", raw)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000
