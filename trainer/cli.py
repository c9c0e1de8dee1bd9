"""``twinlock``: the host-side command line (train, export, evaluate)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from twinlock.daemon.errors import TwinLockError

logger = logging.getLogger("twinlock")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a twin network on face folders",
                       description="Train a Siamese twin network (Koch et al. 2015) on folders of "
                       "faces (<root>/<person>/<image>, or the tutorial's anchor/positive/negative "
                       "layout). Writes a run folder with checkpoints, curves and metrics.")
    p.add_argument("--data", nargs="+", type=Path, help="dataset folder(s)")
    p.add_argument("--out", type=Path, help="run folder to create (default runs/<architecture>-<loss>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run from its last checkpoint")
    p.add_argument("--architecture", choices=("compact", "koch"), default="compact")
    p.add_argument("--loss", choices=("bce", "contrastive", "triplet", "cosface"), default="bce",
                   help="bce: the paper's twin; cosface: identity pre-training (head fitted after)")
    p.add_argument("--input-size", type=int, default=0, help="crop side in pixels (koch 105, compact 64)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=0,
                   help="1 = grey (koch default), 3 = RGB (compact default)")
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=5, help="early stop after N epochs without "
                   "validation AUC gain")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--hard-negatives", type=float, default=0.0,
                   help="share of different-person pairs mined as hard negatives")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--no-flip-average", dest="flip_average", action="store_false",
                   help="do not average embeddings of a crop and its mirror image")
    p.add_argument("--holdout-pairs", type=Path,
                   help="never train on people named in this LFW pairs file")
    p.add_argument("--max-identities", type=int, default=0, help="train on a seeded subset")
    p.add_argument("--yunet", type=Path, metavar="ONNX", help="detect faces with YuNet (model file)")
    p.add_argument("--strategy", choices=("default", "mirrored"), default="default",
                   help="mirrored: tf.distribute over every local GPU")
    p.add_argument("--seed", type=int, default=0)


def _cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .train import TrainConfig, load_run_config, train

    if args.resume:
        cfg = load_run_config(args.resume)
        run_dir = args.resume
    else:
        if not args.data:
            raise _usage("train: --data is required (or --resume RUN_DIR)")
        detector = ({"type": "yunet", "model_path": str(args.yunet.resolve())}
                    if args.yunet else None)
        cfg = TrainConfig(
            data=[str(p.resolve()) for p in args.data], architecture=args.architecture,
            input_size=args.input_size, channels=args.channels, embedding_dim=args.embedding_dim,
            loss=args.loss, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size, learning_rate=args.learning_rate,
            weight_decay=args.weight_decay, patience=args.patience,
            val_fraction=args.val_fraction, hard_negatives=args.hard_negatives,
            augment=args.augment, flip_average=args.flip_average,
            holdout_pairs=str(args.holdout_pairs.resolve()) if args.holdout_pairs else None,
            max_identities=args.max_identities, strategy=args.strategy, seed=args.seed,
            **({"detector": detector} if detector else {}),
        )
        run_dir = args.out or Path("runs") / f"{cfg.architecture}-{cfg.loss}"
        if (run_dir / "state.json").exists():
            raise _usage(f"train: {run_dir} already holds a run; use --resume {run_dir} or "
                         "another --out")
    result = train(cfg, run_dir, argv=argv, resume=bool(args.resume), progress=_tty())
    print(json.dumps(result, indent=2))
    print(f"run folder: {run_dir}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .export import export

    report = export(args.run_dir, args.out, args.quantization, argv=argv, progress=_tty(),
                    max_auc_drop=args.max_auc_drop)
    print(json.dumps(report, indent=2))
    print(f"model folder: {args.out}", file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .evaluate import evaluate, write_json

    plots = args.plots or (args.json.parent if args.json else args.model / "eval")
    result = evaluate(args.model, args.images, args.pairs, plots_dir=plots, seed=args.seed,
                      num_threads=args.threads, progress=_tty())
    text = json.dumps(result, indent=2)
    if args.json:
        write_json(result, args.json)
    print(text)
    return 0


def _usage(message: str) -> TwinLockError:
    from twinlock.daemon.errors import UsageError

    return UsageError(message)


def _tty() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinlock", description="TwinLock host tools: train, export and evaluate the twin "
        "network that verifies faces at the door.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)
    p = sub.add_parser("export", help="export a trained run as an int8 TFLite model folder",
                       description="Convert a run's tower to full-integer int8 TFLite, check "
                       "parity against Keras, calibrate thresholds, write a model folder.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR")
    p.add_argument("--quantization", choices=("int8", "float32"), default="int8")
    p.add_argument("--max-auc-drop", type=float, default=0.01)
    p = sub.add_parser("evaluate", help="measure an exported model on faces it never saw",
                       description="Evaluate an exported model through the daemon's runtime. With "
                       "--pairs: the LFW protocol (10-fold accuracy); without: every same-person "
                       "pair and a seeded sample of different-person pairs in the folder.")
    p.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR")
    p.add_argument("--images", type=Path, required=True, metavar="IMAGES_DIR")
    p.add_argument("--pairs", type=Path, metavar="PAIRS_FILE")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the JSON here")
    p.add_argument("--plots", type=Path, metavar="DIR", help="where to write ROC/DET/histogram PNGs "
                   "(default: beside --json, else MODEL_DIR/eval)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("pairs", help="make an LFW-protocol pairs file of held-out people",
                       description="Pick people (seeded) from an LFW-style folder and write "
                       "matched/mismatched pairs in the pairsDevTrain.txt format. Train with "
                       "--holdout-pairs FILE so the model never sees them, then evaluate --pairs.")
    p.add_argument("--images", type=Path, required=True, metavar="IMAGES_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="PAIRS_FILE")
    p.add_argument("--identities", type=int, default=300, help="held-out people with 2+ images")
    p.add_argument("--pairs", type=int, default=1000, help="matched pairs (and as many mismatched)")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _cmd_pairs(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .pairs import make_pairs_file

    summary = make_pairs_file(args.images, args.out, args.identities, args.pairs, args.seed)
    print(json.dumps(summary | {"file": str(args.out)}, indent=2))
    return 0


COMMANDS = {"train": _cmd_train, "export": _cmd_export, "evaluate": _cmd_evaluate,
            "pairs": _cmd_pairs}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return COMMANDS[args.command](args, argv)
    except TwinLockError as exc:
        print(f"twinlock {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"twinlock {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
