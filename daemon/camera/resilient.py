"""The daemon's camera: faults become close, back off, reopen, so a camera costs frames, never
the service.

The daemon never talks to a driver directly: it reads through ``ResilientCamera``, which turns
faults (an unplugged USB camera, a stalled sensor, broken buffers) into close / back off /
reopen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Self

from ..errors import CameraError, UsageError
from .base import describe_error
from .frame import Camera, Frame, validate_frame

logger = logging.getLogger(__name__)

class ResilientCamera:
    """The daemon's only camera: faults become close, back off, reopen; ``read()`` never raises.

    A door lock runs for months; cameras get unplugged, stall, or hand out broken buffers. Any
    exception from the factory, ``open()`` or ``read()`` closes the camera, reports
    ``("failed", reason)`` to ``on_state``, waits (``backoff_initial_s``, doubling up to
    ``backoff_max_s``, back to the start after a good frame) and reopens (``"reopened"``).
    Corrupt frames are skipped and counted; ``max_corrupt_in_row`` of them in a row count as a
    fault. ``read()`` returns ``None`` only when a finite source ends, or after ``stop()``.
    ``stats`` counts frames, corrupt frames, failures and reopens. Frame ``index`` is renumbered
    from 0 across reopens.

    Call ``stop()`` from any thread (signal handler, watchdog) to make a read that is backing
    off return ``None`` promptly; call ``close()`` from the reading thread.
    """

    def __init__(
        self,
        factory: Callable[[], Camera],
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[str, str], None] | None = None,
        max_corrupt_in_row: int = 50,
    ) -> None:
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise UsageError("camera backoff needs 0 < backoff_initial_s <= backoff_max_s")
        self._factory = factory
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self._sleep = sleep
        self._clock = clock
        self._on_state = on_state
        self.max_corrupt_in_row = max(1, int(max_corrupt_in_row))
        self.stats: dict[str, int] = {"frames": 0, "corrupt": 0, "failures": 0, "reopens": 0}
        self.last_error: str | None = None
        self._camera: Camera | None = None
        self._camera_name: str | None = None
        self._stop = threading.Event()
        self._delay = self.backoff_initial_s
        self._healthy = False
        self._ever_opened = False
        self._ended = False
        self._corrupt_run = 0
        self._down_since: float | None = None

    @property
    def name(self) -> str:
        return self._camera_name or "camera"

    @property
    def healthy(self) -> bool:
        """True while the camera is open and has not failed since it was (re)opened."""
        return self._healthy

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def open(self) -> None:
        """Try to open now (logs and reports a failure; ``read()`` keeps retrying). Never raises
        for camera faults: the daemon must start even with the camera unplugged."""
        if self._camera is None and not self._stop.is_set():
            self._open_camera()

    def read(self) -> Frame | None:
        while not self._stop.is_set():
            if self._ended:
                return None
            camera = self._camera
            if camera is None:
                if not self._open_camera():
                    self._backoff()
                    continue
                camera = self._camera
                assert camera is not None
            try:
                frame = camera.read()
            except Exception as exc:  # noqa: BLE001 - any fault at all: the daemon keeps running
                self._fail(f"read failed: {describe_error(exc)}", exc)
                self._backoff()
                continue
            if frame is None:
                self._ended = True
                self._report("ended", f"{self.name}: source ended")
                return None
            problem = validate_frame(frame)
            if problem is not None:
                self._corrupt(problem)
                continue
            self._corrupt_run = 0
            self._delay = self.backoff_initial_s
            self._down_since = None
            self._healthy = True
            frame = replace(frame, index=self.stats["frames"])
            self.stats["frames"] += 1
            return frame
        return None

    def stop(self) -> None:
        """Make ``read()`` return None as soon as it can (a backoff wait ends at once)."""
        self._stop.set()

    def close(self) -> None:
        self._close_camera()
        self._healthy = False

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _open_camera(self) -> bool:
        camera: Camera | None = None
        try:
            camera = self._factory()
            self._camera_name = getattr(camera, "name", None) or self._camera_name
            camera.open()
        except Exception as exc:  # noqa: BLE001 - as in read(): retry whatever went wrong
            if camera is not None:
                _quiet_close(camera)
            self._fail(f"open failed: {describe_error(exc)}", exc)
            return False
        self._camera = camera
        self._healthy = True
        self._corrupt_run = 0
        if self._ever_opened:
            self.stats["reopens"] += 1
            outage = "" if self._down_since is None else (
                f" after {self._clock() - self._down_since:.1f} s")
            self._report("reopened", f"{self.name} reopened{outage}")
        else:
            self._report("opened", f"{self.name} opened")
        self._ever_opened = True
        return True

    def _corrupt(self, problem: str) -> None:
        self.stats["corrupt"] += 1
        self._corrupt_run += 1
        if self._corrupt_run == 1:
            logger.warning("camera %s: skipping a corrupt frame (%s)", self.name, problem)
        if self._corrupt_run >= self.max_corrupt_in_row:
            self._fail(f"{self._corrupt_run} corrupt frames in a row (last: {problem})")
            self._backoff()

    def _fail(self, reason: str, exc: BaseException | None = None) -> None:
        self._close_camera()
        self._healthy = False
        self._corrupt_run = 0
        self.last_error = reason
        self.stats["failures"] += 1
        if self._down_since is None:
            self._down_since = self._clock()
        # CameraError is a known hardware fault; anything else is a bug worth a traceback
        logger.warning("camera %s failed: %s; retrying in %.1f s", self.name, reason, self._delay,
                       exc_info=exc is not None and not isinstance(exc, CameraError))
        self._report("failed", reason)

    def _backoff(self) -> None:
        delay = self._delay
        self._delay = min(self._delay * 2.0, self.backoff_max_s)
        if self._stop.is_set():
            return
        if self._sleep is time.sleep:
            self._stop.wait(delay)  # stop() ends the wait at once
        else:
            self._sleep(delay)

    def _close_camera(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            _quiet_close(camera)

    def _report(self, state: str, reason: str) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(state, reason)
        except Exception:  # a broken listener must not take the camera down with it
            logger.exception("camera state listener failed on %s", state)


def _quiet_close(camera: Camera) -> None:
    try:
        camera.close()
    except Exception as exc:  # noqa: BLE001 - closing a broken camera may fail in any way
        logger.warning("camera %s: close failed: %s", getattr(camera, "name", "?"),
                       describe_error(exc))
