"""``camera.read_timeout_s``: a read that stalls longer is a camera fault, and the camera reopens.

A hung driver call (a V4L2 ``select`` on a sensor that stopped, a USB camera half unplugged)
cannot be interrupted in Python. So each opened camera gets one reader thread that makes the
driver's calls; ``read()`` waits for it at most ``timeout_s`` and then raises ``CameraError``,
which :class:`~.resilient.ResilientCamera` turns into close, back off, reopen. The stuck thread
is abandoned, not killed: it closes its driver itself if the call ever returns, so the driver is
never closed under a read in progress (which some drivers answer with a crash). A driver that
never returns keeps its thread for ever, so at most ``max_stuck`` abandoned readers of one
factory may be alive; until one of them returns, opening another camera is refused (a fault
like any other, retried after the backoff), and threads cannot pile up.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from ..errors import CameraError
from .frame import Camera, Frame

logger = logging.getLogger(__name__)

#: abandoned (stuck) readers one camera factory may leave alive before it refuses to open more
MAX_STUCK_READERS = 2

_READ, _CLOSE = "read", "close"


class _Stuck:
    """The abandoned readers of one factory that are still inside a driver call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.threads: set[threading.Thread] = set()

    def add(self, thread: threading.Thread) -> None:
        with self._lock:
            self.threads.add(thread)

    def discard(self, thread: threading.Thread) -> None:
        with self._lock:
            self.threads.discard(thread)

    def count(self) -> int:
        with self._lock:
            return len(self.threads)


class TimedCamera:
    """A camera whose ``read()`` gives up after ``timeout_s`` (see the module's docstring)."""

    def __init__(self, camera: Camera, timeout_s: float, stuck: _Stuck | None = None,
                 max_stuck: int = MAX_STUCK_READERS) -> None:
        if not timeout_s > 0:
            raise ValueError(f"read timeout must be positive, not {timeout_s!r}")
        self.camera = camera
        self.timeout_s = float(timeout_s)
        self.name: str = getattr(camera, "name", "camera")
        self._stuck = stuck if stuck is not None else _Stuck()
        self._max_stuck = max_stuck
        self._jobs: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[Frame | None, BaseException | None]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._abandoned = False

    def open(self) -> None:
        """Open the driver and start its reader thread (refused while too many are stuck)."""
        stuck = self._stuck.count()
        if stuck >= self._max_stuck:
            raise CameraError(f"camera {self.name}: {stuck} earlier reads are still stuck in the "
                              "driver; not opening it again until one returns")
        self.camera.open()
        self._abandoned = False
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"twinlock-camera-{self.name}")
        self._thread.start()

    def read(self) -> Frame | None:
        """The driver's next frame, or ``CameraError`` if it does not come within the timeout."""
        if self._thread is None or self._abandoned:
            raise CameraError(f"camera {self.name} is not open")
        self._jobs.put(_READ)
        try:
            frame, error = self._results.get(timeout=self.timeout_s)
        except queue.Empty:
            self._abandon()
            raise CameraError(f"camera {self.name}: no frame within {self.timeout_s:g} s "
                              "(read_timeout_s); the stuck read is abandoned") from None
        if error is not None:
            raise error
        return frame

    def close(self) -> None:
        """Close the driver in its reader thread: now if idle, else when its stuck call returns."""
        thread, self._thread = self._thread, None
        if thread is None:  # never opened, or open() failed: no reader, nothing in flight
            self.camera.close()
            return
        self._jobs.put(_CLOSE)
        if not self._abandoned:
            thread.join(self.timeout_s)
            if thread.is_alive():  # close() itself hangs: treat it as a stuck call
                self._abandon(thread)

    def _abandon(self, thread: threading.Thread | None = None) -> None:
        thread = thread or self._thread
        self._abandoned = True
        if thread is not None and thread.is_alive():
            self._stuck.add(thread)
            logger.warning("camera %s: a driver call is stuck; its thread is abandoned (%d stuck)",
                           self.name, self._stuck.count())

    def _serve(self) -> None:
        """The reader thread: every driver call after open() happens here, one at a time."""
        try:
            while True:
                job = self._jobs.get()
                if job == _CLOSE:
                    self.camera.close()
                    return
                try:
                    self._results.put((self.camera.read(), None))
                except Exception as exc:  # noqa: BLE001 - handed to the reading thread
                    self._results.put((None, exc))
        except Exception as exc:  # noqa: BLE001 - a failing close() must not go unnoticed
            logger.warning("camera %s: close failed: %s", self.name, exc)
        finally:
            self._stuck.discard(threading.current_thread())


def with_read_timeout(factory: Callable[[], Camera], timeout_s: float,
                      max_stuck: int = MAX_STUCK_READERS) -> Callable[[], Camera]:
    """A camera factory whose cameras time their reads out; their stuck readers are counted
    together, so at most ``max_stuck`` of them are ever alive."""
    stuck = _Stuck()

    def make() -> Camera:
        return TimedCamera(factory(), timeout_s, stuck, max_stuck)

    return make
