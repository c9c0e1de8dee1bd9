"""A learning curve for a long run: held-out 10-fold accuracy against training views seen.

Each call measures the run's latest finished epoch the way the door would see it: a snapshot
of the last checkpoint is finished like a run (``TrainLoop.finish``: L1 head fitted on the
training people, thresholds on the validation people), exported (int8 by default, through
``export``) and evaluated on the held-out pairs (``evaluate``: the daemon's detector, alignment,
LiteRT runtime and numpy head). The training process is never touched, so this can run beside
it, e.g. every 20 minutes:

    python -m twinlock.trainer.evaluation.learning_curve out/student/run \\
        --pairs out/student/holdout_pairs.txt --images ../shared/data/lfw/lfw-deepfunneled \\
        --out docs/models/student

Points accumulate in ``<out>/learning_curve.json`` (one per epoch measured) and are drawn in
``<out>/learning_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CURVE_JSON = "learning_curve.json"
CURVE_PNG = "learning_curve.png"
#: the series of points written before runs could start from a model (they all started random)
FROM_SCRATCH = "from scratch"


def snapshot(run_dir: Path, dest: Path) -> dict[str, Any]:
    """Copy run.json, state.json and the last checkpoint (as the kept one) into ``dest``."""
    from ..training.runs import CHECKPOINT_DIR, RUN_FILE, STATE_FILE, checkpoint_path

    (dest / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    state = json.loads((run_dir / STATE_FILE).read_text())
    shutil.copyfile(run_dir / RUN_FILE, dest / RUN_FILE)
    shutil.copyfile(checkpoint_path(run_dir, "last"), checkpoint_path(dest, "best"))
    # the checkpoint is renamed into place after state.json is written: read state again
    after = json.loads((run_dir / STATE_FILE).read_text())
    if after["epoch"] != state["epoch"]:
        raise RuntimeError("the run saved a new epoch during the copy; try again")
    (dest / STATE_FILE).write_text(json.dumps(state))
    return state


def measure(run_dir: Path, pairs: Path, images: Path, work: Path,
            quantization: str = "int8") -> dict[str, Any]:
    """One point of the curve for the run's latest finished epoch."""
    from ..training.export import export
    from ..training.prepare import prepare_data
    from ..training.runs import load_run_config
    from ..training.student import OnlineDistillLoop
    from .evaluate import evaluate

    cfg = load_run_config(run_dir)
    state = snapshot(run_dir, work)
    data = prepare_data(cfg, progress=False)
    loop = OnlineDistillLoop(cfg, data, work, progress=False, views=False)
    finished = loop.finish(state)
    model_dir = work / "model"
    report = export(work, model_dir, quantization, progress=False, max_auc_drop=1.0)
    result = evaluate(model_dir, images, pairs, progress=False)
    views = state["epoch"] * cfg.steps_per_epoch * cfg.batch_size
    return {
        "series": series_name(cfg.init_model_id), "run": str(run_dir),
        "epoch": state["epoch"], "views": views,
        "train_seconds": float(sum(state["history"]["seconds"])),
        "heldout_accuracy": result["accuracy"], "heldout_accuracy_std": result["accuracy_std"],
        "heldout_auc": result["auc"], "heldout_pairs": result["n_pairs"],
        "val_auc": finished["auc"], "distill_loss": state["history"]["loss"][-1],
        "quantization": quantization, "model_bytes": (model_dir / "tower.tflite").stat().st_size,
        "export_auc_drop": report.get("auc_drop"), "embed_ms_per_face": result["embed_ms_per_face"],
    }


def _series(point: dict[str, Any]) -> str:
    """A point's series (points written before series existed started from scratch)."""
    return str(point.get("series", FROM_SCRATCH))


def series_name(init_model_id: str) -> str:
    """A run's series on the curve: where its student started."""
    return f"from {init_model_id}" if init_model_id else FROM_SCRATCH


def plot(points: list[dict[str, Any]], path: Path, baselines: dict[str, float]) -> None:
    """Held-out accuracy against views seen (one line per starting point and export), with
    reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = sorted({_series(p) for p in points})
    for name in names:
        for quantization, marker in (("int8", "o"), ("mixed", "s")):
            series = sorted((p for p in points if p["quantization"] == quantization
                             and _series(p) == name),
                            key=lambda p: p["views"])
            if not series:
                continue
            ax.errorbar([p["views"] for p in series],
                        [100 * p["heldout_accuracy"] for p in series],
                        yerr=[100 * p["heldout_accuracy_std"] for p in series], marker=marker,
                        ms=4, capsize=3, label=f"student {name}, {quantization}")
    for (name, value), style in zip(baselines.items(), ("--", ":", "-."), strict=False):
        ax.axhline(100 * value, ls=style, color="grey", lw=1)
        ax.annotate(name, (0, 100 * value), fontsize=8,
                    xytext=(2, 2), textcoords="offset points", color="grey")
    ax.set_xlim(left=0)
    ax.set_xlabel("training views seen")
    ax.set_ylabel("held-out 10-fold accuracy (%)")
    ax.set_title("Online distillation from dlib: learning curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the training run folder")
    parser.add_argument("--pairs", type=Path, required=True, help="held-out LFW pairs file")
    parser.add_argument("--images", type=Path, required=True, help="LFW image folder")
    parser.add_argument("--out", type=Path, required=True, help="where the curve is written")
    parser.add_argument("--work", type=Path, help="snapshots (default <run>/../curve)")
    parser.add_argument("--quantization", default="int8", choices=("int8", "mixed"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    curve_file = args.out / CURVE_JSON
    curve: dict[str, Any] = json.loads(curve_file.read_text()) if curve_file.is_file() else {
        "run": str(args.run), "pairs": str(args.pairs), "points": [],
        "baselines": {"models/compact (89.25 %)": 0.8925, "target (95 %)": 0.95}}
    from ..training.runs import STATE_FILE, atomic_write_json, load_run_config

    epoch = json.loads((args.run / STATE_FILE).read_text())["epoch"]
    series = series_name(load_run_config(args.run).init_model_id)
    if any(p["epoch"] == epoch and p["quantization"] == args.quantization
           and _series(p) == series for p in curve["points"]):
        logger.info("epoch %d is already on the curve", epoch)
        return 0
    work = (args.work or args.run.parent / "curve") / f"epoch-{epoch:04d}-{args.quantization}"
    shutil.rmtree(work, ignore_errors=True)  # a measurement that was interrupted
    point = measure(args.run, args.pairs, args.images, work, args.quantization)
    curve["points"].append(point)
    curve["points"].sort(key=lambda p: (_series(p), p["views"], p["quantization"]))
    atomic_write_json(curve_file, curve)
    plot(curve["points"], args.out / CURVE_PNG, curve["baselines"])
    print(json.dumps(point, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
