"""``twinlock train --personalize``: the tutorial's recipe, fine-tuning the twin on the residents.

The general one-shot model stays the default: enrolling needs no training. This option is for a
household that wants the model to know its own residents better. It starts from a finished
general run (the only place its Keras tower exists) and:

1. splits each chosen resident's stored samples, seeded, into samples to fine-tune on and
   held-out samples that are never trained on (their ids go into run.json);
2. fine-tunes the twin (L1 distance + Dense sigmoid, binary cross-entropy, label 1 = same person)
   from the general tower and head, at a low learning rate, with the trainer's augmentation, on
   pairs from ``personal_pairs``: a resident's crop against another of the same resident,
   against another resident, against other people, and general same/different pairs of other
   people so the tower keeps telling strangers apart;
3. re-fits the head and calibrates thresholds on the run's validation people exactly as
   ``twinlock train`` does (``TrainLoop.finish``), and exports the run with ``twinlock export``'s
   code (quantized as the general model is: int8 for the shipped one; parity gate);
4. measures the general and the personalized exported models through the daemon's runtime on the
   held-out samples only and writes ``personalize_report.json``.

Stored crops were aligned by the enrolment model; if that model used another crop size or zoom,
they are re-framed with ``enroll.fit_crop`` (the same re-framing ``twinlock bundle`` uses for
anchors) and counted in the report. Stored crops are RGB; grey towers get them converted by the
same ``to_model_input`` as every other crop.

People in the negatives data whose folder name is an enrolled resident's name (case-insensitive)
are the residents themselves: they are left out of training, validation and the report's
impostors (``TrainConfig.exclude_identities``).

Nothing is written to the enrolment store: anchors belong to a model id, and ``twinlock bundle
--model NEW_RUN/model`` makes the new model's anchors from the stored crops when asked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinlock.daemon.errors import DataError, UsageError
from twinlock.daemon.faces.align import DEFAULT_TEMPLATE
from twinlock.daemon.recognition.model import FaceEmbedder, read_metadata
from twinlock.daemon.recognition.thresholds import PAIR_PREFIX, pair_rate
from twinlock.daemon.storage.files import atomic_write_json

from ..data.crops import CROP_CODE_VERSION
from ..data.datasets import sample_pairs
from ..stats import metrics
from ..training.config import TrainConfig
from ..training.prepare import PreparedData, prepare_data
from ..training.provenance import data_fingerprint, provenance
from ..training.runs import HEAD_FILE, RUN_FILE, TOWER_FILE, load_run_config
from .enroll import fit_crop
from .enroll_store import EnrolmentStore, StoredSample, default_path

logger = logging.getLogger(__name__)

REPORT_FILE = "personalize_report.json"
MIN_TRAIN_SAMPLES = 2  # an anchor/positive pair needs two crops
MIN_HELDOUT_SAMPLES = 1
ENROLLED_PREFIX = "enrolled:"  # identity names of residents inside the fine-tuning data
REPORT_FARS = (1e-2, 1e-3)
AUC_MARGIN = 0.005  # smaller AUC differences are not called a gain


@dataclass
class PersonalizeOptions:
    """What ``twinlock train --personalize`` was asked; defaults are a short, gentle fine-tune."""

    from_run: Path
    out: Path
    db: Path | None = None  # enrolment store (default: $TWINLOCK_ENROL_DB or the user's store)
    users: list[str] | None = None  # default: every enrolled resident
    negatives: list[Path] | None = None  # default: the general run's own data folders
    holdout_share: float = 0.3
    epochs: int = 5
    steps_per_epoch: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-4
    general_share: float = 1 / 3  # share of pairs that are other people's same/different pairs
    augment: bool = True
    seed: int = 0
    general_model: Path | None = None  # the general run's exported model (default: export it)
    export_dir: Path | None = None  # default: out / "model"
    max_impostor_pairs: int = 50_000

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_share < 1.0:
            raise UsageError(f"--holdout-share must be between 0 and 1, not {self.holdout_share}")
        if not 0.0 <= self.general_share < 1.0:
            raise UsageError(f"--general-share must be within [0, 1), not {self.general_share}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "max_impostor_pairs"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.learning_rate > 0:
            raise UsageError(f"--learning-rate must be > 0, not {self.learning_rate}")

    @property
    def model_dir(self) -> Path:
        return self.export_dir or self.out / "model"


@dataclass
class UserSplit:
    """One resident's stored samples: those fine-tuned on and those held out to test."""

    name: str
    train: list[StoredSample]
    held_out: list[StoredSample] = field(default_factory=list)


# -- choosing data ---------------------------------------------------------------------------


def split_samples(sample_ids: Sequence[int], share: float, seed: int,
                  name: str) -> tuple[list[int], list[int]]:
    """Seeded (train, held-out) split of one resident's sample ids; the same for the same ids,
    seed and name. DataError when either side would be too small."""
    n = len(sample_ids)
    n_held = max(MIN_HELDOUT_SAMPLES, int(np.floor(n * share + 0.5)))
    if n - n_held < MIN_TRAIN_SAMPLES:
        need = MIN_TRAIN_SAMPLES + MIN_HELDOUT_SAMPLES
        why = (f"needs at least {need} ({MIN_TRAIN_SAMPLES} to fine-tune on, "
               f"{MIN_HELDOUT_SAMPLES} held out)" if n < need else
               f"--holdout-share {share:g} holds out {n_held}, leaving {n - n_held} to fine-tune "
               f"on (needs {MIN_TRAIN_SAMPLES})")
        raise DataError(f"{name} has {n} enrolled photo(s): {why}")
    rng = np.random.default_rng([seed, zlib.crc32(name.casefold().encode())])
    order = [int(i) for i in rng.permutation(sorted(int(i) for i in sample_ids))]
    return sorted(order[n_held:]), sorted(order[:n_held])


def load_users(store: EnrolmentStore, names: Sequence[str] | None, share: float,
               seed: int) -> list[UserSplit]:
    """The chosen residents (default all) with their samples split; one UsageError/DataError
    naming every unknown resident or every resident with too few samples."""
    enrolled = [u.name for u in store.users()]
    if not enrolled:
        raise UsageError(f"no residents are enrolled in {store.path}: enrol them first "
                         "(twinlock enroll NAME --images DIR --model MODEL_DIR)")
    by_key = {unicodedata.normalize("NFC", n).casefold(): n for n in enrolled}
    wanted = list(names) if names else enrolled
    unknown = [n for n in wanted if unicodedata.normalize("NFC", n).casefold() not in by_key]
    if unknown:
        raise UsageError(f"not enrolled in {store.path}: {', '.join(unknown)} "
                         f"(enrolled: {', '.join(enrolled)})")
    chosen = list(dict.fromkeys(by_key[unicodedata.normalize("NFC", n).casefold()]
                                for n in wanted))
    splits, problems = [], []
    for name in chosen:
        samples = {s.id: s for s in store.stored_samples(name)}
        try:
            train_ids, held_ids = split_samples(list(samples), share, seed, name)
        except DataError as exc:
            problems.append(str(exc))
            continue
        splits.append(UserSplit(name, [samples[i] for i in train_ids],
                                [samples[i] for i in held_ids]))
    if problems:
        raise DataError("too few samples to personalize: " + "; ".join(problems) +
                        ". Enrol more photos (twinlock enroll NAME --images DIR --model MODEL_DIR)")
    return splits


def user_crops(samples: Sequence[StoredSample], size: int, zoom: float,
               template: str = DEFAULT_TEMPLATE) -> tuple[np.ndarray, int]:
    """Stored crops at ``size`` px, alignment ``zoom`` and ``template`` (re-framed where made
    otherwise); returns (crops, how many had to be re-framed)."""
    crops, reframed = [], 0
    for sample in samples:
        crop = sample.crop()
        fitted = fit_crop(crop, sample.crop_zoom, size, zoom, sample.crop_template, template)
        reframed += fitted is not crop
        crops.append(fitted)
    return np.stack(crops), reframed


def personal_config(general: TrainConfig, opts: PersonalizeOptions,
                    residents: Sequence[str]) -> TrainConfig:
    """The general run's config turned into the fine-tune's: same tower, crops, split and seed
    of the data; the bce twin (embeddings post-processed as the general model's); no early
    stop; residents never among the other people."""
    return dataclasses.replace(
        general,
        data=[str(Path(p).resolve()) for p in opts.negatives] if opts.negatives else general.data,
        loss="bce", unit_embeddings=general.l2_normalize, distill_weight=0.0,
        hard_negatives=0.0, epochs=opts.epochs, steps_per_epoch=opts.steps_per_epoch,
        batch_size=opts.batch_size, learning_rate=opts.learning_rate, patience=opts.epochs,
        augment=opts.augment, strategy="default", seed=opts.seed,
        exclude_identities=sorted({*general.exclude_identities, *residents}),
    )


def merge_residents(data: PreparedData, users: Sequence[UserSplit],
                    crops: Sequence[np.ndarray]) -> tuple[PreparedData, list[int]]:
    """``data`` with each resident's fine-tuning crops added as one more training identity;
    returns it and the residents' labels."""
    base, n = len(data.identities), len(data.labels)
    labels = [np.full(len(c), base + k, dtype=data.labels.dtype) for k, c in enumerate(crops)]
    sample_paths = [Path(f"enrolment-sample-{s.id}") for u in users for s in u.train]
    merged = PreparedData(
        crops=np.concatenate([data.crops, *crops]),
        labels=np.concatenate([data.labels, *labels]),
        identities=data.identities + [ENROLLED_PREFIX + u.name for u in users],
        paths=data.paths + sample_paths,
        train_idx=np.concatenate([data.train_idx, np.arange(n, n + len(sample_paths))]),
        val_idx=data.val_idx,
        report=data.report | {"resident_train_images": len(sample_paths)},
    )
    return merged, list(range(base, base + len(users)))


def _pick(labels: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random position in ``labels`` for each identity in ``ids``."""
    order = np.argsort(labels, kind="stable")
    known, starts, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    k = np.searchsorted(known, ids)
    return order[starts[k] + (rng.random(len(ids)) * sizes[k]).astype(np.int64)]


def personal_pairs(labels: np.ndarray, residents: Sequence[int], n_pairs: int,
                   rng: np.random.Generator, general_share: float = 1 / 3
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine-tuning pairs ``(a, b, same)`` as indices into ``labels``, shuffled, half same.

    ``general_share`` of them are other people's pairs (``sample_pairs``: the tower keeps
    separating strangers); of the rest, half are anchor/positive pairs (two crops of one
    resident, residents drawn evenly) and half put a resident's crop against someone else's:
    another resident's (half of these, when there are two or more residents) or another
    person's (people drawn evenly, then one of their images).
    """
    labels = np.asarray(labels)
    chosen = np.unique(np.asarray(residents))
    is_resident = np.isin(labels, chosen)
    mine, others = np.flatnonzero(is_resident), np.flatnonzero(~is_resident)
    n_general = int(np.floor(n_pairs * general_share + 0.5))
    n_same = (n_pairs - n_general + 1) // 2
    n_diff = n_pairs - n_general - n_same

    pa, pb, _ = sample_pairs(labels[mine], n_same, rng, same_fraction=1.0)
    who = chosen[rng.integers(0, len(chosen), n_diff)]
    anchors = _pick(labels, who, rng)
    n_other_residents = n_diff // 2 if len(chosen) > 1 else 0
    shift = rng.integers(0, max(len(chosen) - 1, 1), n_other_residents)
    own = np.searchsorted(chosen, who[:n_other_residents])
    other_resident = chosen[shift + (shift >= own)]
    strangers = np.unique(labels[others])
    other_person = strangers[rng.integers(0, len(strangers), n_diff - n_other_residents)]
    negatives = _pick(labels, np.concatenate([other_resident, other_person]), rng)
    ga, gb, gy = sample_pairs(labels[others], n_general, rng)

    a = np.concatenate([mine[pa], anchors, others[ga]])
    b = np.concatenate([mine[pb], negatives, others[gb]])
    y = np.concatenate([np.ones(n_same), np.zeros(n_diff), gy]).astype(np.float32)
    order = rng.permutation(len(y))
    return a[order], b[order], y[order]


# -- the command -----------------------------------------------------------------------------


def _general_run(run_dir: Path) -> tuple[TrainConfig, tuple[np.ndarray, float]]:
    """The general run's config and head; UsageError unless it is a finished run."""
    if not (run_dir / RUN_FILE).is_file():
        raise UsageError(f"--from {run_dir}: not a training run folder (no {RUN_FILE})")
    for needed in (TOWER_FILE, HEAD_FILE):
        if not (run_dir / needed).is_file():
            raise UsageError(f"--from {run_dir}: training has not finished ({needed} missing)")
    head = json.loads((run_dir / HEAD_FILE).read_text())
    return load_run_config(run_dir), (np.asarray(head["weights"], np.float32), float(head["bias"]))


def is_personalized(run_dir: Path) -> bool:
    """Whether a run folder was made by ``train --personalize``."""
    try:
        return "personalization" in json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return False


def _check_general_model(model_dir: Path, cfg: TrainConfig, run_dir: Path) -> None:
    meta = read_metadata(model_dir)
    if (meta.input_size, meta.alignment_zoom) != (cfg.input_size, cfg.zoom):
        raise UsageError(f"--general-model {model_dir} takes {meta.input_size} px crops at zoom "
                         f"{meta.alignment_zoom:g}; the run {run_dir} was trained on "
                         f"{cfg.input_size} px at zoom {cfg.zoom:g}")
    trained = meta.provenance.get("training")
    if trained is None:
        logger.warning("--general-model %s does not say which run it was exported from", model_dir)
    elif trained != json.loads((run_dir / RUN_FILE).read_text()):
        raise UsageError(f"--general-model {model_dir} was exported from another run "
                         f"({meta.provenance.get('run_dir', 'unknown')}), not from {run_dir}: "
                         "the comparison would not be with the model fine-tuned from")


def personalize(opts: PersonalizeOptions, argv: Sequence[str] | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Fine-tune, export and compare; returns the report (also NEW_RUN/personalize_report.json)."""
    from ..training.export import export

    general_cfg, general_head = _general_run(opts.from_run)
    if (opts.out / RUN_FILE).exists():
        raise UsageError(f"{opts.out} already holds a run; choose another --out")
    if opts.general_model is not None:
        _check_general_model(opts.general_model, general_cfg, opts.from_run)
    store_path = opts.db or default_path()
    if not store_path.is_file():
        raise UsageError(f"no enrolment store at {store_path}: enrol residents first (twinlock "
                         "enroll NAME --images DIR --model MODEL_DIR), or name it with --db")
    with EnrolmentStore(store_path) as store:
        residents = [u.name for u in store.users()]
        users = load_users(store, opts.users, opts.holdout_share, opts.seed)
    cfg = personal_config(general_cfg, opts, residents)
    data = prepare_data(cfg, progress)
    fitted = [user_crops(u.train, cfg.input_size, cfg.zoom, cfg.template) for u in users]
    merged, resident_labels = merge_residents(data, users, [c for c, _ in fitted])

    opts.out.mkdir(parents=True, exist_ok=True)
    general_dir = opts.general_model
    if general_dir is None:
        general_dir = opts.out / "general_model"
        logger.info("exporting the general run %s to %s for the comparison", opts.from_run,
                    general_dir)
        _export_general(opts.from_run, general_dir, argv, progress)
    general_meta = read_metadata(general_dir)
    general_id = general_meta.model_id
    block = {
        "from_run": str(opts.from_run.resolve()), "general_model": str(general_dir.resolve()),
        "general_model_id": general_id, "store": str(store_path.resolve()),
        "users": [u.name for u in users], "holdout_share": opts.holdout_share,
        "seed": opts.seed, "general_share": opts.general_share,
        "train_sample_ids": {u.name: [s.id for s in u.train] for u in users},
        "held_out_sample_ids": {u.name: [s.id for s in u.held_out] for u in users},
        "crops_reframed": int(sum(n for _, n in fitted)),
        "identities_excluded": data.report.get("identities_excluded", []),
    }
    atomic_write_json(opts.out / RUN_FILE, {
        "config": dataclasses.asdict(cfg), "crop_code_version": CROP_CODE_VERSION,
        "provenance": provenance(argv), "personalization": block,
        "data": merged.report | {"fingerprint": data_fingerprint(data.paths)},
    }, 0o644)
    (opts.out / "command.txt").write_text((provenance(argv)["command"] or "") + "\n")
    (opts.out / "val_identities.txt").write_text(
        "\n".join(sorted({data.identities[data.labels[i]] for i in data.val_idx})) + "\n")

    training = _fine_tune(cfg, merged, opts, general_head, resident_labels, progress)
    # quantized as the general model is, so the comparison is between like and like
    export_report = export(opts.out, opts.model_dir, general_meta.quantization or "int8",
                           argv=argv, progress=progress)

    report = compare(general_dir, opts.model_dir, users, data.crops[data.val_idx],
                     data.labels[data.val_idx], opts.seed, opts.max_impostor_pairs)
    report = {
        "note": default_note(opts.model_dir, store_path, opts.db is not None),
        **report,
        "personalized_from": block | {"training": {
            k: training.get(k) for k in ("epochs_run", "checkpoint_kept", "auc", "thresholds")},
            "export": {k: v for k, v in export_report.items() if k.endswith("auc")
                       or k in ("quantization", "auc_drop")}},
    }
    atomic_write_json(opts.out / REPORT_FILE, report, 0o644)
    return report


def _fine_tune(cfg: TrainConfig, data: PreparedData, opts: PersonalizeOptions,
               head: tuple[np.ndarray, float], residents: list[int],
               progress: bool) -> dict[str, Any]:
    from ..training.trainloop import FineTuneLoop  # TensorFlow only when training really starts

    train_labels = data.labels[data.train_idx]

    def sampler(epoch: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([cfg.seed, epoch, 71])
        return personal_pairs(train_labels, residents, cfg.steps_per_epoch * cfg.batch_size,
                              rng, opts.general_share)

    loop = FineTuneLoop(cfg, data, opts.out, progress, opts.from_run / TOWER_FILE, head, sampler)
    return loop.run(resume=False)


def default_note(model_dir: Path, store_path: Path, named_db: bool) -> str:
    db = f" --db {store_path}" if named_db else ""
    return (f"The general model stays the default. The personalized model in {model_dir} is "
            f"used only if you bundle it: twinlock bundle --model {model_dir} --key KEY --out "
            f"FILE{db}. Bundling makes its anchors from the stored crops of every enrolled "
            "resident (held-out photos included); nothing was written to the enrolment store. "
            "Residents enrolled later are not in its fine-tuning: re-run --personalize for them.")


# -- the comparison --------------------------------------------------------------------------


@dataclass
class _Pairs:
    """Probe/anchor pairs for the report: probes are held-out crops and other people's crops."""

    probe: np.ndarray
    anchor: np.ndarray
    same: np.ndarray
    user: np.ndarray  # index of the resident whose anchor it is
    kind: np.ndarray  # 0 genuine, 1 another resident's held-out sample, 2 another person


def report_pairs(anchor_owner: np.ndarray, probe_owner: np.ndarray, max_strangers: int,
                 rng: np.random.Generator) -> _Pairs:
    """Every (probe, anchor) pair: genuine when both belong to one resident; impostors are other
    residents' held-out probes and other people's (``probe_owner`` -1), the latter capped at
    ``max_strangers`` pairs by a seeded sample."""
    grid_p, grid_a = np.meshgrid(np.arange(len(probe_owner)), np.arange(len(anchor_owner)),
                                 indexing="ij")
    p, a = grid_p.ravel(), grid_a.ravel()
    owner, user = probe_owner[p], anchor_owner[a]
    kind = np.where(owner == user, 0, np.where(owner >= 0, 1, 2))
    stranger = np.flatnonzero(kind == 2)
    if len(stranger) > max_strangers:
        drop = np.setdiff1d(stranger, rng.choice(stranger, max_strangers, replace=False))
        keep = np.setdiff1d(np.arange(len(p)), drop)
        p, a, user, kind = p[keep], a[keep], user[keep], kind[keep]
    return _Pairs(p, a, (kind == 0).astype(np.float32), user, kind)


def _rates(scores: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, float]:
    accepted = scores >= threshold
    return {"threshold": float(threshold), "tar": float(accepted[same == 1].mean()),
            "far": float(accepted[same == 0].mean())}


def _export_general(run: Path, out: Path, argv: Sequence[str] | None, progress: bool) -> None:
    """Export the general run as the default model is made: full int8 if it keeps its accuracy,
    else ``mixed`` (a float embedding layer), the form the shipped model needed."""
    from ..training.export import ExportError, export

    try:
        export(run, out, "int8", argv=argv, progress=progress)
    except ExportError as exc:
        logger.info("general run in int8: %s; exporting it as mixed", exc)
        export(run, out, "mixed", argv=argv, progress=progress)


def compare(general_dir: Path, personal_dir: Path, users: Sequence[UserSplit],
            stranger_crops: np.ndarray, stranger_labels: np.ndarray, seed: int,
            max_impostor_pairs: int) -> dict[str, Any]:
    """Both exported models through the daemon's runtime on held-out samples only."""
    models = {"general": FaceEmbedder(general_dir), "personalized": FaceEmbedder(personal_dir)}
    anchor_owner = np.concatenate([np.full(len(u.train), k) for k, u in enumerate(users)])
    probe_owner = np.concatenate([np.full(len(u.held_out), k) for k, u in enumerate(users)]
                                 + [np.full(len(stranger_crops), -1)])
    pairs = report_pairs(anchor_owner, probe_owner, max_impostor_pairs,
                         np.random.default_rng([seed, 13]))
    if not (pairs.same == 0).any():
        raise DataError("no impostor pairs to measure: the negatives' validation people and the "
                        "other residents are missing")
    scores: dict[str, np.ndarray] = {}
    framed: dict[tuple[int, float, str], tuple[np.ndarray, np.ndarray]] = {}  # both models share one
    for name, embedder in models.items():
        key = (embedder.meta.input_size, embedder.meta.alignment_zoom,
               embedder.meta.alignment_template)
        if key not in framed:
            framed[key] = (
                np.concatenate([user_crops(u.train, *key)[0] for u in users]),
                np.concatenate([user_crops(u.held_out, *key)[0] for u in users]
                               + [stranger_crops]))
        anchor_crops, probe_crops = framed[key]
        anchors, probes = embedder.embed(anchor_crops), embedder.embed(probe_crops)
        scores[name] = embedder.pair_scores(probes[pairs.probe], anchors[pairs.anchor])
    thresholds = {f"{name} {key}": value for name, embedder in models.items()
                  for key, value in sorted(embedder.meta.thresholds.items())
                  if key.startswith(PAIR_PREFIX)}
    results: dict[str, Any] = {}
    for name, embedder in models.items():
        s = scores[name]
        default = embedder.meta.default_threshold
        results[name] = {
            "model": str(embedder.model_dir), "model_id": embedder.meta.model_id,
            "quantization": embedder.meta.quantization,
            "auc": metrics.roc_auc(s, pairs.same),
            # the price for strangers: the same export's AUC on the run's validation people
            "validation_auc_other_people": embedder.meta.metrics.get("validation", {}).get("auc"),
            "eer": metrics.equal_error_rate(s, pairs.same)[0],
            "tar_at_far_on_these_pairs": metrics.tar_at_far(s, pairs.same, REPORT_FARS),
            "at_calibrated_thresholds": {k: _rates(s, pairs.same, t)
                                         for k, t in thresholds.items()},
            "own_default": {"name": default} | _rates(s, pairs.same, embedder.meta.threshold),
            "per_user": {u.name: _rates(s[pairs.user == k], pairs.same[pairs.user == k],
                                        embedder.meta.threshold)
                         for k, u in enumerate(users)},
        }
    n_photos = sum(len(u.held_out) for u in users)
    better, reason = verdict(results["general"], results["personalized"], n_photos)
    return {
        "personalized_better": better, "reason": reason,
        "pairs": {"held_out_photos": n_photos,
                  "genuine": int((pairs.kind == 0).sum()), "impostor": int((pairs.kind > 0).sum()),
                  "impostor_other_residents": int((pairs.kind == 1).sum()),
                  "impostor_other_people": int((pairs.kind == 2).sum()),
                  "other_people": len(np.unique(stranger_labels)),
                  "other_people_images": len(stranger_crops)},
        "users": {u.name: {"samples": len(u.train) + len(u.held_out), "anchors": len(u.train),
                           "held_out": len(u.held_out)} for u in users},
        **results,
    }


def verdict(general: dict[str, Any], personal: dict[str, Any], n_photos: int) -> tuple[bool, str]:
    """Whether the personalized model is better for these residents, and why, in one sentence.

    Better means both:

    * at equal false-accept rates on these held-out pairs (FAR 1e-2 and 1e-3 where there are
      enough impostor pairs) it accepts no fewer genuine pairs, and its AUC is higher by at
      least ``AUC_MARGIN``. TAR differences within two standard errors counted over held-out
      photos (the pairs of one photo are not independent) are noise;
    * at its own calibrated default threshold (what a door uses unless told otherwise) it lets
      no more impostors through than the calibrated target or the general model does.

    When only the second fails, the reason names the least strict calibrated threshold of the
    personalized model that would keep false accepts in bounds, and what it accepts there.
    Anything else keeps the general model, which is the default anyway.
    """
    g, p = general["own_default"], personal["own_default"]
    tar_g, tar_p = general["tar_at_far_on_these_pairs"], personal["tar_at_far_on_these_pairs"]
    fars = [k for k in tar_g if k in tar_p]
    worse = [k for k in fars if tar_p[k] < tar_g[k] - _noise(tar_g[k], tar_p[k], n_photos)]
    ranks_better = not worse and personal["auc"] - general["auc"] >= AUC_MARGIN
    target = pair_rate(p["name"])
    allowed = max(g["far"], target if target is not None else g["far"])
    numbers = "; ".join(
        [f"TAR at FAR {k} on these pairs {tar_p[k]:.1%} vs {tar_g[k]:.1%}" for k in fars]
        + [f"AUC {personal['auc']:.4f} vs {general['auc']:.4f}",
           f"at its own {p['name']} threshold TAR {p['tar']:.1%} (general {g['tar']:.1%} at "
           f"its own) and FAR {p['far']:.3%} (general {g['far']:.3%}"
           + (f", target {target:.3%})" if target is not None else ")"),
           f"{n_photos} held-out photos"])
    if p["far"] > allowed:
        better, why = False, "its calibrated threshold lets more impostors through"
        if ranks_better:
            why += _stricter_hint(personal, allowed, g["tar"])
    elif worse:
        better = False
        why = f"at equal false accepts it accepts fewer genuine pairs (FAR {', '.join(worse)})"
    elif not ranks_better:
        better, why = False, "no clear gain"
    else:
        better = True
        why = ("at equal false accepts it accepts as many or more genuine pairs and ranks them "
               "better, and its threshold keeps false accepts in bounds")
    return better, f"{why}: {numbers}"


def _stricter_hint(personal: dict[str, Any], allowed: float, general_tar: float) -> str:
    """Where a stricter calibrated threshold of the personalized model would stand."""
    own = personal["own_default"]["threshold"]
    for key, rates in sorted(personal["at_calibrated_thresholds"].items(),
                             key=lambda item: item[1]["threshold"]):
        if (key.startswith("personalized far_") and rates["threshold"] > own
                and rates["far"] <= allowed):
            name = key.split(" ", 1)[1]
            return (f" (it ranks held-out pairs better, though: at its {name} threshold it "
                    f"accepts {rates['tar']:.1%} of genuine pairs at FAR {rates['far']:.3%}, the "
                    f"general model {general_tar:.1%} at its own; if you bundle it, set "
                    f"verification.threshold_name: {name})")
    return " (it ranks held-out pairs better, though, but no stricter calibrated threshold "\
        "keeps false accepts in bounds)"


def _noise(a: float, b: float, n: int) -> float:
    """Two standard errors of the difference of two rates measured on ``n`` units."""
    return 2.0 * float(np.sqrt((a * (1.0 - a) + b * (1.0 - b)) / max(n, 1)))
