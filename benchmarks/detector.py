"""Face detector benchmark: how often each detector finds exactly one face on LFW, and how fast.

Why: the detector decides which images become training crops and which door frames get scored;
its miss rate and its cost per frame on one thread (the Pi's setting) choose the default.

Measures, for BlazeFace short, BlazeFace full and YuNet (when its model is in the data folder):

- on LFW deep-funneled (all 9,525 images, or a seeded ``--limit`` subset): the share of images
  with exactly one face, none, several;
- time per ``detect()`` call with one thread on the 250x250 LFW images and on 640x480 frames
  (the real video ``short_hamilton_clip.mp4``, 640x360, resized to 640x480);
- time of ``align_face`` alone.

Usage::

    .venv/bin/python benchmarks/detector.py [--data DIR] [--limit N] [--json OUT]

Prints one JSON document. Times are wall-clock (``time.perf_counter``) after a warm-up; on a
shared machine expect noise, so compare medians from runs made close together.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, from any working directory
import _common as common

from twinlock.daemon.faces.align import align_face
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.faces.pipeline import Detector, DetectorSpec
from twinlock.daemon.faces.types import Face

logger = logging.getLogger("benchmarks.detector")

LFW_SUBDIR = ("lfw", "lfw-deepfunneled")
YUNET_SUBPATH = ("face_detection_yunet", "face_detection_yunet_2023mar.onnx")
WARMUP_CALLS = 10


def lfw_images(root: Path, limit: int | None, seed: int) -> list[Path]:
    """Every LFW image in sorted order, or a seeded random subset of ``limit`` (kept sorted)."""
    folder = root.joinpath(*LFW_SUBDIR)
    paths = sorted(folder.glob("*/*.jpg"))
    if not paths:
        raise SystemExit(f"no LFW images under {folder} (use --data or $TWINLOCK_DATA)")
    if limit is not None and limit < len(paths):
        chosen = np.random.default_rng(seed).choice(len(paths), size=limit, replace=False)
        paths = [paths[i] for i in sorted(chosen)]
    return paths


def video_frames(path: Path, size: tuple[int, int], limit: int | None) -> list[np.ndarray]:
    """RGB frames of the real clip, resized to ``size`` (the camera resolution of a door)."""
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        while limit is None or len(frames) < limit:
            ok, bgr = capture.read()
            if not ok:
                break
            resized = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
            frames.append(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return frames


def placed_frames(paths: Sequence[Path], size: tuple[int, int], count: int) -> list[np.ndarray]:
    """Fallback without the video: LFW images pasted at varied places on a grey 640x480 frame."""
    rng = np.random.default_rng(0)
    frames = []
    for path in paths[:count]:
        image = load_image(path)
        frame = np.full((size[1], size[0], 3), 96, np.uint8)
        h, w = image.shape[:2]
        y, x = int(rng.integers(0, size[1] - h + 1)), int(rng.integers(0, size[0] - w + 1))
        frame[y:y + h, x:x + w] = image
        frames.append(frame)
    return frames


def face_counts(counts: Sequence[int]) -> dict[str, Any]:
    """Shares (and raw counts) of inputs with exactly one face, none, several."""
    n = len(counts)
    one = sum(1 for c in counts if c == 1)
    none = sum(1 for c in counts if c == 0)
    several = n - one - none
    return {
        "images": n,
        "one": round(one / n, 4) if n else None,
        "none": round(none / n, 4) if n else None,
        "several": round(several / n, 4) if n else None,
        "counts": {"one": one, "none": none, "several": several},
    }


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def build_detectors(root: Path, threads: int, threshold: float | None) -> dict[str, Detector]:
    """The detectors the pipeline would build from these specs (same code path as the daemon)."""
    extra = {} if threshold is None else {"score_threshold": threshold}
    specs = {
        "blazeface-short": DetectorSpec(type="blazeface", variant="short", **extra),
        "blazeface-full": DetectorSpec(type="blazeface", variant="full", **extra),
    }
    yunet = root.joinpath(*YUNET_SUBPATH)
    if yunet.is_file():
        specs["yunet"] = DetectorSpec(type="yunet", model_path=str(yunet), **extra)
    else:
        logger.warning("YuNet model not found at %s: skipping YuNet", yunet)
    detectors = {name: spec.build(num_threads=threads) for name, spec in specs.items()}
    for name, detector in detectors.items():
        detector.spec = specs[name]  # type: ignore[attr-defined]  # for the report only
    return detectors


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = common.data_root(args.data)
    cv2.setNumThreads(args.threads)  # YuNet runs in OpenCV's pool; resizes too
    started = time.perf_counter()
    paths = lfw_images(root, args.limit, args.seed)
    detectors = build_detectors(root, args.threads, args.score_threshold)

    # (a) LFW: counts and time per detection; detectors interleaved per image so machine noise
    # hits all of them alike
    first = load_image(paths[0])
    common.warm_up([partial(d.detect, first) for d in detectors.values()], WARMUP_CALLS)
    lfw_counts: dict[str, list[int]] = {name: [] for name in detectors}
    lfw_times: dict[str, list[float]] = {name: [] for name in detectors}
    align_inputs: list[tuple[np.ndarray, Face]] = []
    for path in common.progress(paths, "LFW"):
        image = load_image(path)
        for name, detector in detectors.items():
            faces, seconds = timed(lambda d=detector, i=image: d.detect(i))
            lfw_counts[name].append(len(faces))
            lfw_times[name].append(seconds)
            if name == "blazeface-short" and len(faces) == 1 and len(align_inputs) < args.align:
                align_inputs.append((image, faces[0]))

    # (b) 640x480 frames: the real clip, or LFW faces placed on a frame when it is missing
    video = root.joinpath(*common.VIDEO_SUBPATH)
    if video.is_file():
        frames = video_frames(video, common.FRAME_SIZE, args.frames)
        frame_source = f"{video.name}: {len(frames)} frames, 640x360 resized to 640x480"
    else:
        frames = placed_frames(paths, common.FRAME_SIZE, args.frames or 250)
        frame_source = f"{len(frames)} LFW images placed on 640x480 grey frames (no video found)"
    common.warm_up([partial(d.detect, frames[0]) for d in detectors.values()], WARMUP_CALLS)
    frame_counts: dict[str, list[int]] = {name: [] for name in detectors}
    frame_times: dict[str, list[float]] = {name: [] for name in detectors}
    for frame in common.progress(frames, "frames"):
        for name, detector in detectors.items():
            faces, seconds = timed(lambda d=detector, f=frame: d.detect(f))
            frame_counts[name].append(len(faces))
            frame_times[name].append(seconds)

    # align_face alone, on faces BlazeFace short found on LFW
    align_times: list[float] = []
    if align_inputs:
        for image, face in align_inputs[:WARMUP_CALLS]:
            align_face(image, face, args.crop_size)
        for image, face in align_inputs:
            align_times.append(timed(lambda i=image, f=face: align_face(i, f, args.crop_size))[1])

    report: dict[str, Any] = {
        **common.report_header("detector", root),
        "lfw_images": len(paths),
        "lfw_subset": None if args.limit is None else {"limit": args.limit, "seed": args.seed},
        "frames": frame_source,
        "num_threads": args.threads,
        "warmup_calls": WARMUP_CALLS,
        "detectors": {},
        "align_face": {"crop_size": args.crop_size, "zoom": 1.0, **common.timing(align_times)},
        "environment": common.environment(load_average=False),
    }
    for name, detector in detectors.items():
        entry: dict[str, Any] = {
            "spec": detector.spec.describe(),  # type: ignore[attr-defined]
            "lfw": face_counts(lfw_counts[name]),
            "frames_640x480": face_counts(frame_counts[name]),
            "time_lfw_250x250": common.timing(lfw_times[name]),
            "time_frame_640x480": common.timing(frame_times[name]),
        }
        backend = getattr(getattr(detector, "model", None), "backend", None)
        if backend:
            entry["runtime"] = backend
        report["detectors"][name] = entry
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = common.make_parser(__doc__)
    parser.add_argument("--limit", type=int, help="seeded random subset of N LFW images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    common.add_json_option(parser)
    parser.add_argument("--threads", type=int, default=1, help="threads per detector (default 1)")
    parser.add_argument("--frames", type=int, help="use at most N video frames (default: all)")
    parser.add_argument("--align", type=int, default=1000,
                        help="number of faces to time align_face on (default 1000)")
    parser.add_argument("--crop-size", type=int, default=112, help="align_face output size")
    parser.add_argument("--score-threshold", type=float,
                        help="detector score threshold (default: DetectorSpec's default)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
