"""The page's background work: a door's Update (bundle, sign, copy, reload) and the scheduled
sync. Each runs in a thread of its own, so no request waits on a door; the Doors page shows
their state and reloads itself (a meta refresh: the page ships no script) while one runs.

Nothing here decides anything: an update is ``rollout.update_door`` and a sync is
``doors.sync_door``, the functions ``twinlock doors update`` and ``twinlock doors sync`` call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from twinlock.daemon.errors import TwinLockError, UsageError

logger = logging.getLogger(__name__)

#: the steps of an update as the page lists them
UPDATE_STEPS = ("build bundle", "sign", "copy", "reload")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class UpdateJob:
    """One door's update: the steps reached so far and how it ended."""

    door: str
    started: str = field(default_factory=_now)
    steps: list[str] = field(default_factory=list)
    state: str = "running"  # running, done, failed
    message: str = ""
    finished: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def text(self) -> str:
        """What the page shows in ``update-status-<door>``."""
        reached = " > ".join(self.steps) or "starting"
        if self.state == "running":
            return f"updating: {reached} ..."
        if self.state == "failed" and self.steps:
            return f"failed at {self.steps[-1]} ({reached}): {self.message}"
        return f"{self.state} ({reached}): {self.message}"


class UpdateJobs:
    """At most one update per door at a time; the last one of each door is kept to be shown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, UpdateJob] = {}

    def get(self, door: str) -> UpdateJob | None:
        with self._lock:
            return self._jobs.get(door)

    def all(self) -> dict[str, UpdateJob]:
        with self._lock:
            return dict(self._jobs)

    def any_running(self) -> bool:
        return any(job.running for job in self.all().values())

    def start(self, door: str, work: Callable[[Callable[[str], None]], str],
              done: Callable[[UpdateJob], None] | None = None) -> UpdateJob:
        """Run ``work(progress)`` in a thread; its return value is the job's message. UsageError
        when ``door`` is being updated already."""
        with self._lock:
            current = self._jobs.get(door)
            if current is not None and current.running:
                raise UsageError(f"door {door} is being updated already (started "
                                 f"{current.started}): wait for it to end")
            job = self._jobs[door] = UpdateJob(door)

        def progress(step: str) -> None:
            job.steps.append(step)

        def run() -> None:
            try:
                job.message = work(progress)
                job.state = "done"
            except TwinLockError as exc:
                job.message, job.state = str(exc), "failed"
            except Exception as exc:  # a bug must still end the job, visibly
                logger.exception("update of door %s", door)
                job.message, job.state = f"{type(exc).__name__}: {exc}", "failed"
            job.finished = _now()
            if done is not None:
                done(job)

        threading.Thread(target=run, name=f"update-{door}", daemon=True).start()
        return job


@dataclass
class SyncState:
    """The scheduled sync's last round, for the Doors page."""

    every_s: float
    last_start: str | None = None
    last_end: str | None = None
    results: dict[str, str] = field(default_factory=dict)  # door -> summary or error


class SyncSchedule:
    """``twinlock web --sync-every MINUTES``: every door synced in turn, one sync at a time, in
    a thread of its own; each door's outcome is kept in the activity store (``note_sync``) and
    here, and shown on the Doors page."""

    def __init__(self, activity_db: Path, every_s: float) -> None:
        self.activity_db = activity_db
        self.state = SyncState(every_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sync-schedule", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.state.every_s)

    def run_once(self) -> None:
        from ..household.activity import ActivityStore
        from ..household.doors import sync_door

        self.state.last_start = _now()
        started = time.monotonic()
        try:
            with ActivityStore(self.activity_db) as store:
                for entry in store.doors():
                    if self._stop.is_set():
                        break
                    try:
                        report = sync_door(store, entry.name)
                        self.state.results[entry.name] = report.summary()
                    except TwinLockError as exc:
                        self.state.results[entry.name] = f"sync failed: {exc}"
                        logger.warning("scheduled sync of door %s failed: %s", entry.name, exc)
        except Exception:  # the schedule must go on; the page shows the doors' last errors
            logger.exception("scheduled sync")
        self.state.last_end = _now()
        logger.info("scheduled sync took %.1f s", time.monotonic() - started)
