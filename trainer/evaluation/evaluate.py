"""``twinlock evaluate``: an exported model measured through the daemon's own code path.

Faces are detected and aligned by ``twinlock.daemon.faces`` with the detector recorded in the
model, embedded by the int8 tower in LiteRT (``FaceEmbedder``) and scored by the numpy head, so
the figures are the device's figures, not the Keras model's.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from twinlock.daemon.errors import DataError
from twinlock.daemon.recognition.model import FaceEmbedder

from ..data.crops import NO_FACE, UNREADABLE, CropSpec, make_crops
from ..data.datasets import all_same_pairs, load_dataset, sample_different_pairs
from ..data.pairs import read_pairs_file
from ..stats import metrics

logger = logging.getLogger(__name__)

FARS = (1e-2, 1e-3, 1e-4)


def _embed_all(embedder: FaceEmbedder, crops: np.ndarray, progress: bool) -> tuple[np.ndarray, float]:
    chunks, started = [], time.perf_counter()
    for start in tqdm(range(0, len(crops), 64), desc="embed", unit="batch", disable=not progress,
                      mininterval=1.0):
        chunks.append(embedder.embed(crops[start:start + 64]))
    per_face_ms = (time.perf_counter() - started) * 1000.0 / max(len(crops), 1)
    return np.concatenate(chunks), per_face_ms


def evaluate(
    model_dir: Path,
    images_dir: Path,
    pairs_file: Path | None = None,
    plots_dir: Path | None = None,
    n_different: int = 100_000,
    seed: int = 0,
    num_threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate; returns the JSON-ready result and writes plots into ``plots_dir`` if given."""
    embedder = FaceEmbedder(model_dir, num_threads=num_threads)
    meta = embedder.meta
    if pairs_file is not None:
        specs = read_pairs_file(pairs_file, images_dir)
        paths = sorted({s.a for s in specs} | {s.b for s in specs})
        where = {p: i for i, p in enumerate(paths)}
        pair_a = np.array([where[s.a] for s in specs])
        pair_b = np.array([where[s.b] for s in specs])
        y = np.array([s.same for s in specs], dtype=np.float32)
        folds = np.array([s.fold for s in specs])
        names = [p.parent.name for p in paths]
        n_listed_skipped = 0
        protocol = f"LFW pairs protocol: {pairs_file.name}, 10-fold accuracy"
    else:
        dataset = load_dataset(images_dir)
        paths = dataset.paths
        names = [dataset.identities[label] for label in dataset.labels]
        n_listed_skipped = len(dataset.skipped)
        protocol = "all same-person pairs + seeded sample of different-person pairs, 10-fold"
    spec = CropSpec(meta.input_size, meta.alignment_zoom, meta.detector, "center",
                    meta.alignment_template)
    crops = make_crops(paths, spec, progress=progress, num_threads=num_threads)
    ok = crops.ok
    if not ok.any():
        raise DataError(f"no face found in any of the {len(paths)} images under {images_dir}")
    emb_ok, embed_ms = _embed_all(embedder, crops.crops[ok], progress)
    emb = np.zeros((len(paths), emb_ok.shape[1]), dtype=np.float32)
    emb[ok] = emb_ok
    labels = np.unique(np.array(names), return_inverse=True)[1]

    if pairs_file is None:
        ok_idx = np.flatnonzero(ok)
        sub = labels[ok_idx]
        sa, sb = all_same_pairs(sub)
        if len(sa) == 0:
            raise DataError(f"{images_dir}: no person has two usable face images, so there is no "
                            "same-person pair to evaluate")
        rng = np.random.default_rng(seed)
        da, db = sample_different_pairs(sub, n_different, rng)
        pair_a = ok_idx[np.concatenate([sa, da])]
        pair_b = ok_idx[np.concatenate([sb, db])]
        y = np.concatenate([np.ones(len(sa)), np.zeros(len(da))]).astype(np.float32)
        folds = np.random.default_rng([seed, 1]).integers(0, 10, len(y))
    usable = ok[pair_a] & ok[pair_b]
    n_skipped = int((~usable).sum())
    pair_a, pair_b, y, folds = pair_a[usable], pair_b[usable], y[usable], folds[usable]
    scores = embedder.pair_scores(emb[pair_a], emb[pair_b])

    threshold = meta.thresholds.get(meta.default_threshold)
    summary = metrics.summarize(scores, y, threshold=threshold, fars=FARS)
    kfold = metrics.kfold_accuracy(scores, y, folds)
    ok_idx = np.flatnonzero(ok)

    def pair_score(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return embedder.pair_scores(emb[ok_idx[a]], emb[ok_idx[b]])

    one_shot = metrics.n_way_one_shot(labels[ok_idx], pair_score, n_way=20, trials=1000, seed=seed)
    result: dict[str, Any] = {
        "protocol": protocol,
        "model": str(model_dir), "model_id": meta.model_id, "images": str(images_dir),
        "accuracy": kfold["accuracy"], "accuracy_std": kfold["accuracy_std"],
        **{k: v for k, v in summary.items()},
        "threshold_name": meta.default_threshold,
        "one_shot_20way": one_shot,
        "n_images": len(paths), "n_no_face": int((crops.status == NO_FACE).sum()),
        "n_unreadable": int((crops.status == UNREADABLE).sum()),
        "n_files_skipped": n_listed_skipped,
        "n_pairs_skipped_no_face": n_skipped,
        "embed_ms_per_face": embed_ms,
        "runtime_backend": embedder.tower.backend,
    }
    if plots_dir is not None:
        result["plots"] = write_plots(plots_dir, scores, y, meta.thresholds, meta.default_threshold)
    return result


def write_plots(plots_dir: Path, scores: np.ndarray, y: np.ndarray, thresholds: dict[str, float],
                default: str) -> dict[str, str]:
    from ..stats.plots import plot_det, plot_roc, plot_score_histograms

    plots_dir.mkdir(parents=True, exist_ok=True)
    far, tar, _ = metrics.roc_curve(scores, y)
    auc = metrics.roc_auc(scores, y)
    points = {}
    if default in thresholds:
        t = thresholds[default]
        neg, pos = scores[y == 0], scores[y == 1]
        points[f"{default} (t={t:.3f})"] = (float((neg >= t).mean()), float((pos >= t).mean()))
    return {
        "roc": str(plot_roc(plots_dir / "roc.png", {f"model (AUC {auc:.4f})": (far, tar)},
                            points=points)),
        "det": str(plot_det(plots_dir / "det.png", {"model": (far, 1.0 - tar)})),
        "histogram": str(plot_score_histograms(plots_dir / "scores.png", scores, y, thresholds)),
    }


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
