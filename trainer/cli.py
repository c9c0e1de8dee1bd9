"""``twinlock``: the host-side command line (train, export, evaluate)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twinlock.daemon.console import command_parser, run_command, setup_logging
from twinlock.daemon.errors import TwinLockError

from .training.losses import LOSSES, RECIPES

logger = logging.getLogger("twinlock")
DB_HELP = "enrolment database (default $TWINLOCK_ENROL_DB or ~/.local/share/twinlock/enrolment.db)"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a twin network on face folders",
                       description="Train a Siamese twin network (Koch et al. 2015) on folders of "
                       "faces (<root>/<person>/<image>, or the tutorial's anchor/positive/negative "
                       "layout). Writes a run folder with checkpoints, curves and metrics. "
                       "With --personalize: fine-tune a finished run on enrolled residents.")
    p.add_argument("--data", nargs="+", type=Path, help="dataset folder(s)")
    p.add_argument("--out", type=Path, help="run folder to create (default runs/<architecture>-<loss>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run from its last checkpoint")
    p.add_argument("--architecture", choices=("compact", "koch", "dlib-resnet"), default="compact",
                   help="dlib-resnet: dlib's public-domain ResNet, its weights read from the "
                   "face-recognition-models wheel (150 px dlib chips; --epochs 0 fits the head "
                   "only, more epochs fine-tune and are kept only if validation AUC improves)")
    p.add_argument("--unit-embeddings", choices=("auto", "on", "off"), default="auto",
                   help="L2-normalise embeddings before the head (auto: by the loss)")
    p.add_argument("--loss", choices=LOSSES, default="bce",
                   help="; ".join(f"{r.name}: {r.help}" for r in RECIPES.values()))
    p.add_argument("--input-size", type=int, default=0, help="crop side in pixels (koch 105, compact 64)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=0,
                   help="1 = grey (koch default), 3 = RGB (compact default)")
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--epochs", type=int, help="default 30 (--personalize: 5)")
    p.add_argument("--steps-per-epoch", type=int, help="default 200 (--personalize: 40)")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--learning-rate", type=float, help="default 1e-3 (--personalize: 1e-4)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=5, help="early stop after N epochs without "
                   "validation AUC gain")
    p.add_argument("--teacher", choices=("dlib-resnet",), default="",
                   help="--loss distill: the frozen teacher run online on each augmented view "
                   "(default dlib-resnet, the imported tower)")
    p.add_argument("--unlabelled", nargs="+", type=Path, default=[], metavar="PATH",
                   help="--loss distill: more faces without labels (folders of images at any "
                   "depth, video files), used only as views")
    p.add_argument("--mixup", type=float, default=0.5,
                   help="--loss distill: share of views blended with another face (default 0.5)")
    p.add_argument("--width", type=int,
                   help="compact tower: stem channels, blocks grow to 16x (default 32; int8 "
                   "size grows with its square)")
    p.add_argument("--init-from", type=Path, metavar="MODEL_DIR",
                   help="--loss distill: start the student from this exported compact model "
                   "(e.g. models/compact) instead of random weights; its input size, alignment "
                   "and width become the student's, and the run keeps it (epoch 0) unless "
                   "distillation beats it on validation people")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="cosface: add W * (1 - cos(student, dlib teacher)) to the loss "
                   "(needs the [teacher] extra; embedding dim 128)")
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
    g = p.add_argument_group(
        "personalize", "Fine-tune a finished general run on enrolled residents' stored crops "
        "(anchor/positive pairs, other people as negatives), export it, and report on held-out "
        "photos whether it beats the general model. The general model stays the default.")
    g.add_argument("--personalize", action="store_true",
                   help="fine-tune --from RUN_DIR for the enrolled residents into --out NEW_RUN")
    g.add_argument("--from", dest="from_run", type=Path, metavar="RUN_DIR",
                   help="the general model's run folder (its tower.keras is the starting point)")
    g.add_argument("--db", "--store", dest="db", type=Path, metavar="PATH", help=DB_HELP)
    g.add_argument("--users", nargs="+", metavar="NAME", help="only these residents (default all)")
    g.add_argument("--negatives", nargs="+", type=Path, metavar="DIR",
                   help="other people's faces (default: the general run's --data folders)")
    g.add_argument("--holdout-share", type=float, default=0.3,
                   help="share of each resident's photos held out to test (default 0.3)")
    g.add_argument("--general-share", type=float, default=1 / 3, metavar="SHARE",
                   help="share of fine-tuning pairs from other people only, so the tower keeps "
                   "telling strangers apart (default 1/3)")
    g.add_argument("--general-model", type=Path, metavar="MODEL_DIR",
                   help="the general run's exported model (default: export it into NEW_RUN)")
    g.add_argument("--export", type=Path, metavar="MODEL_DIR",
                   help="where to export the personalized model (default NEW_RUN/model)")


#: what ``twinlock train`` uses when an option is not given (--personalize has its own)
TRAIN_DEFAULTS = {"epochs": 30, "steps_per_epoch": 200, "batch_size": 32, "learning_rate": 1e-3}
PERSONALIZE_ONLY = {"from_run": "--from", "db": "--db", "users": "--users",
                    "negatives": "--negatives", "general_model": "--general-model",
                    "export": "--export"}


def _cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training.config import TrainConfig
    from .training.runs import load_run_config
    from .training.train import train

    if args.personalize:
        return _cmd_personalize(args, argv)
    stray = [flag for name, flag in PERSONALIZE_ONLY.items() if getattr(args, name)]
    if stray:
        raise _usage(f"train: without --personalize, {', '.join(stray)} does not apply")
    for name, default in TRAIN_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.resume:
        from .household.personalize import is_personalized

        if is_personalized(args.resume):
            raise _usage(f"train: {args.resume} is a personalized run and cannot be resumed; "
                         "run train --personalize again with another --out")
        cfg = load_run_config(args.resume)
        run_dir = args.resume
    else:
        if not args.data:
            raise _usage("train: --data is required (or --resume RUN_DIR)")
        extra: dict[str, Any] = ({"detector": {"type": "yunet",
                                               "model_path": str(args.yunet.resolve())}}
                                 if args.yunet else {})
        if args.init_from:
            extra |= _init_settings(args)
        args.width = args.width or 32
        cfg = TrainConfig(
            data=[str(p.resolve()) for p in args.data], architecture=args.architecture,
            input_size=args.input_size, channels=args.channels, embedding_dim=args.embedding_dim,
            loss=args.loss, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size, learning_rate=args.learning_rate,
            weight_decay=args.weight_decay, patience=args.patience,
            val_fraction=args.val_fraction, hard_negatives=args.hard_negatives,
            distill_weight=args.distill_weight,
            unit_embeddings={"auto": None, "on": True, "off": False}[args.unit_embeddings],
            augment=args.augment, flip_average=args.flip_average,
            holdout_pairs=str(args.holdout_pairs.resolve()) if args.holdout_pairs else None,
            max_identities=args.max_identities, strategy=args.strategy, seed=args.seed,
            teacher=args.teacher, unlabelled=[str(p.resolve()) for p in args.unlabelled],
            mixup=args.mixup, width=args.width,
            **extra,
        )
        run_dir = args.out or Path("runs") / f"{cfg.architecture}-{cfg.loss}"
        if (run_dir / "state.json").exists():
            raise _usage(f"train: {run_dir} already holds a run; use --resume {run_dir} or "
                         "another --out")
    result = train(cfg, run_dir, argv=argv, resume=bool(args.resume), progress=_tty())
    print(json.dumps(result, indent=2))
    print(f"run folder: {run_dir}", file=sys.stderr)
    return 0


def _init_settings(args: argparse.Namespace) -> dict[str, Any]:
    """--init-from: the student takes the model's crop and width (given ones must agree)."""
    from .training.warm_start import read_init_model

    init = read_init_model(args.init_from)
    for flag, given, fixed in (("--input-size", args.input_size, init.input_size),
                               ("--width", args.width, init.width),
                               ("--embedding-dim", args.embedding_dim, init.embedding_dim)):
        if given and given != fixed:
            raise _usage(f"train: {flag} {given} does not fit --init-from {args.init_from} "
                         f"({fixed}); leave it out")
    args.input_size, args.width, args.embedding_dim = init.input_size, init.width, \
        init.embedding_dim
    return {"init_from": str(init.model_dir.resolve()), "init_model_id": init.model_id,
            "template": init.template, "zoom": init.zoom}


def _cmd_personalize(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .household.personalize import PersonalizeOptions, personalize

    if args.data or args.resume:
        raise _usage("train --personalize: other people's faces go in --negatives DIR (default: "
                     "the general run's data); --data and --resume do not apply")
    if args.from_run is None or args.out is None:
        raise _usage("train --personalize needs --from RUN_DIR (the general model's run) and "
                     "--out NEW_RUN")
    given = {name: value for name in TRAIN_DEFAULTS
             if (value := getattr(args, name)) is not None}
    opts = PersonalizeOptions(
        from_run=args.from_run, out=args.out, db=args.db, users=args.users,
        negatives=args.negatives, holdout_share=args.holdout_share,
        general_share=args.general_share, augment=args.augment,
        seed=args.seed, general_model=args.general_model, export_dir=args.export, **given)
    # stdout is the report's: Keras (epoch logs) and TFLite export print there while working
    with contextlib.redirect_stdout(sys.stderr):
        report = personalize(opts, argv, progress=_tty())
    print(json.dumps(report, indent=2))
    verdict = "beats" if report["personalized_better"] else "does not beat"
    print(f"personalized model {verdict} the general one on held-out photos "
          f"({report['reason']})\n{report['note']}\nreport: {args.out / 'personalize_report.json'}",
          file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training.export import export

    report = export(args.run_dir, args.out, args.quantization, argv=argv, progress=_tty(),
                    max_auc_drop=args.max_auc_drop)
    print(json.dumps(report, indent=2))
    print(f"model folder: {args.out}", file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .evaluation.evaluate import evaluate, write_json

    if args.door:
        return _cmd_evaluate_door(args, argv)
    if args.write_thresholds:
        raise _usage("evaluate: --write-thresholds needs --door")

    plots = args.plots or (args.json.parent if args.json else args.model / "eval")
    result = evaluate(args.model, args.images, args.pairs, plots_dir=plots, seed=args.seed,
                      num_threads=args.threads, progress=_tty())
    text = json.dumps(result, indent=2)
    if args.json:
        write_json(result, args.json)
    print(text)
    return 0


def _cmd_evaluate_door(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .evaluation.door_eval import default_pairs_file, evaluate_door, write_thresholds
    from .evaluation.evaluate import write_json

    out = args.plots or (args.json.parent if args.json else args.model / "door")
    result = evaluate_door(args.model, args.images, args.pairs or default_pairs_file(args.model),
                           out, args.residents, args.anchors, args.doors, args.seed,
                           args.examples, calibrate=tuple(args.calibrate),
                           num_threads=args.threads, progress=_tty())
    write_json(result, args.json or out / "door.json")
    if args.write_thresholds:
        write_thresholds(args.model, result, argv)
    print(json.dumps(result, indent=2))
    return 0


def _usage(message: str) -> TwinLockError:
    from twinlock.daemon.errors import UsageError

    return UsageError(message)


def _tty() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "twinlock", "TwinLock host tools: train, export and evaluate the twin network that "
        "verifies faces at the door.")
    _train_parser(sub)
    p = sub.add_parser("export", help="export a trained run as an int8 TFLite model folder",
                       description="Convert a run's tower to full-integer int8 TFLite, check "
                       "parity against Keras, calibrate thresholds, write a model folder.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR")
    p.add_argument("--quantization", choices=("int8", "mixed", "float32"), default="int8",
                   help="int8: full integer (smallest); mixed: int8 but the last fully connected "
                   "layer float32, for towers that lose AUC in int8 there; float32")
    p.add_argument("--max-auc-drop", type=float, default=0.01)
    p = sub.add_parser("add-detector", help="put the detector (and face mesh) into an "
                       "exported model folder", description="Copy the BlazeFace detector and "
                       "the face mesh into MODEL_DIR and record their sha256 and licence in "
                       "model.json (export does this itself; this is for older folders).")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("--no-mesh", action="store_true", help="the detector only")
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
    g = p.add_argument_group(
        "door", "With --door: build doors from the model's held-out people (--pairs, default the "
        "model's own --holdout-pairs file) and measure what one knock risks: genuine, "
        "wrong-resident and impostor accepts per fusion rule, R x M, k-of-n on sequences "
        "(trainer/evaluation/door_eval.py).")
    g.add_argument("--door", action="store_true", help="door-level evaluation instead of pairs")
    g.add_argument("--residents", type=int, nargs="+", default=[1, 2, 5, 10], metavar="R")
    g.add_argument("--anchors", type=int, nargs="+", default=[1, 3, 5, 10], metavar="M")
    g.add_argument("--doors", type=int, default=20, help="seeded doors per (R, M) setting")
    g.add_argument("--calibrate", type=int, nargs=2, default=[5, 5], metavar=("R", "M"),
                   help="the door the thresholds and fusion rule are chosen for (default 5 5)")
    g.add_argument("--examples", type=Path, metavar="DIR",
                   help="face_recognition_examples folder with the clip (k-of-n on real video)")
    g.add_argument("--write-thresholds", action="store_true",
                   help="store the door-level thresholds and rule in MODEL_DIR/model.json")
    p = sub.add_parser("pairs", help="make an LFW-protocol pairs file of held-out people",
                       description="Pick people (seeded) from an LFW-style folder and write "
                       "matched/mismatched pairs in the pairsDevTrain.txt format. Train with "
                       "--holdout-pairs FILE so the model never sees them, then evaluate --pairs.")
    p.add_argument("--images", type=Path, required=True, metavar="IMAGES_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="PAIRS_FILE")
    p.add_argument("--identities", type=int, default=300, help="held-out people with 2+ images")
    p.add_argument("--pairs", type=int, default=1000, help="matched pairs (and as many mismatched)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("enroll", help="enrol a resident from photos or a camera",
                       description="Turn a few photos of a person into anchors for a model: each "
                       "photo needs exactly one sharp, well-lit, large enough face; every "
                       "rejected photo is listed with its reason. No retraining.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--images", nargs="+", type=Path, metavar="DIR_OR_FILE")
    p.add_argument("--camera", metavar="DEVICE", help="OpenCV camera index or /dev/v4l/by-id/...")
    p.add_argument("--count", type=int, default=5, help="camera: photos to keep (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="camera: give up after seconds")
    p.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--strict", metavar="FAR|off",
                   help="this resident's own false-accept target per knock (1e-06..0.01, e.g. "
                   "1e-05 for someone with a look-alike sister or twin; docs/how-it-works/"
                   "security.md#look-alikes-and-twins), or off for the door's")
    p = sub.add_parser("users", help="list, remove or rename enrolled residents, or make one "
                       "strict", description="users strict NAME FAR|off: the resident's own "
                       "false-accept target per knock (docs/how-it-works/security.md).")
    p.add_argument("action", choices=("list", "remove", "rename", "strict"))
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--model", type=Path, metavar="MODEL_DIR", help="also count anchors for it")
    p.add_argument("--json", action="store_true")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p = sub.add_parser("keygen", help="make the Ed25519 key pair that signs bundles")
    p.add_argument("--out", type=Path, default=Path("twinlock-signing"), metavar="PREFIX",
                   help="writes PREFIX.key (secret, 0600) and PREFIX.pub")
    p = sub.add_parser("bundle", help="write a signed bundle (model, thresholds, anchors)",
                       description="Write one signed file with the model, its calibrated "
                       "thresholds and the enrolled users' anchors for it: what a door needs.")
    p.add_argument("--model", type=Path, required=True, metavar="MODEL_DIR")
    p.add_argument("--users", nargs="+", metavar="NAME", help="only these users (default all)")
    p.add_argument("--key", type=Path, required=True, metavar="KEY", help="private key (keygen)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--activity-db", type=Path, metavar="PATH", help="the doors' store: the "
                   "bundle's summary is kept there and what changed since each door's current "
                   "bundle is listed (used when it exists; default: activity.db beside the "
                   "enrolment database)")
    p = sub.add_parser("deploy", help="copy a bundle to the door and reload it",
                       description="Copy a bundle over OpenSSH (sftp; atomic rename on the door) "
                       "and ask the daemon to reload, or write it to a folder (an SD card).")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--to", required=True, metavar="TARGET",
                   help="ssh://USER@HOST[:PORT][/PATH], a folder, or a door's name (twinlock "
                   "doors list: its deploy target, key and ssh options)")
    p.add_argument("--activity-db", type=Path, metavar="PATH",
                   help="with a door's name: the activity store that lists the doors")
    p.add_argument("--reload-command", metavar="CMD", help="run on the door after the copy "
                   "(default: the door's own, doors add --reload-command, else sudo systemctl "
                   "reload twinlockd)")
    p.add_argument("--no-reload", action="store_true")
    p.add_argument("-i", "--identity", type=Path, help="ssh private key")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="extra ssh option, e.g. -o StrictHostKeyChecking=yes (repeatable)")
    _review_parsers(sub)
    from .web.command import add_parser as web_parser

    web_parser(sub, DB_HELP, ACTIVITY_HELP)
    return parser


def _cmd_pairs(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .data.pairs import make_pairs_file

    summary = make_pairs_file(args.images, args.out, args.identities, args.pairs, args.seed)
    print(json.dumps(summary | {"file": str(args.out)}, indent=2))
    return 0


def _strict_far(text: str) -> float | None:
    """--strict / users strict: a false-accept target per knock, or off (the door's)."""
    from twinlock.daemon.errors import UsageError

    from .household.enroll_store import strict_far_from_text

    try:
        return strict_far_from_text(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _store(args: argparse.Namespace):
    from .household.enroll_store import EnrolmentStore

    return EnrolmentStore(args.db)


def _cmd_enroll(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .household.enroll import CaptureProgress, describe, enroll_from_camera, enroll_from_images

    if bool(args.images) == (args.camera is not None):
        raise _usage("enroll: give either --images DIR (or files) or --camera DEVICE")
    strict = None
    if args.strict is not None:
        from .household.enroll_store import check_strict_far

        try:
            strict = check_strict_far(_strict_far(args.strict))
        except argparse.ArgumentTypeError as exc:
            raise _usage(f"enroll --strict: {exc}") from None
    with _store(args) as store:
        if args.images:
            paths: list[Path] = []
            for item in args.images:
                if item.is_dir():
                    paths += sorted(p for p in item.iterdir() if p.is_file())
                elif item.exists():
                    paths.append(item)
                else:
                    raise _usage(f"enroll: {item} does not exist")
            report = enroll_from_images(store, args.name, paths, args.model)
        else:
            from twinlock.daemon.camera.opencv import OpenCVCamera

            device = int(args.camera) if str(args.camera).isdigit() else args.camera

            def show(p: CaptureProgress) -> bool:
                last = f", last frame: {describe(p.last_reason)}" if p.last_reason else ""
                print(f"\r  kept {p.kept}/{p.count}, looked at {p.seen} frames, "
                      f"{p.elapsed_s:.0f}/{p.timeout_s:.0f} s{last}   ", end="",
                      file=sys.stderr, flush=True)
                return True

            print(f"Look at the camera, {args.name}; turn your head a little between shots.",
                  file=sys.stderr)
            report = enroll_from_camera(store, args.name, OpenCVCamera(device), args.model,
                                        count=args.count, timeout_s=args.timeout, progress=show)
            print(file=sys.stderr)
        if args.strict is not None and report.accepted:
            store.set_strict(report.user, strict)
    for source, reason in report.rejected:
        print(f"  rejected {source}: {describe(reason)}", file=sys.stderr)
    print(json.dumps({"user": report.user, "model_id": report.model_id,
                      "accepted": report.accepted, "rejected": len(report.rejected),
                      "anchors_for_model": report.anchors}
                     | ({"strict_far": strict} if args.strict is not None else {}),
                     indent=2))
    if not report.accepted:
        print(f"twinlock enroll: no usable face for {args.name}", file=sys.stderr)
        return 1
    return 0


def _cmd_users(args: argparse.Namespace, argv: Sequence[str]) -> int:
    model_id = None
    if args.model:
        from twinlock.daemon.recognition.model import read_metadata

        model_id = read_metadata(args.model).model_id
    with _store(args) as store:
        if args.action == "list":
            rows = store.users(model_id)
            if args.json:
                print(json.dumps([{"name": u.name, "samples": u.samples,
                                   "anchors_for_model": u.anchors_for_model,
                                   "created": u.created, "strict_far": u.strict_far}
                                  for u in rows], indent=2))
            elif not rows:
                print("no users enrolled")
            else:
                for u in rows:
                    extra = f", {u.anchors_for_model} anchors for this model" if model_id else ""
                    if u.strict_far is not None:
                        extra += f", strict: false-accept target {u.strict_far:g} per knock"
                    print(f"{u.name}: {u.samples} photos{extra} (since {u.created})")
        elif args.action == "strict":
            if len(args.names) != 2:
                raise _usage("users strict NAME FAR|off (e.g. 1e-05)")
            try:
                far = _strict_far(args.names[1])
            except argparse.ArgumentTypeError as exc:
                raise _usage(f"users strict: {exc}") from None
            name = store.set_strict(args.names[0], far)
            print(f"{name}: " + ("the door's threshold" if far is None else
                                 f"own false-accept target {far:g} per knock") +
                  " from the next bundle (twinlock bundle)")
        elif args.action == "remove":
            if not args.names:
                raise _usage("users remove NAME")
            for name in args.names:
                print(f"removed {name} ({store.remove_user(name)} photos)")
        else:
            if len(args.names) != 2:
                raise _usage("users rename OLD NEW")
            print(f"renamed to {store.rename_user(*args.names)}")
    return 0


def _cmd_add_detector(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training.model_assets import add_detector

    print(json.dumps(add_detector(args.model_dir, mesh=not args.no_mesh), indent=2))
    return 0


def _cmd_keygen(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .household.bundles import keygen

    info = keygen(args.out, echo=False)
    print(json.dumps(info, indent=2))
    print(f"keep {info['private_key']} secret; install {info['public_key']} on the door "
          "(deploy/install.sh --key)", file=sys.stderr)
    return 0


def _cmd_bundle(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .household.rollout import build_bundle, changes_per_door, record_bundle

    with _store(args) as store:
        info = build_bundle(store, args.model, args.key, args.out, users=args.users)
    if not info["users"]:
        print("twinlock bundle: warning: no users in this bundle: the door will open for "
              "nobody", file=sys.stderr)
    activity_db = _activity_path(args)
    if args.activity_db is not None or activity_db.exists():  # a household with doors
        with _activity_store(args) as activity:
            lines = changes_per_door(activity, record_bundle(activity, args.out))
        info["changes_since"] = lines
        for line in lines:
            print(f"twinlock bundle: since the door's bundle: {line}", file=sys.stderr)
    print(json.dumps(info, indent=2))
    return 0


def _cmd_deploy(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .household.deploy import DEFAULT_RELOAD_COMMAND, deploy

    target, identity = args.to, args.identity
    options = [t for o in args.ssh_option for t in shlex.split(o)]
    door = _named_door(args)
    if door is not None:
        from .household.doors import deploy_target_of
        from .household.rollout import deploy_to_door

        print(f"door {door.name}: {deploy_target_of(door)}")
        with _activity_store(args) as activity:
            report = deploy_to_door(activity, door.name, args.bundle,
                                    reload_command=args.reload_command,
                                    extra_ssh_options=options, identity=identity,
                                    no_reload=args.no_reload)
            print(f"door {door.name} now runs bundle {activity.door_bundle(door.name).bundle_id}")
    else:
        report = deploy(args.bundle, target,
                        reload_command=None if args.no_reload else (
                            args.reload_command or DEFAULT_RELOAD_COMMAND),
                        ssh_options=options, identity=identity)
    if args.verbose:
        for step in report.steps:
            print(f"  $ {step}", file=sys.stderr)
    print(report.summary())
    return 0


# -- doors and activity (issue 22) ----------------------------------------------------------------

ACTIVITY_HELP = ("activity store (default $TWINLOCK_ACTIVITY_DB, else activity.db beside the "
                 "enrolment database)")


def _review_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doors", help="the household's doors: add, list, remove, sync, update",
                       description="Doors as a list. doors add NAME --to TARGET; doors list "
                       "(each door's bundle, marked OUTDATED when the household's residents "
                       "say otherwise); doors remove NAME; doors sync [NAME...] fetches each "
                       "door's new review records (its attempts with their faces) into the "
                       "activity store, over the SSH deploy account or from a folder; it only "
                       "reads on the door. doors update [NAME...] --model DIR --key KEY: bundle the "
                       "household's residents now, sign once and deploy to each NAME (every "
                       "door without one) in turn; a door that fails is reported and the "
                       "others go on (exit status 1 when any failed).")
    p.add_argument("action", choices=("add", "list", "remove", "sync", "update"))
    p.add_argument("names", nargs="*", metavar="NAME", help="door name: 1-32 lower-case "
                   "letters, digits and '-' (the name in the door's review: section)")
    p.add_argument("--to", metavar="TARGET", help="add: ssh://USER@HOST[:PORT][/REVIEW_DIR] "
                   "(default folder /var/lib/twinlock-review/) or a local folder")
    p.add_argument("-i", "--identity", type=Path, help="add: ssh private key")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="add: extra ssh option, kept for every sync (repeatable)")
    p.add_argument("--from-inventory", type=Path, metavar="FILE", help="add (no NAME): every "
                   "host of group twinlock_doors in this Ansible YAML inventory (deploy/ansible/), "
                   "as a door read and deployed over SSH as its first twinlock_deploy_users")
    p.add_argument("--deploy-to", metavar="TARGET", help="add: where twinlock deploy --to NAME "
                   "sends bundles (default: the same host's /var/spool/twinlock/)")
    _mqtt_door_arguments(p)
    p.add_argument("--reload-command", metavar="CMD", help="add: what deploy --to NAME runs on "
                   "the door after the copy (default sudo systemctl reload twinlockd)")
    p.add_argument("--model", type=Path, metavar="MODEL_DIR", help="update: the model to "
                   "bundle; list: also compare each door's model and thresholds with it")
    p.add_argument("--key", type=Path, metavar="KEY", help="update: the signing key (keygen)")
    p.add_argument("--timeout", type=float, default=300.0, help="sync: seconds per door "
                   "(default 300)")
    p.add_argument("--json", action="store_true", help="list: as JSON")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--activity-db", type=Path, metavar="PATH", help=ACTIVITY_HELP)

    p = sub.add_parser("activity", help="what the doors did: list, show, visitors, label",
                       description="Attempts fetched from the doors (twinlock doors sync), with "
                       "their faces. activity list; activity show ID [--crop-out FILE]; "
                       "activity visitors --model DIR: refused attempts grouped by the tower's "
                       "own notion of the same person (average linkage on the embeddings' "
                       "cosine distance, cut where the model's metrics.visitor_grouping says; "
                       "a model without it: the head's single-linkage cores at door_far_1e-04, "
                       "then average linkage of cores down to door_far_1e-03; chosen by "
                       "measurement: benchmarks/visitor_grouping.py); activity label "
                       "ID|--group G --as NAME "
                       "--model DIR: the face goes through the enrolment gate (one face, "
                       "quality, near-duplicate) into NAME's photos, for the next bundle; "
                       "activity label ID --not NAME --model DIR on an unlock as NAME: keep the "
                       "pair as a known impostor, list the anchors that matched and measure "
                       "each remedy's cost; --apply remove-anchors carries one out (the door "
                       "only gets stricter). activity label --group G --not-resident [NAME] "
                       "--model DIR: a known visitor who is not a resident (the postman), "
                       "listed apart with his later attempts; nothing enrolled; --unmark undoes "
                       "it.")
    p.add_argument("action", choices=("list", "show", "visitors", "label"))
    p.add_argument("id", nargs="?", metavar="ID", help="show, label: an attempt's id")
    p.add_argument("--door", metavar="NAME", help="list, visitors: one door only")
    p.add_argument("--since", metavar="WHEN", help="list: ISO date/time (UTC unless it says) "
                   "or an age: 30m, 12h, 7d")
    p.add_argument("--decision", choices=("unlock", "deny", "liveness", "lockout", "remote"),
                   help="list: one kind of decision")
    p.add_argument("--limit", type=int, default=50, help="list: at most this many (default "
                   "50; 0: all)")
    p.add_argument("--crop-out", type=Path, metavar="FILE", help="show: write the face crop "
                   "(JPEG)")
    p.add_argument("--model", type=Path, metavar="MODEL_DIR", help="visitors, label: the model "
                   "the doors decide with (its head and thresholds)")
    p.add_argument("--threshold", metavar="NAME", help="visitors, label --group: group by "
                   "the model's head at one of its calibrated thresholds (e.g. "
                   "door_far_1e-04) instead of the cosine-distance grouping the model carries "
                   "(chosen by measurement; a model without one uses the head at "
                   "door_far_1e-04)")
    p.add_argument("--group", metavar="G", help="label: a visitor group (activity visitors)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--as", dest="as_name", metavar="NAME", help="label: it was NAME (enrol)")
    who.add_argument("--not", dest="not_name", metavar="NAME",
                     help="label: an unlock as NAME was someone else")
    who.add_argument("--not-resident", nargs="?", const="not a resident", metavar="NAME",
                     help="label: a known visitor who is not a resident (e.g. postman): the "
                     "group leaves the unknown visitors and its later attempts show as NAME; "
                     "nothing is enrolled, no door changes")
    who.add_argument("--unmark", action="store_true", help="label: take the known-visitor "
                     "mark off a group (--not-resident undone)")
    p.add_argument("--apply", choices=("remove-anchors",), help="label --not: carry out a "
                   "remedy")
    p.add_argument("--json", action="store_true")
    p.add_argument("--db", type=Path, help=DB_HELP)
    p.add_argument("--activity-db", type=Path, metavar="PATH", help=ACTIVITY_HELP)


def _named_door(args: argparse.Namespace):
    """The door ``--to`` names, if it is a door's name (not a URL or an existing folder)."""
    import re

    text = args.to.strip()
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", text) or Path(text).exists():
        return None
    from .household.activity import ActivityStore, default_path

    path = args.activity_db or default_path(getattr(args, "db", None))
    if not Path(path).exists():
        return None
    with ActivityStore(path) as store:
        if text not in {d.name for d in store.doors()}:
            return None
        return store.door(text)


def _activity_path(args: argparse.Namespace) -> Path:
    from .household.activity import default_path

    return Path(args.activity_db or default_path(getattr(args, "db", None)))


def _activity_store(args: argparse.Namespace):
    from .household.activity import ActivityStore

    return ActivityStore(_activity_path(args))


def _since(text: str | None):
    """--since: an ISO time (UTC unless it names a zone) or an age such as 30m, 12h, 7d."""
    import re
    from datetime import UTC, datetime, timedelta

    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return datetime.now(UTC) - timedelta(seconds=float(match.group(1)) * unit)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _usage(f"--since {text!r}: give an ISO date or time (2026-12-06, "
                     "2026-12-06T08:00) or an age (30m, 12h, 7d)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _mqtt_door_arguments(p: argparse.ArgumentParser) -> None:
    """doors add --mqtt: the door's review records from the broker (review.mqtt at the door)."""
    p.add_argument("--mqtt", metavar="HOST[:PORT]", help="add: fetch over MQTT instead (the "
                   "door's review.mqtt): a persistent session at this broker keeps the door's "
                   "records while this machine is off; opened now")
    p.add_argument("--mqtt-prefix", default="twinlock/door", metavar="PREFIX",
                   help="add --mqtt: the door's mqtt.topic_prefix (default twinlock/door); "
                   "records come on PREFIX/review/NAME")
    p.add_argument("--mqtt-user", metavar="USER", help="add --mqtt: user name on the broker")
    p.add_argument("--mqtt-password-file", type=Path, metavar="FILE",
                   help="add --mqtt: file holding the password (mode 0600)")
    p.add_argument("--mqtt-ca", type=Path, metavar="PEM", help="add --mqtt: the broker's CA "
                   "certificate: use TLS")
    p.add_argument("--mqtt-cert", type=Path, metavar="PEM", help="add --mqtt: client "
                   "certificate (TLS)")
    p.add_argument("--mqtt-key", type=Path, metavar="PEM", help="add --mqtt: its private key")


def _mqtt_door_target(args: argparse.Namespace) -> str:
    """The ``mqtt://`` target of ``doors add NAME --mqtt ...``, checked by the door's schema."""
    from .household.mqtt_review import mqtt_target, parse_mqtt_target

    if args.to:
        raise _usage("doors add: --to or --mqtt, not both")
    target = mqtt_target(args.mqtt, args.mqtt_prefix, args.mqtt_user,
                         password_file=args.mqtt_password_file, ca_file=args.mqtt_ca,
                         client_cert=args.mqtt_cert, client_key=args.mqtt_key)
    parse_mqtt_target(target, args.names[0])
    return target


def _open_mqtt_session(entry) -> None:
    """Open the household's session at the broker now, so it keeps records from here on."""
    from .household.mqtt_review import client_id, register

    try:
        register(entry)
    except TwinLockError as exc:
        print(f"twinlock doors add: warning: {exc}; the broker keeps records for "
              f"{client_id(entry.name)} only once a doors sync {entry.name} reaches it",
              file=sys.stderr)
        return
    print(f"the broker now keeps {entry.name}'s review records for {client_id(entry.name)}")


def _cmd_doors(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .household.doors import parse_door_target, sync_door

    with _activity_store(args) as store:
        action = args.action
        if action == "add" and args.from_inventory is not None:
            if args.names or args.to or args.mqtt:
                raise _usage("doors add --from-inventory FILE takes no NAME, --to or --mqtt")
            return _add_from_inventory(store, args.from_inventory)
        if action in ("add", "remove") and len(args.names) != 1:
            raise _usage(f"doors {action} takes one door NAME")
        if action == "list" and args.names:
            raise _usage("doors list takes no NAME")
        if action == "add":
            args.name = args.names[0]
            if args.mqtt:
                args.to = _mqtt_door_target(args)
            elif not args.to:
                raise _usage("doors add NAME --to ssh://USER@HOST[:PORT]/REVIEW_DIR or a folder, "
                             "or --mqtt HOST[:PORT]")
            else:
                parse_door_target(args.to)  # the syntax now, not at the first sync
            options = [t for o in args.ssh_option for t in shlex.split(o)]
            identity = str(args.identity.expanduser().resolve()) if args.identity else None
            if args.deploy_to:
                from .household.deploy import parse_target

                parse_target(args.deploy_to)
            entry = store.add_door(args.name, args.to, identity, options, args.deploy_to)
            if args.reload_command is not None:
                store.set_reload_command(entry.name, args.reload_command)
            print(f"added door {entry.name}: {entry.target} (fetch with: twinlock doors sync "
                  f"{entry.name})")
            if args.mqtt:
                _open_mqtt_session(entry)
        elif action == "remove":
            kept = store.remove_door(args.names[0])
            print(f"removed door {args.names[0]}; its {kept} fetched attempts stay in "
                  f"{store.path}")
        elif action == "update":
            return _update_door(args, store)
        elif action == "list":
            counts = store.door_counts()
            status = _door_statuses(args, store)
            rows = [{"name": d.name, "target": d.target, "deploy_target": d.deploy_target,
                     "added": d.added,
                     "last_sync": d.last_sync, "last_error": d.last_error,
                     "attempts": counts.get(d.name, (0, None))[0],
                     "newest": counts.get(d.name, (0, None))[1],
                     **status[d.name].as_json()} for d in store.doors()]
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print("no doors yet (twinlock doors add NAME --to ssh://USER@HOST/...)")
            for r in rows if not args.json else []:
                state = (f"last sync {r['last_sync']}" if r["last_sync"] else "never synced")
                if r["last_error"]:
                    state += f" (FAILED: {r['last_error']})"
                print(f"{r['name']}: {r['target']}; {r['attempts']} attempts; {state}")
                door = status[r["name"]]
                print(f"  bundle {door.bundle.bundle_id or '?'}: {door.state}"
                      + (f": {'; '.join(door.changes)}" if door.changes else ""))
        else:
            names = args.names or [d.name for d in store.doors()]
            if not names:
                raise _usage("no doors to sync (twinlock doors add NAME --to ...)")
            failed = 0
            for name in names:
                try:
                    report = sync_door(store, name, timeout_s=args.timeout)
                except TwinLockError as exc:
                    if len(names) == 1:
                        raise
                    failed += 1
                    print(f"{name}: sync failed: {exc}", file=sys.stderr)
                    continue
                print(report.summary())
            return 1 if failed else 0
    return 0


def _add_from_inventory(store: Any, inventory: Path) -> int:
    """doors add --from-inventory FILE: each door of the inventory not yet in the list; one
    listed with another target is reported (exit status 1) and the others go on."""
    from .household.inventory import doors_from_inventory

    listed = {d.name: d for d in store.doors()}
    failed = 0
    for door in doors_from_inventory(inventory):
        old = listed.get(door.name)
        if old is not None:
            if old.target == door.target:
                print(f"door {door.name}: already listed ({door.target})")
            else:
                failed += 1
                print(f"door {door.name}: listed with target {old.target}, the inventory says "
                      f"{door.target}: twinlock doors remove {door.name} first to change it",
                      file=sys.stderr)
            continue
        entry = store.add_door(door.name, door.target, door.identity, door.ssh_options)
        print(f"added door {entry.name} (host {door.host}): {entry.target}")
    return 1 if failed else 0


def _door_statuses(args: argparse.Namespace, store: Any) -> dict[str, Any]:
    """doors list: each door's bundle against the household's enrolment now."""
    from .household.enroll_store import EnrolmentStore, default_path
    from .household.rollout import door_statuses

    path = Path(args.db or default_path()).expanduser()
    if not path.exists():  # listing doors makes no enrolment store
        return {s.entry.name: s for s in door_statuses(store, None, args.model)}
    with EnrolmentStore(path) as enrolment:
        return {s.entry.name: s for s in door_statuses(store, enrolment, args.model)}


def _update_door(args: argparse.Namespace, store: Any) -> int:
    """doors update [NAME...] --model DIR --key KEY: one signed bundle of the residents now,
    deployed to each named door (every door without a name) in turn; a door that fails is
    reported and the others go on (the page's "Update every door" does the same)."""
    from .household.enroll_store import default_path
    from .household.rollout import DoorOutcome, update_doors

    if args.model is None or args.key is None:
        raise _usage("doors update [NAME...] needs --model MODEL_DIR and --key KEY")
    enrol_db = Path(args.db or default_path()).expanduser()

    def progress(door: str | None, step: str) -> None:
        print(f"{door}: {step}" if door else step)

    def finished(outcome: DoorOutcome) -> None:
        if outcome.error is not None:
            print(f"{outcome.door}: FAILED: {outcome.error}", file=sys.stderr)
        elif outcome.report is not None:
            print(f"{outcome.door}: done: {outcome.report.summary()}")

    result = update_doors(store.path, enrol_db, args.names, args.model, args.key,
                          enrol_db.parent / "updates", progress, finished)
    if result.bundle is not None:
        print(f"bundle {result.bundle['bundle_id']} ({len(result.bundle['users'])} residents)")
    print(result.summary(), file=sys.stderr if result.failed else sys.stdout)
    return 1 if result.failed else 0


def _cmd_web(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .web.command import run

    return run(args)


def _cmd_activity(args: argparse.Namespace, argv: Sequence[str]) -> int:
    with _activity_store(args) as store:
        action = args.action
        if action in ("show",) and args.id is None:
            raise _usage("activity show ID (ids: twinlock activity list)")
        if action in ("visitors", "label") and args.model is None:
            raise _usage(f"activity {action} needs --model MODEL_DIR (the model the doors "
                         "decide with)")
        if action != "label" and (args.as_name or args.not_name or args.group or args.apply
                                  or args.not_resident is not None or args.unmark):
            raise _usage("--as, --not, --not-resident, --unmark, --group and --apply go with "
                         "activity label")
        if action == "list":
            rows = store.attempts(door=args.door, since=_since(args.since),
                                  decision=args.decision, limit=args.limit or None)
            if args.json:
                print(json.dumps([a.as_json() for a in rows], indent=2))
            elif not rows:
                filtered = args.door or args.since or args.decision
                print("no attempts match" if filtered
                      else "no attempts (twinlock doors sync fetches them)")
            for a in rows if not args.json else []:
                who = f" {a.resident}" if a.resident else ""
                score = f" {a.score:.3f}" if a.score is not None else ""
                labels = "".join(f" [{k} {n}]" for k, n in a.labels)
                print(f"{a.time:%Y-%m-%d %H:%M:%S}Z {a.door:<12} {a.decision:<8}{who}{score}"
                      f"{labels}  {a.id}")
        elif action == "show":
            a = store.attempt(args.id)
            if args.crop_out:
                crop = store.crop(a.id)
                if crop is None:
                    raise _usage(f"attempt {a.id} kept no face crop")
                from twinlock.daemon.storage.files import atomic_write

                atomic_write(args.crop_out, crop, 0o600)
            info = a.as_json() | {"embedding_dim": None if a.embedding is None
                                  else int(a.embedding.size)}
            if args.crop_out:
                info["crop_written_to"] = str(args.crop_out)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                for key, value in info.items():
                    print(f"{key}: {value}")
        elif action == "visitors":
            from twinlock.daemon.recognition.model import read_metadata

            from .household.visitors import visitor_groups

            visitors = visitor_groups(store, read_metadata(args.model), args.threshold,
                                      door=args.door)  # known visitors (not residents) too
            visitors.sort(key=lambda v: v.known is not None)
            if args.json:
                print(json.dumps([v.as_json() for v in visitors], indent=2))
            elif not visitors:
                print("no unlabelled refused attempts with a face for this model")
            for v in visitors if not args.json else []:
                refused = ""
                residents = v.as_json()["residents_refused"]
                if residents:
                    refused = f"; refused as {', '.join(residents)}"  # type: ignore[arg-type]
                known = f" (known visitor {v.known!r}, not a resident)" if v.known else ""
                print(f"{v.key}{known}: {v.count} attempts, first {v.first_seen:%Y-%m-%d %H:%M}, "
                      f"last {v.last_seen:%Y-%m-%d %H:%M}, doors {', '.join(v.doors)}{refused}")
        else:
            return _label(args, store)
    return 0


def _label(args: argparse.Namespace, store: Any) -> int:
    from .household.labels import apply_remove_anchors, label_as, label_not

    if (args.id is None) == (args.group is None):
        raise _usage("activity label: give one attempt ID or --group G")
    if args.not_resident is not None or args.unmark:
        return _mark_visitor(args, store)
    if not (args.as_name or args.not_name):
        raise _usage("activity label: say who it was (--as NAME) or who it was not (--not NAME)")
    if args.group is not None:
        if args.not_name:
            raise _usage("--not works on one unlock (an ID), not on a group")
        from twinlock.daemon.recognition.model import read_metadata

        from .household.visitors import find_group, unknown_visitors

        group = find_group(unknown_visitors(store, read_metadata(args.model), args.threshold),
                           args.group)
        attempts = group.attempts
    else:
        attempts = [store.attempt(args.id)]
    with _store(args) as enrolment:
        if args.as_name:
            if args.apply:
                raise _usage("--apply goes with --not")
            report = label_as(store, enrolment, attempts, args.as_name, args.model)
            from .household.enroll import describe

            if args.json:
                print(json.dumps({"user": report.user, "enrolled": report.accepted,
                                  "refused": [{"crop": s, "reason": r, "why": describe(r)}
                                              for s, r in report.rejected],
                                  "anchors": report.anchors}, indent=2))
            else:
                for source in report.accepted:
                    print(f"enrolled {source} as {report.user}")
                for source, reason in report.rejected:
                    print(f"refused {source}: {describe(reason)} ({reason})")
                print(f"{report.user} now has {report.anchors} anchors for this model; the next "
                      "bundle (twinlock bundle) carries them")
            return 0 if report.accepted else 1
        impostor = label_not(store, enrolment, attempts[0], args.not_name, args.model)
        removed = apply_remove_anchors(enrolment, impostor) if args.apply else []
        if args.json:
            print(json.dumps(impostor.as_json() | {"applied_removed_samples": removed},
                             indent=2))
            return 0
        print(f"kept {impostor.attempt} as a known impostor pair for {impostor.resident} "
              f"(fused score {impostor.fused_score:.6f} >= door threshold "
              f"{impostor.threshold:.6f}, fusion {impostor.fusion})")
        print("anchors, best match first:")
        for a in impostor.anchors:
            mark = "MATCHED" if a["matched"] else "       "
            print(f"  {mark} sample {a['sample']} ({a['source']}): {a['score']:.6f}")
        print("remedies (each only makes the door stricter; cost = the resident's own faces "
              "let in, before -> after):")
        for r in impostor.remedies:
            cost = (f"{r.genuine_before} -> {r.genuine_after} of {r.genuine_knocks} knocks"
                    if r.genuine_knocks else "no faces of theirs to measure on")
            print(f"  - {r.what}: {'refuses' if r.refuses_this_face else 'does NOT refuse'} "
                  f"this face; {cost}" + (f"\n    {r.command}" if r.command else ""))
        if removed:
            print(f"removed samples {', '.join(map(str, removed))}; run twinlock bundle and "
                  "deploy to carry it to the door")
    return 0


def _mark_visitor(args: argparse.Namespace, store: Any) -> int:
    """activity label --not-resident [NAME] / --unmark: a known visitor, no enrolment."""
    from twinlock.daemon.recognition.model import read_metadata

    from .household.visitors import find_group, mark_not_resident, unmark_visitor, visitor_groups

    if args.apply:
        raise _usage("--apply goes with --not")
    if args.group is not None:
        groups = visitor_groups(store, read_metadata(args.model), args.threshold)
        attempts = find_group([g for g in groups if (g.known is not None) == args.unmark],
                              args.group).attempts
    else:
        attempts = [store.attempt(args.id)]
    if args.unmark:
        count = unmark_visitor(store, attempts)
        result = {"unmarked": count, "attempts": [a.id for a in attempts]}
        text = f"took the known-visitor mark off {count} attempts: unknown visitors again"
    else:
        name = mark_not_resident(store, attempts, args.not_resident)
        result = {"known_visitor": name, "attempts": [a.id for a in attempts]}
        text = (f"marked {len(attempts)} attempts as {name!r}, not a resident (nothing "
                "enrolled; no door changes)")
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


COMMANDS = {"train": _cmd_train, "export": _cmd_export, "evaluate": _cmd_evaluate,
            "pairs": _cmd_pairs, "add-detector": _cmd_add_detector,
            "enroll": _cmd_enroll, "users": _cmd_users,
            "keygen": _cmd_keygen, "bundle": _cmd_bundle, "deploy": _cmd_deploy,
            "doors": _cmd_doors, "activity": _cmd_activity, "web": _cmd_web}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_command("twinlock", args.command, lambda: COMMANDS[args.command](args, argv),
                       say_interrupted=True)


if __name__ == "__main__":
    sys.exit(main())
