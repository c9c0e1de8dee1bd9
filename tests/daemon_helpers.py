"""Shared set-up for the daemon's end-to-end tests: a gallery of the clip's performer and configs.

The video ``short_hamilton_clip.mp4`` shows Alex Lacamoire (frames 20-81), Lin-Manuel Miranda
(82-210) and the audience (211-274); the gallery enrols Miranda from ``lin-manuel-miranda.png``.
"""

from __future__ import annotations

import collections
import functools
import queue
import subprocess
import threading
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from twinlock.daemon.config.schema import Config
from twinlock.daemon.door.actions import Action, LogAction
from twinlock.daemon.door.assemble import door_settings
from twinlock.daemon.door.carry import carry_out
from twinlock.daemon.door.events import AuditSink, Outbox
from twinlock.daemon.door.machine import Command, DoorMachine
from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.mesh import Mesh
from twinlock.daemon.faces.types import Face
from twinlock.daemon.recognition.analyser import Observation, Scored
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.daemon.recognition.verify import FrameVerdict
from twinlock.daemon.storage.audit import AuditLog
from twinlock.daemon.storage.guard import GuardedAudit
from twinlock.trainer.household.anchors import anchors_from_files

MIRANDA_FRAMES = range(82, 211)
CLIP = "short_hamilton_clip.mp4"


def enrol_miranda(model_dir: Path, examples: Path, gallery_path: Path) -> Gallery:
    embedder = FaceEmbedder(model_dir)
    meta = embedder.meta
    pipeline = meta.face_pipeline(meta.detector.build())
    result = anchors_from_files([examples / "lin-manuel-miranda.png"], pipeline, embedder,
                                q.QualityThresholds())
    assert len(result.anchors) == 1, result.rejected
    gallery = Gallery(meta.model_id)
    gallery.add("lin", result.anchors, result.sources)
    gallery.save(gallery_path)
    return gallery


def write_config(path: Path, state: Path, model_dir: Path, gallery: Path, source: str,
                 **overrides: Any) -> Path:
    """A daemon config for tests: replayed video, GPIO relay on pin 17, state under ``state``."""
    cfg: dict[str, Any] = {
        "state_dir": str(state),
        "model": {"source": "folder", "dir": str(model_dir), "gallery": str(gallery)},
        "camera": {"type": "replay", "source": source, "realtime": True,
                   "reopen_backoff_initial_s": 0.05, "reopen_backoff_max_s": 0.2},
        "action": {"type": "gpio", "pin": 17, "pulse_seconds": 0.5, "cooldown_seconds": 1.0},
        "audit": {"db": str(state / "audit.db")},
        "service": {"max_fps": 30, "status_interval_s": 0.5},
        # FAR 1e-2: with real-time pacing the camera drops the frames a slow machine cannot
        # keep up with (under aarch64 emulation, most of them), and the door must still open.
        # The shipped default, far_1e-03, is tested with every frame seen
        # (test_daemon_e2e.py::test_the_shipped_threshold_opens_only_for_the_enrolled_person).
        "verification": {"threshold_name": "far_1e-02"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict) \
                and values.get("type", cfg[section].get("type")) == cfg[section].get("type"):
            cfg[section] = cfg[section] | values
        else:
            cfg[section] = values
    path.write_text(yaml.safe_dump(cfg))
    return path


def liveness_off() -> dict[str, Any]:
    """``write_config``/``parse_config`` overrides that turn liveness off where the schema has
    it: for tests of other rules (lockout, repeated frames, audit faults) on replayed frames."""
    from twinlock.daemon.config.schema import Config

    return {"liveness": {"mode": "off"}} if "liveness" in Config.model_fields else {}


#: the speed probe's time on the reference machine (2 x86 cores, otherwise idle), seconds
REFERENCE_PROBE_S = 0.1


@functools.cache
def slowdown() -> float:
    """How many times slower than the reference machine this one runs now (aarch64 emulation,
    other work beside the tests): a fixed Python + numpy workload, the median of three runs,
    measured once per session. At least 1, at most 50."""

    def probe() -> float:
        started = time.perf_counter()
        total = 0
        for i in range(300_000):
            total += i * i % 7
        a = np.random.default_rng(0).random((200, 200), dtype=np.float32)
        for _ in range(20):
            a = np.tanh(a @ a / 200)
        return time.perf_counter() - started

    times = sorted(probe() for _ in range(3))
    return min(50.0, max(1.0, times[1] / REFERENCE_PROBE_S))


def scaled(seconds: float) -> float:
    """A deadline of ``seconds`` on the reference machine, stretched to this machine's speed."""
    return seconds * slowdown()


class DaemonProcess:
    """A daemon a test started: its stderr lines through a reader thread, one deadline scaled to
    this machine's speed, and at that deadline a kill and a failure that says what did not
    happen, never a hang or a stray process."""

    def __init__(self, proc: subprocess.Popen[str], seconds: float, what: str) -> None:
        self.proc, self.what = proc, what
        self.budget = scaled(seconds)
        self.deadline = time.monotonic() + self.budget
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.tail: collections.deque[str] = collections.deque(maxlen=15)  # for the failure
        if proc.stderr is not None:
            threading.Thread(target=self._read, daemon=True).start()

    def expect(self, what: str, seconds: float) -> None:
        """A new step to wait for: its own description and (scaled) deadline from now."""
        self.what, self.budget = what, scaled(seconds)
        self.deadline = time.monotonic() + self.budget

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def lines(self) -> Iterator[str]:
        """stderr lines as they come, until the daemon ends; fails at the deadline."""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.fail("deadline passed")
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                return
            yield line

    def wait(self, seconds: float) -> int:
        """The exit code within ``seconds`` (scaled); fails (after a kill) otherwise."""
        try:
            return self.proc.wait(scaled(seconds))
        except subprocess.TimeoutExpired:
            self.fail(f"did not exit within {scaled(seconds):.0f} s")

    def fail(self, why: str) -> typing.NoReturn:
        self.kill()
        pytest.fail(f"{self.what}: {why} ({self.budget:.0f} s allowed: reference "
                    f"{self.budget / slowdown():.0f} s x {slowdown():.1f} for this machine's "
                    f"speed; daemon exit {self.proc.returncode}); its last log lines:\n"
                    + "".join(self.tail))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- the door's decisions without a camera: the state machine and the daemon's own carry_out ----

def scored(verdict: FrameVerdict, content: int, mesh: Mesh | None = None) -> Scored:
    """A scored face whose crop and embedding are unique to ``content`` (distinct contents are
    distinct evidence; equal contents are a repeated picture)."""
    crop = np.frombuffer(content.to_bytes(8, "little"), np.uint8).reshape(2, 2, 2)
    face = Face((0.0, 0.0, 100.0, 100.0), np.zeros((4, 2), np.float32), 0.9)
    measures = q.QualityMeasures(face_px=100.0, brightness=120.0, sharpness=500.0)
    return Scored(face, measures, crop, np.array([content], np.float32), verdict, mesh)


def verdict(user: str | None, score: float | None = None) -> FrameVerdict:
    """A frame verdict: ``user`` verified (None: nobody), with a plausible best score."""
    best = score if score is not None else (0.99 if user else 0.1)
    return FrameVerdict(user, user, best, 1.0 if user else 0.0, best, user)


class Doorway:
    """A DoorMachine whose commands the daemon's ``carry_out`` performs on a real audit log and
    a recording action: the door's rules on a fake clock, as ``twinlockd run`` applies them."""

    def __init__(self, cfg: Config, db: Path, action: Action | None = None) -> None:
        self.audit = AuditLog(db)
        self.records = GuardedAudit(self.audit)
        self.outbox = Outbox([AuditSink(self.records)])
        self.action = action or LogAction()
        self.door = DoorMachine(door_settings(cfg))

    def step(self, now: float, frame: int | None = None,
             *observations: Observation) -> list[Command]:
        commands = self.door.step(now, frame, observations)
        carry_out(commands, self.door, self.outbox, self.action)
        return commands

    def finish(self, why: str = "daemon stopped during the attempt") -> list[Command]:
        commands = self.door.finish(why)
        carry_out(commands, self.door, self.outbox, self.action)
        return commands

    def unlocks(self) -> list[str]:
        assert isinstance(self.action, LogAction)
        return [user for _, user in self.action.calls]
