"""Which embedding post-processing suits an imported tower's L1 head? Decided on validation people.

For a run folder (``twinlock train``), embeds a seeded subset of the training images and every
validation image with the run's Keras tower, with and without test-time flip averaging, raw and
L2-normalised; fits the L1 + sigmoid head on the training subset and temperature-scales it, as
``twinlock train`` does, then reports validation AUC and TAR at FAR 1e-2 / 1e-3 / 1e-4 for each
of the four variants. Held-out evaluation people are never touched (they are not in the run).

    python benchmarks/head_choice.py out/default/run --train-images 3000
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import numpy as np


def parse_args(argv: Any) -> Any:
    parser = common.make_parser(__doc__)
    parser.add_argument("run", type=Path, help="training run folder")
    parser.add_argument("--train-images", type=int, default=3000,
                        help="training images to fit each head on (seeded subset)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    return parser.parse_args(argv)


def measure(args: Any) -> dict[str, Any]:
    import keras

    from twinlock.daemon.recognition.scoring import postprocess_embeddings
    from twinlock.trainer.stats import metrics
    from twinlock.trainer.training import model as _layers  # noqa: F401  (custom layers)
    from twinlock.trainer.training.embed import head_pair_scores
    from twinlock.trainer.training.head import fit_l1_head, temperature_scale
    from twinlock.trainer.training.prepare import prepare_data, source_groups, validation_pairs
    from twinlock.trainer.training.runs import load_run_config

    cfg = load_run_config(args.run)
    data = prepare_data(cfg, progress=False)
    tower = keras.models.load_model(args.run / "tower.keras", compile=False)
    rng = np.random.default_rng([cfg.seed, 5])
    train = rng.choice(data.train_idx, min(args.train_images, len(data.train_idx)),
                       replace=False)
    val = data.val_idx
    ia, ib, y = validation_pairs(data.labels[val], cfg.val_different_pairs, cfg.seed,
                                 source_groups(data, val))

    def raw(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = data.crops[idx].astype(np.float32)
        return (tower.predict(x, batch_size=64, verbose=0),
                tower.predict(x[:, :, ::-1], batch_size=64, verbose=0))

    (tr, tr_f), (va, va_f) = raw(train), raw(val)
    out: dict[str, Any] = {"run": str(args.run), "train_images": len(train),
                           "val_images": len(val), "val_pairs": len(y), "variants": {}}
    for flip in (False, True):
        for unit in (False, True):
            e_tr = postprocess_embeddings(tr, tr_f if flip else None, unit)
            e_va = postprocess_embeddings(va, va_f if flip else None, unit)
            w, b = fit_l1_head(e_tr, data.labels[train], np.random.default_rng([cfg.seed, 99]))
            logits = np.abs(e_va[ia] - e_va[ib]) @ w + b
            w, b = temperature_scale(w, b, logits, y)
            scores = head_pair_scores(e_va, ia, ib, w, b)
            summary = metrics.summarize(scores, y)
            out["variants"][f"flip={flip},unit={unit}"] = {
                "auc": round(summary["auc"], 5), "eer": round(summary["eer"], 4),
                "tar_at_far": {k: round(v, 4) for k, v in summary["tar_at_far"].items()}}
    return out


def main(argv: Any = None) -> int:
    return common.main(parse_args, lambda a: common.report_header("head_choice") | measure(a), argv)


if __name__ == "__main__":
    sys.exit(main())
