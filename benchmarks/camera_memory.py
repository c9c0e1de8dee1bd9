"""The daemon's peak memory with a 4K camera: the real clip upscaled to 3840x2160, replayed.

Why: the unit caps the service at ``MemoryMax=`` (deploy/twinlockd.service; 300M when a camera
that delivers 4K frames once took the daemon to 401 MB and into an OOM restart loop on a Pi).
Frames are now downscaled at capture to ``camera.max_side`` (daemon/camera/base.py), so the
figure to watch is the peak RSS of ``twinlockd run`` on 4K input, and that the performer still opens.

What it does: upscales ``short_hamilton_clip.mp4`` to 3840x2160 (bicubic, mp4v) into a
temporary folder (never into the repository; ``--clip`` reuses one made before), enrols the
performer as the end-to-end tests do, and runs ``python -m twinlock.daemon.cli run`` on it as a
child process with benchmarks/daemon.py's poller (``VmHWM``, ``RssAnon`` from
``/proc/PID/status`` every 50 ms). ``--max-side N`` sets ``camera.max_side`` (0: leave the
key out, e.g. to measure a tree from before the key existed).

Usage::

    .venv/bin/python benchmarks/camera_memory.py [--clip 4K.mp4] [--max-side N] [--realtime]
                                                 [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, from any working directory
import _common as common

from daemon import child_env, child_report, load_test_helpers, prepare_door, run_child


def unit_memory_max_mb() -> float:
    """The unit's ``MemoryMax=`` (deploy/twinlockd.service, in M), so the check follows the unit."""
    unit = (common.REPO / "deploy" / "twinlockd.service").read_text()
    value = next(line.split("=", 1)[1] for line in unit.splitlines()
                 if line.startswith("MemoryMax="))
    return float(value.removesuffix("M"))


#: the unit's memory cap
MEMORY_MAX_MB = unit_memory_max_mb()
SIZE_4K = (3840, 2160)


def make_4k_clip(clip: Path, out: Path) -> Path:
    """``clip`` upscaled to 3840x2160, frame by frame, as an mp4v file at ``out``."""
    import cv2

    capture = cv2.VideoCapture(str(clip))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"),
                             capture.get(cv2.CAP_PROP_FPS), SIZE_4K)
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write mp4v here")
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, SIZE_4K, interpolation=cv2.INTER_CUBIC))
    capture.release()
    writer.release()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = common.data_root(args.data)
    helpers = load_test_helpers()
    examples = root / "face_recognition_examples"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="twinlock-4k-") as tmp:
        folder = Path(tmp)
        clip = args.clip or make_4k_clip(examples / helpers.CLIP, folder / "clip4k.mp4")
        gallery = folder / "gallery.json"
        helpers.enrol_miranda(args.model, examples, gallery)
        door = prepare_door(helpers, folder, "door_4k", args.model, gallery, clip,
                            args.realtime, 15.0 if args.realtime else 120.0, "gpio", "DEBUG")
        if args.max_side:  # the key is added to the config prepare_door wrote
            import yaml

            cfg = yaml.safe_load(door.config.read_text())
            cfg["camera"]["max_side"] = args.max_side
            door.config.write_text(yaml.safe_dump(cfg))
        child = run_child(door.config, child_env("gpio"), args.timeout)
        result = child_report(child, door.db, helpers.MIRANDA_FRAMES)
    memory = result["memory"]
    return {
        **common.report_header("camera_memory", root),
        "clip": f"short_hamilton_clip.mp4 upscaled to {SIZE_4K[0]}x{SIZE_4K[1]}"
                + (f" ({args.clip})" if args.clip else ""),
        "camera_max_side": args.max_side or "not set (the tree's default)",
        "realtime": args.realtime,
        "peak_rss_mb": memory.get("peak_rss_mb"),
        "max_sampled_rss_anon_mb": memory.get("max_sampled_rss_anon_mb"),
        "memory_max_mb": MEMORY_MAX_MB,
        "under_memory_max": memory.get("peak_rss_mb", 1e9) < MEMORY_MAX_MB,
        "unlock_frames": result["audit"].get("unlock_frames"),
        "run": result,
        "environment": common.environment(),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = common.make_parser(__doc__)
    common.add_model_option(parser)
    parser.add_argument("--clip", type=Path, help="a 4K clip made before (default: make one)")
    parser.add_argument("--max-side", type=int, default=0,
                        help="camera.max_side for the run (default: leave it out)")
    parser.add_argument("--realtime", action="store_true",
                        help="pace the replay at the clip's rate (max_fps 15) instead of unpaced")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds before the child is stopped (default 600)")
    common.add_json_option(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(common.main(parse_args, run))
