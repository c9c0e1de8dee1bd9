"""Grey input benchmark: what feeding the RGB tower grey frames (an IR / NoIR camera) costs.

Why: liveness for an ordinary camera cannot stop a video on a screen or a mask; an IR camera
with IR light does better (docs/how-it-works/liveness.md), but its frames are grey while the tower
was
trained on colour. This measures the accuracy lost when the same faces reach the door's whole
path (detection, alignment, tower) as grey (BT.601 luma copied to three channels).

Measures, on the model's held-out LFW pairs (``--pairs``, default ``out/holdout_pairs.txt``;
the first ``--limit`` matched and mismatched pairs), for RGB and grey input: AUC of the pair
score, and the accept rates of genuine and impostor pairs at the model's ``far_1e-03`` pair
threshold.

Usage::

    .venv/bin/python benchmarks/grey_input.py [--model DIR] [--limit 250] [--json OUT]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, from any working directory
import _common as common

from twinlock.daemon.camera.base import to_grey
from twinlock.daemon.faces.images import load_image
from twinlock.daemon.recognition.model import FaceEmbedder
from twinlock.trainer.data.pairs import read_pairs_file


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = common.make_parser(__doc__)
    common.add_model_option(parser)
    parser.add_argument("--pairs", type=Path, default=common.REPO / "out" / "holdout_pairs.txt")
    parser.add_argument("--limit", type=int, default=250, help="pairs of each kind")
    common.add_json_option(parser)
    return parser.parse_args(argv)


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Probability that a genuine pair scores above an impostor pair (ties count half)."""
    g, i = genuine[:, None], impostor[None, :]
    return float((g > i).mean() + 0.5 * (g == i).mean())


def run(args: argparse.Namespace) -> dict[str, Any]:
    lfw = common.data_root(args.data) / "lfw" / "lfw-deepfunneled"
    specs = read_pairs_file(args.pairs, lfw)
    same = [s for s in specs if s.same][: args.limit]
    other = [s for s in specs if not s.same][: args.limit]
    embedder = FaceEmbedder(args.model)
    meta = embedder.meta
    pipeline = meta.face_pipeline(meta.detector.build())
    threshold = meta.thresholds["far_1e-03"]
    cache: dict[tuple[Path, bool], np.ndarray | None] = {}

    def embed(path: Path, as_grey: bool) -> np.ndarray | None:
        if (path, as_grey) not in cache:
            image = load_image(path)
            aligned, _ = pipeline.primary(to_grey(image) if as_grey else image, "center")
            cache[path, as_grey] = None if aligned is None else embedder.embed(aligned.crop)[0]
        return cache[path, as_grey]

    report = common.report_header("grey_input", common.data_root(args.data)) | {
        "model": str(args.model), "pairs": str(args.pairs), "threshold_far_1e-03": threshold}
    report["environment"] = common.environment()
    for as_grey in (False, True):
        scores: dict[bool, list[float]] = {True: [], False: []}
        missed = 0
        for spec in common.progress(same + other, "grey" if as_grey else "rgb"):
            a, b = embed(spec.a, as_grey), embed(spec.b, as_grey)
            if a is None or b is None:
                missed += 1
                continue
            scores[spec.same].append(float(embedder.pair_scores(a[None], b[None])[0]))
        g, i = np.array(scores[True]), np.array(scores[False])
        report["grey" if as_grey else "rgb"] = {
            "genuine_pairs": len(g), "impostor_pairs": len(i), "no_face": missed,
            "auc": round(auc(g, i), 4),
            "genuine_accept": round(float((g >= threshold).mean()), 4),
            "impostor_accept": round(float((i >= threshold).mean()), 4)}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
