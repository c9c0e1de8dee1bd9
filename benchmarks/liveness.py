"""Liveness benchmark: what the presence check costs per frame and in memory, what it does to the
real clip's unlock, and how many photo attacks it refuses.

Why: liveness (daemon/door/liveness.py) is on by default only because the real clip still opens the
door with it; docs/how-it-works/liveness.md and config.yaml quote its cost and delay from this
script, and the
attack counts say what it stops.

Measures:

- ``cost``: the face mesh (``face_landmark.tflite``, one thread) on every face of the real clip
  ``short_hamilton_clip.mp4``, and the tracker's blink + parallax arithmetic per frame; the RSS
  that loading and running the mesh adds to a process that already runs the door's model;
- ``clip``: the clip through the daemon (replay camera on a simulated clock, every frame at its
  own time) for each liveness mode: unlock frames, which check passed in which frames, and the
  first unlock's delay against mode ``off``;
- ``attacks`` (``--sequences N``, 0 to skip): N attack sequences of each kind (trainer/evaluation/spoof.py:
  still photo, hand-held photo moved by homographies, frozen clip frame, synthetic blink, and the
  slideshows: two photos of the resident in turn, a photo and its mirror image, a photo and a
  nose-warped copy, fast flicker, cross-dissolve) through the daemon per mode; unlocks per kind
  with a 95 % upper bound. The residents are the clip's performer (enrolled from
  ``lin-manuel-miranda.png``) and, when ``--holdout-pairs`` names the model's held-out LFW pairs,
  held-out LFW people enrolled from one photo and attacked with another (the two-photo
  slideshows: with two others, the second the one whose pose differs most from the first; the
  performer has one portrait, so those show LFW residents only).

``--baseline-liveness FILE`` (a ``liveness.py`` of another commit, e.g. ``git show
HEAD~3:daemon/door/liveness.py > /tmp/old.py``) adds the mode ``motion-baseline``: ``motion``
with that file's tracker, fed as before the continuous sweep (only frames that verified), on the
same videos: the before/after of a liveness change in one run.

Usage::

    .venv/bin/python benchmarks/liveness.py [--model DIR] [--sequences 200] [--json OUT]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, from any working directory
from _common import (
    REPO,
    VIDEO_SUBPATH,
    add_json_option,
    add_model_option,
    data_root,
    environment,
    make_parser,
    report_header,
    timing,
    warm_up,
)
from _common import main as run_main

from twinlock.daemon.door import machine
from twinlock.daemon.door.liveness import LivenessSettings, LivenessTracker, nose_parallax
from twinlock.daemon.errors import DataError
from twinlock.daemon.faces import quality as q
from twinlock.daemon.faces.mesh import FaceMesh
from twinlock.daemon.recognition.gallery import Gallery
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.trainer.evaluation.spoof import (
    KINDS,
    PAIRED,
    SLIDESHOWS,
    run_replay,
    write_attack_video,
)
from twinlock.trainer.household.anchors import anchors_from_files

logger = logging.getLogger(__name__)

MODES = ("off", "motion", "blink", "both")
#: which modes each attack kind is played under (off: would it open without liveness at all)
ATTACK_MODES: dict[str, tuple[str, ...]] = {
    "still": ("off", "motion", "blink"), "moved": ("off", "motion", "blink"),
    "frozen": ("off", "motion"), "blinked": ("off", "motion", "blink", "both"),
    **{kind: ("off", "motion") for kind in SLIDESHOWS},
}
BASELINE = "motion-baseline"  # motion with --baseline-liveness's tracker
CLIP_FRAMES = range(82, 211)  # the performer in lin-manuel-miranda.png
#: config.yaml as it was when the script started (a long run must not see a half-edited file)
SHIPPED_CONFIG = (REPO / "config.yaml").read_text()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    add_model_option(parser)
    parser.add_argument("--sequences", type=int, default=200,
                        help="attack sequences per kind (0: cost and clip only)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="attack kinds to run")
    parser.add_argument("--holdout-pairs", type=Path, default=REPO / "out" / "holdout_pairs.txt",
                        help="the model's held-out LFW pairs: its people become residents too")
    parser.add_argument("--lfw-residents", type=int, default=9)
    parser.add_argument("--fps", type=float, default=10.0, help="attack video frame rate")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of one attack")
    parser.add_argument("--work", type=Path, help="folder for videos and audit logs (default: "
                        "a temporary one)")
    parser.add_argument("--plan", help="which modes per kind, e.g. 'still=motion;moved=off+motion' "
                        "(default: ATTACK_MODES for each of --kinds)")
    parser.add_argument("--reuse-videos", action="store_true",
                        help="play attack videos already in --work instead of writing them again "
                        "(same seeds and settings make the same videos)")
    parser.add_argument("--skip", default="", help="parts to skip: cost, clip (comma-separated)")
    parser.add_argument("--baseline-liveness", type=Path,
                        help="another commit's daemon/door/liveness.py: adds the mode "
                        f"{BASELINE} (the clip and every attack kind) with its tracker")
    add_json_option(parser)
    return parser.parse_args(argv)


@contextlib.contextmanager
def _tracker(mode: str, baseline: Path | None) -> Iterator[str]:
    """The daemon's mode for ``mode``; for BASELINE, the door machine uses the tracker of the
    ``baseline`` file and meshes only faces that verified, as before the continuous sweep."""
    if mode != BASELINE:
        yield mode
        return
    if baseline is None:
        raise DataError(f"mode {BASELINE} needs --baseline-liveness")
    spec = importlib.util.spec_from_file_location("twinlock.daemon.door.liveness_baseline",
                                                  baseline)
    if spec is None or spec.loader is None:
        raise DataError(f"cannot load {baseline}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    saved = machine.LivenessTracker, machine.DoorMachine.tracking_face
    machine.LivenessTracker = module.LivenessTracker  # type: ignore[misc]
    machine.DoorMachine.tracking_face = property(lambda self: False)  # type: ignore[method-assign,assignment]
    try:
        yield "motion"
    finally:
        machine.LivenessTracker, machine.DoorMachine.tracking_face = saved  # type: ignore[misc,method-assign]
        sys.modules.pop(spec.name, None)


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _clip_frames(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def measure_cost(model: Path, frames: list[np.ndarray]) -> dict[str, Any]:
    """Mesh and tracker time per matched frame; RSS the mesh adds to a loaded door model."""
    embedder = FaceEmbedder(model)
    detector = embedder.meta.detector.build()
    faces = [(f, max(found, key=lambda x: x.size)) for f in frames[CLIP_FRAMES.start:
                                                                   CLIP_FRAMES.stop]
             if (found := detector.detect(f))]
    before = _rss_kb()
    mesh = FaceMesh()
    mesh.landmarks(*faces[0])
    after = _rss_kb()
    eyes = FaceMesh(eyes=True)  # blink: the iris model on both eyes as well
    eyes.landmarks(*faces[0])
    after_eyes = _rss_kb()
    warm_up([lambda: mesh.landmarks(*faces[0]), lambda: eyes.landmarks(*faces[0])], 5)
    mesh_times, eyes_times, meshes = [], [], []
    mesh_cpu, eyes_cpu = [], []  # CPU seconds: what a shared, busy machine does not inflate
    for image, face in faces:
        t, c = time.perf_counter(), time.thread_time()
        mesh.landmarks(image, face)
        mesh_times.append(time.perf_counter() - t)
        mesh_cpu.append(time.thread_time() - c)
        t, c = time.perf_counter(), time.thread_time()
        meshes.append(eyes.landmarks(image, face))
        eyes_times.append(time.perf_counter() - t)
        eyes_cpu.append(time.thread_time() - c)
    tracker_times: dict[str, list[float]] = {"motion": [], "blink": []}
    for mode, times in tracker_times.items():
        tracker = LivenessTracker(LivenessSettings(mode=mode))  # type: ignore[arg-type]
        for i, m in enumerate(meshes):
            t = time.perf_counter()
            tracker.add(i / 30.0, m, i)
            times.append(time.perf_counter() - t)
    embed_times, embed_cpu = [], []
    crop = embedder.meta.face_pipeline(detector).align(*faces[0]).crop
    warm_up([lambda: embedder.embed(crop)], 3)
    for _ in range(30):
        t, c = time.perf_counter(), time.thread_time()
        embedder.embed(crop)
        embed_times.append(time.perf_counter() - t)
        embed_cpu.append(time.thread_time() - c)
    return {"mesh_motion": timing(mesh_times), "mesh_and_iris_blink": timing(eyes_times),
            "cpu_mesh_motion": timing(mesh_cpu), "cpu_mesh_and_iris_blink": timing(eyes_cpu),
            "cpu_tower_embed": timing(embed_cpu),
            "tracker_motion": timing(tracker_times["motion"]),
            "tracker_blink": timing(tracker_times["blink"]),
            "tower_embed_for_comparison": timing(embed_times),
            "added_rss_mb_motion": round((after - before) / 1024, 2),
            # blink mode loads one FaceMesh with the iris model: what the second one added
            "added_rss_mb_blink": round((after_eyes - after) / 1024, 2), "faces": len(faces)}


def _config(path: Path, state: Path, model: Path, gallery: Path, source: str, mode: str,
            fps: float, attacks: bool) -> Path:
    """The shipped config.yaml with a replay camera, a log action and the given mode; attack runs
    turn the lockout off and the cooldown to 0 so every sequence is its own attempt. The state
    folder starts empty (the audit log is read back afterwards)."""
    shutil.rmtree(state, ignore_errors=True)
    cfg = yaml.safe_load(SHIPPED_CONFIG)
    cfg.update(state_dir=str(state),
               model={"source": "folder", "dir": str(model), "gallery": str(gallery)},
               camera={"type": "replay", "source": source, "realtime": True, "fps": fps},
               action={"type": "log", "cooldown_seconds": 0.0 if attacks else 10.0},
               audit={"db": str(state / "audit.db")})
    cfg.setdefault("service", {}).update(watchdog=False, status_interval_s=60)
    cfg["liveness"] = dict(cfg.get("liveness") or {}, mode=mode)
    if attacks:
        cfg["lockout"] = dict(cfg.get("lockout") or {}, enabled=False)
    path.write_text(yaml.safe_dump(cfg))
    return path


def measure_clip(model: Path, video: Path, gallery: Path, work: Path,
                 baseline: Path | None = None) -> dict[str, Any]:
    fps = cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS)
    out: dict[str, Any] = {"fps": round(fps, 3), "performer_frames": [CLIP_FRAMES.start,
                                                                       CLIP_FRAMES.stop - 1]}
    modes = MODES + ((BASELINE,) if baseline is not None else ())
    for mode in modes:
        state = work / f"clip-{mode}"
        with _tracker(mode, baseline) as daemon_mode:
            records = run_replay(_config(work / f"clip-{mode}.yaml", state, model, gallery,
                                         str(video), daemon_mode, fps, attacks=False))
        unlocks = [r for r in records if r.event == "unlock"]
        denials = [r for r in records if r.event == "deny"]
        out[mode] = {
            "unlock_frames": [r.frame for r in unlocks],
            "liveness": [(r.details or {}).get("liveness") for r in unlocks],
            "denials": [{"reason": r.reason, "liveness": (r.details or {}).get("liveness")}
                        for r in denials],
        }
    first_off = (out["off"]["unlock_frames"] or [None])[0]
    for mode in modes[1:]:
        first = (out[mode]["unlock_frames"] or [None])[0]
        out[mode]["first_unlock_delay_ms"] = (
            round((first - first_off) / fps * 1000, 1) if first is not None and first_off
            is not None else None)
    return out


def _other_pose(photo: Path, others: list[Path], detector: Any, mesh: FaceMesh) -> Path | None:
    """Of ``others``, the photo whose head pose differs most from ``photo``'s (the largest nose
    parallax between their meshes): what an attacker would pick for a slideshow."""
    def points(path: Path) -> np.ndarray | None:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = detector.detect(image)
        return mesh.landmarks(image, max(faces, key=lambda f: f.size)).points if faces else None

    first = points(photo)
    scored = [(nose_parallax(first, q), other) for other in others
              if first is not None and (q := points(other)) is not None]
    return max(scored, key=lambda x: x[0])[1] if scored else None


def _residents(model: Path, examples: Path, lfw: Path, pairs: Path | None, count: int,
               seed: int = 0) -> tuple[Gallery, list[Path], list[Path | None]]:
    """The gallery (Miranda, plus held-out LFW people from one photo each), the attack photos
    (Miranda's portrait, another photo of each LFW resident) and each one's slideshow partner
    (a third photo of the LFW resident, the most different pose of up to five; None for
    Miranda, who has one portrait, and for people with two photos)."""
    embedder = FaceEmbedder(model)
    meta = embedder.meta
    pipeline = meta.face_pipeline(meta.detector.build())
    gallery = Gallery(meta.model_id)
    portrait = examples / "lin-manuel-miranda.png"
    enrolled = anchors_from_files([portrait], pipeline, embedder, q.QualityThresholds())
    gallery.add("lin", enrolled.anchors, enrolled.sources)
    photos = [portrait]
    partners: list[Path | None] = [None]
    if pairs is not None and pairs.is_file() and count > 0:
        mesh = FaceMesh()
        from twinlock.trainer.evaluation.door_eval import held_out_people

        people = [p for p in held_out_people(pairs, lfw) if len(list((lfw / p).glob("*.jpg"))) >= 2]
        random.Random(seed).shuffle(people)
        for person in people:
            if len(photos) > count:
                break
            files = sorted((lfw / person).glob("*.jpg"))
            result = anchors_from_files(files[:1], pipeline, embedder, q.QualityThresholds())
            if len(result.anchors) != 1:
                continue
            gallery.add(person, result.anchors, result.sources)
            photos.append(files[1])
            partners.append(_other_pose(files[1], files[2:7], pipeline.detector, mesh))
    return gallery, photos, partners


def _upper95(hits: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound on a rate seen ``hits`` times in ``n``."""
    if n == 0:
        return 1.0
    if hits >= n:
        return 1.0

    def at_most(p: float) -> float:  # P(X <= hits) for X ~ Binomial(n, p)
        return sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(hits + 1))

    low, high = hits / n, 1.0
    for _ in range(60):  # at_most falls as p rises: bisect for at_most(p) = 0.05
        mid = (low + high) / 2
        low, high = (mid, high) if at_most(mid) > 0.05 else (low, mid)
    return high


def _best_clip_frames(embedder: FaceEmbedder, detector: Any, gallery: Gallery,
                      frames: list[np.ndarray], count: int) -> list[np.ndarray]:
    """The clip's frames of the performer that score best against his anchor: a frozen feed
    shows the frame most likely to be let in."""
    pipeline = embedder.meta.face_pipeline(detector)
    anchor = gallery.users["lin"].anchors
    scored = []
    for i in CLIP_FRAMES:
        aligned, _ = pipeline.primary(frames[i])
        if aligned is not None:
            probe = embedder.embed(aligned.crop)[0]
            scored.append((float(embedder.scores(probe, anchor).max()), i))
    return [frames[i] for _, i in sorted(scored, reverse=True)[:count]]


def measure_attacks(args: argparse.Namespace, model: Path, work: Path, examples: Path,
                    frames: list[np.ndarray]) -> dict[str, Any]:
    lfw = data_root(args.data) / "lfw" / "lfw-deepfunneled"
    gallery, photo_paths, partner_paths = _residents(model, examples, lfw, args.holdout_pairs,
                                                     args.lfw_residents)
    gallery_path = work / "attack-gallery.json"
    gallery.save(gallery_path)
    def read(path: Path) -> np.ndarray:
        return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)

    photos = [read(p) for p in photo_paths]
    paired = [(read(p), read(q)) for p, q in zip(photo_paths, partner_paths) if q is not None]
    embedder = FaceEmbedder(model)
    detector = embedder.meta.detector.build()
    clip_stills = _best_clip_frames(embedder, detector, gallery, frames, 10)
    mesh = FaceMesh()
    per_seq = round(args.seconds * args.fps)
    gap = round(3.5 * args.fps)  # longer than verification.window_seconds: attempt ends
    out: dict[str, Any] = {"residents": len(gallery.users), "attack_photos":
                           [str(p.name) for p in photo_paths], "slideshow_partners":
                           [q.name if q else None for q in partner_paths],
                           "frames_per_sequence": per_seq,
                           "fps": args.fps}
    extra = (BASELINE,) if args.baseline_liveness is not None else ()
    plan = {kind: ATTACK_MODES[kind] + extra for kind in args.kinds.split(",")}
    if args.plan:
        plan = {k: tuple(m.split("+")) for k, m in (p.split("=") for p in args.plan.split(";"))}
    for kind, modes in plan.items():
        video = work / f"attack-{kind}.mp4"
        started = time.perf_counter()
        if args.reuse_videos and video.is_file():
            step = per_seq + gap
            spans = [(i * step, i * step + per_seq - 1) for i in range(args.sequences)]
        elif kind in PAIRED:
            if not paired:
                raise DataError(f"{kind} needs residents with three photos (--holdout-pairs)")
            spans = write_attack_video(video, kind, [a for a, _ in paired], args.sequences,
                                       per_seq, args.fps, gap, seed=KINDS.index(kind),
                                       detector=detector, mesh=mesh,
                                       partners=[b for _, b in paired])
        else:
            spans = write_attack_video(video, kind, clip_stills if kind == "frozen" else photos,
                                       args.sequences, per_seq, args.fps, gap,
                                       seed=KINDS.index(kind), detector=detector, mesh=mesh)
        result: dict[str, Any] = {"sequences": len(spans),
                                  "video_s": round(time.perf_counter() - started, 1)}
        out[kind] = result
        for mode in modes:
            started = time.perf_counter()
            with _tracker(mode, args.baseline_liveness) as daemon_mode:
                records = run_replay(_config(work / f"{kind}-{mode}.yaml",
                                             work / f"{kind}-{mode}", model, gallery_path,
                                             str(video), daemon_mode, args.fps, True))
            opened = {i for i, (a, b) in enumerate(spans) for r in records
                      if r.event == "unlock" and r.frame is not None and a <= r.frame <= b}
            liveness_denied = sum(1 for r in records if r.event == "deny"
                                  and r.reason.startswith("liveness"))
            result[mode] = {"unlocked": len(opened), "upper95": round(_upper95(
                len(opened), len(spans)), 4), "liveness_denials": liveness_denied,
                "run_s": round(time.perf_counter() - started, 1),
                "best_parallax_refused": max(
                    (((r.details or {}).get("liveness") or {}).get("best_parallax", 0.0)
                     for r in records if r.event == "deny"), default=None)}
            logger.warning("%s / %s: %d of %d opened", kind, mode, len(opened), len(spans))
            if args.json:  # a long run keeps what it has measured so far
                args.json.with_suffix(".partial.json").write_text(json.dumps(out, indent=2))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = data_root(args.data)
    examples = data / VIDEO_SUBPATH[0]
    video = data.joinpath(*VIDEO_SUBPATH)
    frames = _clip_frames(video)
    report = report_header("liveness", data) | {"model": str(args.model)}
    report["environment"] = environment(packages={"ai_edge_litert": "ai-edge-litert"})
    skip = set(args.skip.split(",")) - {""}
    if "cost" not in skip:
        report["cost"] = measure_cost(args.model, frames)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        lin, _, _ = _residents(args.model, examples, data, None, 0)
        lin.save(work / "clip-gallery.json")
        if "clip" not in skip:
            report["clip"] = measure_clip(args.model, video, work / "clip-gallery.json", work,
                                          args.baseline_liveness)
        if args.sequences > 0:
            report["attacks"] = measure_attacks(args, args.model, work, examples, frames)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
