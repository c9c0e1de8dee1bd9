"""The real daemon on the real clip: peak memory, speed, and which frames opened the door.

Why: a Pi has little memory to spare and the service runs for months, so the figure that
matters is the whole ``twinlockd run`` process's resident memory (target: peak <= 120 MB;
150 MB with the imported dlib-resnet tower),
measured from outside as systemd would see it, not a number computed inside one function.
The same runs show how fast the daemon gets through frames and that the enrolled person, and
only that person, opens the door.

What it does:

1. enrols the clip's performer (``tests/daemon_helpers.enrol_miranda``: one anchor from
   ``lin-manuel-miranda.png``) with the current model, into a temporary folder;
2. runs ``python -m twinlock.daemon.cli run --config CFG`` as a child process on the replayed
   ``short_hamilton_clip.mp4``: pacing off (as fast as the daemon goes, ``max_fps`` at its
   maximum), then paced in real time once per ``--realtime-fps`` value (default 15, the shipped
   config.yaml's ``max_fps``, and 30, the end-to-end tests'). The relay is the
   gpio action on gpiozero's mock pin factory (``GPIOZERO_PIN_FACTORY=mock``), or ``--action
   log``. Every 50 ms the child's ``VmRSS`` and ``VmHWM`` are read from ``/proc/PID/status``;
   ``VmHWM`` is the kernel's own high-water mark, so a peak between two polls still counts.
   Log lines are time-stamped as they arrive, which times the frame loop (model loaded ->
   source ended) without touching the daemon;
3. reads each run's unlock decisions (frame numbers, scores) from its audit database;
4. runs the same ``Daemon`` in this process with ``process()`` and the camera read timed per
   frame, since the daemon does not log every frame: exact per-frame latency and the number
   of frames the ``max_fps`` limiter let through.

Usage::

    .venv/bin/python benchmarks/daemon.py [--data DIR] [--model DIR] [--action gpio|log]
                                          [--realtime-fps 15,30] [--json OUT]

Prints one JSON document. Memory is x86 CPython's here; on the Pi's aarch64 wheels expect
different (usually somewhat smaller) figures, so compare runs on one machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, from any working directory
import _common as common

from twinlock.daemon.storage.audit import AuditLog

logger = logging.getLogger("benchmarks.daemon")

EXAMPLES_SUBDIR = "face_recognition_examples"
RSS_TARGET_MB = 120.0  # the compact tower's budget
#: budgets per tower (issue targets): the imported dlib ResNet is meant for a Pi 4 or 5
RSS_TARGETS_MB = {"dlib-resnet": 150.0}
POLL_SECONDS = 0.05
# RssFile is the mapped pages of shared libraries (OpenCV, FFmpeg, LiteRT, numpy): clean pages
# the kernel can share and drop, and the part of RSS that varies between runs with the page
# cache (file-backed transparent huge pages count 2 MB at a time). RssAnon is the daemon's own.
MEMORY_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
FAST_MAX_FPS = 120.0  # the config's upper bound: the limiter then drops as little as it can

# what the daemon logs (door/service.py, camera/resilient.py); matched loosely so wording
# tweaks degrade to missing numbers, not to a crash
LOADED = re.compile(r"\bloaded model\b")
OPENED = re.compile(r"camera: .* opened")
ENDED = re.compile(r"ended after (\d+) frames")
VERDICT = re.compile(r"DEBUG .*: frame \d+: best ")
VERIFIED = re.compile(r"DEBUG .*: frame \d+: .*, verified (?!None\b)")


def load_test_helpers() -> Any:
    """``tests/daemon_helpers``: the tests' own enrolment and config writer, so the benchmark
    runs the door exactly as the end-to-end tests do."""
    tests = str(common.REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import daemon_helpers

    return daemon_helpers


# --------------------------------------------------------------------------------------------
# the child process


def read_memory(pid: int) -> dict[str, int] | None:
    """VmRSS, VmHWM, RssAnon and RssFile of ``pid`` in kB, or None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in MEMORY_KEYS:
            values[key] = int(rest.split()[0])
    return values if len(values) == len(MEMORY_KEYS) else None


@dataclass
class ChildRun:
    """What one ``twinlockd run`` child did, as seen from outside."""

    returncode: int | None = None
    wall_s: float = 0.0
    timed_out: bool = False
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since spawn, text)
    # (s, VmRSS, VmHWM, RssAnon, RssFile) in kB
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)


def run_child(config: Path, env: dict[str, str], timeout: float) -> ChildRun:
    """Start the daemon, poll its memory every 50 ms and time-stamp its log lines."""
    result = ChildRun()
    cmd = [sys.executable, "-m", "twinlock.daemon.cli", "run", "--config", str(config)]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, bufsize=1)

    def read_lines() -> None:
        assert child.stdout is not None
        for line in child.stdout:  # stderr is line-buffered in Python >= 3.9, even to a pipe
            result.lines.append((time.perf_counter() - start, line.rstrip("\n")))

    def poll_memory() -> None:
        while child.poll() is None:
            memory = read_memory(child.pid)
            if memory is not None:
                result.samples.append((time.perf_counter() - start,
                                       *(memory[k] for k in MEMORY_KEYS)))
            time.sleep(POLL_SECONDS)

    threads = [threading.Thread(target=read_lines, daemon=True),
               threading.Thread(target=poll_memory, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        result.returncode = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        result.timed_out = True
        child.terminate()  # SIGTERM: the daemon's own clean stop, relay off
        try:
            result.returncode = child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            result.returncode = child.wait()
    result.wall_s = time.perf_counter() - start
    for thread in threads:
        thread.join(timeout=5)
    return result


def first_time(lines: Sequence[tuple[float, str]], pattern: re.Pattern[str]) -> float | None:
    return next((t for t, text in lines if pattern.search(text)), None)


def memory_report(run: ChildRun, loaded_at: float | None) -> dict[str, Any]:
    """Peak (VmHWM) and steady-state RSS of the child, in MB."""
    if not run.samples:
        return {"samples": 0}
    peak_hwm = max(s[2] for s in run.samples) / 1024.0
    rss = np.array([s[1] for s in run.samples], dtype=np.float64) / 1024.0
    after = [s[1] / 1024.0 for s in run.samples if loaded_at is not None and s[0] >= loaded_at]
    return {
        "samples": len(run.samples),
        "poll_ms": POLL_SECONDS * 1000,
        "peak_rss_mb": round(peak_hwm, 1),
        "max_sampled_rss_mb": round(float(rss.max()), 1),
        "median_rss_after_model_loaded_mb": round(float(np.median(after)), 1) if after else None,
        "last_sampled_rss_mb": round(float(rss[-1]), 1),
        "max_sampled_rss_anon_mb": round(max(s[3] for s in run.samples) / 1024.0, 1),
        "max_sampled_rss_file_mb": round(max(s[4] for s in run.samples) / 1024.0, 1),
        "target_mb": RSS_TARGET_MB,
        "target_met": peak_hwm <= RSS_TARGET_MB,
    }


def audit_report(db: Path, performer_frames: range, started_wall: float | None = None
                 ) -> dict[str, Any]:
    """Unlock decisions (frame, user, score, seconds after start) and event counts."""
    if not db.exists():
        return {"error": f"no audit database at {db}"}
    with AuditLog(db) as audit:
        records = audit.query()
    start = next((r.ts for r in records if r.event == "start"), started_wall)
    unlocks = [
        {"frame": r.frame, "user": r.user,
         "best_score": None if r.best_score is None else round(r.best_score, 6),
         "seconds_after_start": None if start is None else round(r.ts - start, 3)}
        for r in records if r.event == "unlock"
    ]
    frames = [u["frame"] for u in unlocks if u["frame"] is not None]
    return {
        "unlocks": unlocks,
        "unlock_frames": frames,
        "unlock_frames_all_in_performer_range": all(f in performer_frames for f in frames)
        if frames else None,
        "performer_frames": [performer_frames.start, performer_frames.stop - 1],
        "events": dict(Counter(r.event for r in records)),
    }


def child_report(run: ChildRun, db: Path, performer_frames: range) -> dict[str, Any]:
    lines = run.lines
    loaded = first_time(lines, LOADED)
    opened = first_time(lines, OPENED)
    ended = first_time(lines, ENDED)
    frames_read = next((int(m.group(1)) for _, text in lines if (m := ENDED.search(text))), None)
    report: dict[str, Any] = {
        "returncode": run.returncode,
        "timed_out": run.timed_out,
        "wall_s": round(run.wall_s, 3),
        "startup_s": None if opened is None else round(opened, 3),
        "frames_read": frames_read,
        "frames_with_a_verdict": sum(1 for _, text in lines if VERDICT.search(text)),
        "frames_verified_as_a_user": sum(1 for _, text in lines if VERIFIED.search(text)),
        "log_lines": len(lines),
        "log_levels": dict(Counter(text.split()[1] for _, text in lines
                                   if len(text.split()) > 1 and text.split()[1].isupper())),
    }
    if loaded is not None:
        report["model_loaded_s"] = round(loaded, 3)
    if opened is not None and ended is not None:
        loop = ended - opened
        report["frame_loop_s"] = round(loop, 3)
        if frames_read:
            report["loop_ms_per_frame_read"] = round(loop * 1000.0 / frames_read, 3)
            report["frames_read_per_s"] = round(frames_read / loop, 1) if loop > 0 else None
    report["memory"] = memory_report(run, loaded)
    report["audit"] = audit_report(db, performer_frames)
    if run.returncode != 0 or run.timed_out:
        report["log_tail"] = [text for _, text in lines[-20:]]
    return report


# --------------------------------------------------------------------------------------------
# the same daemon in this process, timed per frame


def in_process(config: Path, db: Path, performer_frames: range) -> dict[str, Any]:
    """Run ``Daemon(config).run()`` here with ``process()`` and camera reads timed."""
    from twinlock.daemon.camera.frame import Frame
    from twinlock.daemon.door.service import Daemon

    class TimedDaemon(Daemon):
        """The real daemon; only adds a stopwatch around each processed frame."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.process_seconds: list[float] = []
            super().__init__(*args, **kwargs)

        def process(self, frame: Frame) -> Any:
            start = time.perf_counter()
            observations = super().process(frame)  # the door's step() needs them back
            self.process_seconds.append(time.perf_counter() - start)
            return observations

    daemon = TimedDaemon(config)
    camera = daemon.camera
    read_seconds: list[float] = []
    plain_read = camera.read

    def timed_read() -> Frame | None:
        start = time.perf_counter()
        frame = plain_read()
        read_seconds.append(time.perf_counter() - start)
        return frame

    camera.read = timed_read  # type: ignore[method-assign]  # instance-level stopwatch only
    started = time.perf_counter()
    daemon.run()
    wall = time.perf_counter() - started
    frames_read = camera.stats["frames"]
    processed = daemon.process_seconds
    return {
        "what": "Daemon(config).run() in this process; process() and camera.read() timed",
        "wall_s": round(wall, 3),
        "frames_read": frames_read,
        "frames_processed": len(processed),
        "frames_skipped_by_max_fps": frames_read - len(processed),
        "process_per_frame": common.timing(processed, extreme="max"),
        "camera_read_per_frame": common.timing(read_seconds[:-1] if read_seconds else [],
                                        extreme="max"),
        "processed_per_s": round(len(processed) / sum(processed), 1) if processed else None,
        "audit": audit_report(db, performer_frames),
    }


# --------------------------------------------------------------------------------------------


@dataclass
class Door:
    """One prepared door: its config and where its audit log goes."""

    name: str
    config: Path
    db: Path
    settings: dict[str, Any]


def prepare_door(helpers: Any, folder: Path, name: str, model: Path, gallery: Path, clip: Path,
                 realtime: bool, max_fps: float, action: str, log_level: str,
                 signed: bool = False) -> Door:
    """A door config; ``signed``: the deployed way, a signed bundle waiting in the drop folder
    that the daemon verifies (Ed25519) and installs at start, instead of a model folder."""
    state = folder / name
    state.mkdir(parents=True)
    if action == "gpio":
        action_cfg: dict[str, Any] = {"type": "gpio", "pin": 17, "pulse_seconds": 0.5,
                                      "cooldown_seconds": 1.0}
    else:
        action_cfg = {"type": "log", "cooldown_seconds": 1.0}
    settings = {
        "camera": {"realtime": realtime},
        "action": action_cfg,
        "service": {"max_fps": max_fps, "status_interval_s": 5.0, "watchdog": False},
        "logging": {"level": log_level},
    }
    if signed:
        from twinlock.trainer.household.signing import generate_keypair, write_bundle

        spool = state / "incoming"
        spool.mkdir()
        generate_keypair(state / "home.key", state / "home.pub")
        write_bundle(model, gallery, state / "home.key", spool / "door.twinlock")
        settings["model"] = {"source": "bundle", "public_key": str(state / "home.pub"),
                             "incoming": str(spool)}
    config = helpers.write_config(state / "config.yaml", state / "state", model, gallery,
                                  str(clip), **settings)
    return Door(name, config, state / "state" / "audit.db", settings)


def child_env(action: str) -> dict[str, str]:
    """The child's environment: mock pins, and no systemd sockets it might talk to."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    if action == "gpio":
        env["GPIOZERO_PIN_FACTORY"] = "mock"
    return env


def run(args: argparse.Namespace) -> dict[str, Any]:
    global RSS_TARGET_MB  # one budget for every run of this report: the model's
    from twinlock.daemon.recognition.model import read_metadata

    RSS_TARGET_MB = RSS_TARGETS_MB.get(read_metadata(args.model).architecture, RSS_TARGET_MB)
    root = common.data_root(args.data)
    examples = root / EXAMPLES_SUBDIR
    helpers = load_test_helpers()
    clip = examples / helpers.CLIP
    if not clip.is_file():
        raise SystemExit(f"no clip at {clip} (use --data or $TWINLOCK_DATA)")
    performer = helpers.MIRANDA_FRAMES
    started = time.perf_counter()
    report: dict[str, Any] = {
        **common.report_header("daemon", root),
        "clip": str(clip.name),
        "model": str(args.model),
        "action": f"{args.action}" + (" (gpiozero MockFactory)" if args.action == "gpio" else ""),
        "runs": {},
    }
    env = child_env(args.action)
    with tempfile.TemporaryDirectory(prefix="twinlock-bench-") as tmp:
        folder = Path(tmp)
        gallery = folder / "gallery.json"
        try:
            helpers.enrol_miranda(args.model, examples, gallery)
        except AssertionError as exc:  # the helper asserts exactly one usable anchor
            raise SystemExit(f"could not enrol the performer with {args.model}: {exc}") from None
        doors = [prepare_door(helpers, folder, "fast", args.model, gallery, clip, False,
                              FAST_MAX_FPS, args.action, args.log_level)]
        # The same frames as JPEG files: camera-like input without a video decoder. A Pi's
        # picamera2 hands over raw frames, so FFmpeg's H.264 decoder (about 20 MB of RSS) is a
        # cost of replaying the mp4, not of a door.
        doors.append(prepare_door(helpers, folder, "fast_signed_bundle", args.model, gallery,
                                  clip, False, FAST_MAX_FPS, args.action, args.log_level,
                                  signed=True))
        frames = extract_frames(clip, folder / "frames")
        doors.append(prepare_door(helpers, folder, "fast_jpeg_frames", args.model, gallery,
                                  frames, False, FAST_MAX_FPS, args.action, args.log_level))
        for fps in args.realtime_fps:
            doors.append(prepare_door(helpers, folder, f"realtime_max_fps_{fps:g}", args.model,
                                      gallery, clip, True, fps, args.action, args.log_level))
        for door in doors:
            child = run_child(door.config, env, args.timeout)
            report["runs"][f"subprocess_{door.name}"] = {
                "settings": door.settings, **child_report(child, door.db, performer)}
        report["runs"]["subprocess_fast"]["note"] = (
            "unpaced replay: the daemon processes every frame as fast as it can")
        if not args.skip_in_process:
            if args.action == "gpio":
                os.environ["GPIOZERO_PIN_FACTORY"] = "mock"
            door = prepare_door(helpers, folder, "in_process", args.model, gallery, clip, False,
                                FAST_MAX_FPS, args.action, "WARNING")
            report["runs"]["in_process_fast"] = {
                "settings": door.settings, **in_process(door.config, door.db, performer)}
    peaks = [r["memory"]["peak_rss_mb"] for r in report["runs"].values()
             if "memory" in r and "peak_rss_mb" in r["memory"]]
    report["rss_target"] = {
        "goal": f"twinlockd run peak RSS <= {RSS_TARGET_MB:g} MB",
        "peak_rss_mb": max(peaks) if peaks else None,
        "met": (max(peaks) <= RSS_TARGET_MB) if peaks else None,
        "measured_as": "max VmHWM of the child process over the subprocess runs",
    }
    camera_like = report["runs"]["subprocess_fast_jpeg_frames"]["memory"].get("peak_rss_mb")
    report["rss_target_camera_like"] = {
        "goal": f"twinlockd run peak RSS <= {RSS_TARGET_MB:g} MB on frames without a video decoder",
        "peak_rss_mb": camera_like,
        "met": camera_like is not None and camera_like <= RSS_TARGET_MB,
        "measured_as": "VmHWM of the child replaying the clip's frames as JPEG files",
    }
    report["environment"] = common.environment()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def extract_frames(clip: Path, folder: Path) -> Path:
    """Write every frame of ``clip`` as a JPEG (quality 95) into ``folder``."""
    import cv2

    folder.mkdir()
    capture = cv2.VideoCapture(str(clip))
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"frame{index:04d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        index += 1
    capture.release()
    return folder


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = common.make_parser(__doc__)
    common.add_model_option(parser)
    parser.add_argument("--action", choices=("gpio", "log"), default="gpio",
                        help="relay action: gpio on gpiozero's mock pins (default) or log")
    parser.add_argument("--realtime-fps", type=fps_list, default=(15.0, 30.0),
                        help="service.max_fps of each real-time run, comma-separated; empty: "
                             f"none (default 15,30); the fast runs use {FAST_MAX_FPS:g}")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO"), default="DEBUG",
                        help="the children's log level (DEBUG counts frames with a verdict)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds before a child is stopped with SIGTERM (default 300)")
    parser.add_argument("--skip-in-process", action="store_true",
                        help="no in-process run with per-frame timing")
    common.add_json_option(parser)
    return parser.parse_args(argv)


def fps_list(text: str) -> tuple[float, ...]:
    """``15,30`` -> (15.0, 30.0); each within the config's bounds (0, 120]."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers such as 15,30, got {text!r}") from None
    if any(not 0 < v <= 120 for v in values):
        raise argparse.ArgumentTypeError(f"each max_fps must be in (0, 120], got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
