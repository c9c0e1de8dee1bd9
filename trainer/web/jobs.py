"""The page's background work: a door's Update (bundle, sign, copy, reload), "Update every
door", a door's "Sync now" and the scheduled sync. Each runs in a thread of its own, so no request waits on a door; the Doors page shows
their state and reloads itself (a meta refresh: the page ships no script) while one runs.

Nothing here decides anything: an update is ``rollout.update_door`` (``update_doors`` for every
door) and a sync is ``doors.sync_door``, the functions ``twinlock doors update`` and ``twinlock
doors sync`` call. One update and one sync per door at a time (the schedule skips a door that
"Sync now" is fetching).
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
    """One door's update (or sync): the steps reached so far and how it ended."""

    door: str
    started: str = field(default_factory=_now)
    steps: list[str] = field(default_factory=list)
    state: str = "running"  # running, done, failed
    message: str = ""
    finished: str | None = None
    doing: str = "updating"

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def text(self) -> str:
        """What the page shows in ``update-status-<door>`` (``sync-status-<door>``)."""
        reached = " > ".join(self.steps) or "starting"
        if self.state == "running":
            return f"{self.doing}: {reached} ..."
        if not self.steps:
            return f"{self.state}: {self.message}"
        if self.state == "failed":
            return f"failed at {self.steps[-1]} ({reached}): {self.message}"
        return f"{self.state} ({reached}): {self.message}"

    def end(self, state: str, message: str) -> None:
        self.message, self.state, self.finished = message, state, _now()


Work = Callable[[Callable[[str], None]], str]


def _outcome(call: Callable[[], str], what: str) -> tuple[str, str]:
    """``("done", what call returned)`` or ``("failed", why)``: a job always ends."""
    try:
        return "done", call()
    except TwinLockError as exc:
        return "failed", str(exc)
    except Exception as exc:  # a bug must still end the job, visibly
        logger.exception("%s", what)
        return "failed", f"{type(exc).__name__}: {exc}"


@dataclass
class BatchJob:
    """"Update every door": the doors it covers (their own jobs show each one's progress) and
    its summary once it ended."""

    doors: list[str]
    started: str = field(default_factory=_now)
    state: str = "running"
    message: str = ""
    finished: str | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


class UpdateJobs:
    """At most one job per door at a time; the last one of each door is kept to be shown.
    ``UpdateJobs()`` holds the doors' updates, ``UpdateJobs("syncing", "being synced")`` their
    syncs (the button's and the schedule's)."""

    def __init__(self, doing: str = "updating", busy: str = "being updated") -> None:
        self.doing, self.busy = doing, busy
        self._lock = threading.Lock()
        self._jobs: dict[str, UpdateJob] = {}
        self.batch: BatchJob | None = None

    def get(self, door: str) -> UpdateJob | None:
        with self._lock:
            return self._jobs.get(door)

    def all(self) -> dict[str, UpdateJob]:
        with self._lock:
            return dict(self._jobs)

    def any_running(self) -> bool:
        return any(job.running for job in self.all().values())

    def claim(self, doors: list[str]) -> dict[str, UpdateJob]:
        """A new running job for each of ``doors``, all or none: UsageError when one of them
        has a job running already."""
        with self._lock:
            for door in doors:
                current = self._jobs.get(door)
                if current is not None and current.running:
                    raise UsageError(f"door {door} is {self.busy} already (started "
                                     f"{current.started}): wait for it to end")
            jobs = {door: UpdateJob(door, doing=self.doing) for door in doors}
            self._jobs.update(jobs)
            return jobs

    def run_here(self, door: str, work: Work,
                 done: Callable[[UpdateJob], None] | None = None) -> UpdateJob:
        """Claim ``door`` and run ``work(progress)`` in this thread (the schedule's syncs)."""
        job = self.claim([door])[door]
        job.end(*_outcome(lambda: work(job.steps.append), f"{self.doing} door {door}"))
        if done is not None:
            done(job)
        return job

    def start(self, door: str, work: Work,
              done: Callable[[UpdateJob], None] | None = None) -> UpdateJob:
        """Run ``work(progress)`` in a thread; its return value is the job's message. UsageError
        when ``door`` has a job running already."""
        job = self.claim([door])[door]

        def run() -> None:
            job.end(*_outcome(lambda: work(job.steps.append), f"{self.doing} door {door}"))
            if done is not None:
                done(job)

        threading.Thread(target=run, name=f"{self.doing}-{door}", daemon=True).start()
        return job

    def start_batch(self, doors: list[str],
                    work: Callable[[dict[str, UpdateJob]], str],
                    done: Callable[[BatchJob], None] | None = None) -> BatchJob:
        """Claim every one of ``doors`` and run ``work(jobs)`` in one thread: it adds each
        door's steps and ends each door's job as that door ends; its return value is the
        batch's summary. A door it left running (the work failed before reaching it) fails
        with the work's error."""
        jobs = self.claim(doors)
        batch = self.batch = BatchJob(list(doors))

        def run() -> None:
            batch.state, batch.message = _outcome(lambda: work(jobs), "update of every door")
            for job in jobs.values():
                if job.running:
                    job.end("failed", batch.message if batch.state == "failed" else "not reached")
            batch.finished = _now()
            if done is not None:
                done(batch)

        threading.Thread(target=run, name=f"{self.doing}-every-door", daemon=True).start()
        return batch


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

    def __init__(self, activity_db: Path, every_s: float, jobs: UpdateJobs | None = None) -> None:
        self.activity_db = activity_db
        self.jobs = jobs or UpdateJobs("syncing", "being synced")  # shared with "Sync now"
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

        self.state.last_start = _now()
        started = time.monotonic()
        try:
            with ActivityStore(self.activity_db) as store:
                names = [entry.name for entry in store.doors()]
            for name in names:
                if self._stop.is_set():
                    break
                try:
                    job = self.jobs.run_here(name, sync_work(self.activity_db, name))
                except UsageError:  # "Sync now" is fetching it this moment
                    self.state.results[name] = "skipped: a sync of this door was running"
                    continue
                self.state.results[name] = (job.message if job.state == "done"
                                            else f"sync failed: {job.message}")
                if job.state != "done":
                    logger.warning("scheduled sync of door %s failed: %s", name, job.message)
        except Exception:  # the schedule must go on; the page shows the doors' last errors
            logger.exception("scheduled sync")
        self.state.last_end = _now()
        logger.info("scheduled sync took %.1f s", time.monotonic() - started)


def sync_work(activity_db: Path, name: str) -> Work:
    """One door's sync as a job: ``doors.sync_door`` (as ``twinlock doors sync NAME``), its
    outcome in words a household reads (``twinlock doors sync`` prints bytes and times)."""
    def work(progress: Callable[[str], None]) -> str:
        from ..household.activity import ActivityStore
        from ..household.doors import sync_door

        with ActivityStore(activity_db) as store:
            report = sync_door(store, name)
        line = f"{report.new} new attempts fetched ({report.seen} read)"
        return f"{line}; {len(report.refused)} refused" if report.refused else line

    return work
