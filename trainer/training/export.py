"""``twinlock export``: a run folder -> a model folder the device loads (see daemon/recognition/model.py).

The tower becomes a full-integer int8 TFLite model (uint8 pixels in) calibrated on real training
crops, or with ``mixed`` int8 everywhere except the last fully connected layer (the embedding
projection), which stays float32: towers whose embedding dimensions vary on very different scales
lose too much there in int8 (measured: AUC 0.959 -> 0.927 with it, 0.959 without). The head, input size, alignment, detector, thresholds, provenance and metrics go to
model.json. Export checks itself: the int8 model must rank validation pairs as well as the Keras
model (AUC drop <= 0.01, run through the daemon's own runtime), and the thresholds are
re-calibrated on the int8 scores, because those are the scores the door will see.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from twinlock.daemon.errors import TwinLockError, UsageError
from twinlock.daemon.faces.assets import file_sha256
from twinlock.daemon.faces.pipeline import DetectorSpec
from twinlock.daemon.recognition import thresholds as names
from twinlock.daemon.recognition.model import TOWER_FILE, FaceEmbedder, ModelMetadata

from ..data.crops import CROP_CODE_VERSION
from ..stats import metrics
from .embed import head_pair_scores, keras_embed
from .model_assets import add_assets
from .prepare import model_input, prepare_data, source_groups, validation_pairs
from .provenance import provenance
from .runs import HEAD_FILE, METRICS_FILE, RUN_FILE, load_run_config
from .runs import TOWER_FILE as KERAS_TOWER_FILE

logger = logging.getLogger(__name__)

MAX_AUC_DROP = 0.01
QUANTIZATIONS = ("int8", "mixed", "float32")
DEFAULT_THRESHOLD = names.DEFAULT_PAIR


class ExportError(TwinLockError):
    """The exported model does not match the trained one closely enough."""


def convert_tower(tower: Any, representative: np.ndarray, quantization: str) -> bytes:
    """Keras tower -> TFLite bytes.

    int8: full-integer, uint8 input, int8 output. mixed: the same int8 body, but the fully
    connected layers stay float32 (so do the input and output: the converter's selective
    quantization keeps float interfaces; the first op quantizes the pixels exactly, scale 1).
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise UsageError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, "
                         f"not {quantization!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(tower)
    if quantization == "float32":
        return _convert(converter.convert)
    # The calibration data sets the input's quantisation from its min and max; one sample
    # stretched to the full 0..255 range makes that exactly scale 1, so integer pixels map to
    # integer levels without rounding.
    stretched = representative[0].astype(np.float32)
    lo, hi = stretched.min(), stretched.max()
    stretched = (stretched - lo) * (255.0 / max(hi - lo, 1.0))
    stretched.flat[0], stretched.flat[1] = 0.0, 255.0

    def samples():
        yield [stretched[None]]
        for x in representative:
            yield [x[None].astype(np.float32)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if quantization == "int8":
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
        return _convert(converter.convert)
    def selective() -> bytes:
        debugger = tf.lite.experimental.QuantizationDebugger(  # converts (and prints) here
            converter=converter, debug_dataset=samples,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_ops=["FULLY_CONNECTED"]))
        return debugger.get_nondebug_quantized_model()

    return _convert(selective)


def _convert(convert: Any) -> bytes:
    with contextlib.redirect_stdout(io.StringIO()) as chatter:  # Keras prints a signature dump
        model = convert()
    logger.debug("converter output: %s", chatter.getvalue())
    return model


def _check_pixel_input(embedder: FaceEmbedder, quantization: str) -> None:
    """The device feeds raw pixels; they must reach the int8 body without rounding.

    int8: the input is uint8 with scale 1 and zero point 0. mixed: the input is float32 and the
    op that quantizes it has scale 1 (pixels 0..255 -> levels -128..127 exactly).
    """
    info = embedder.tower.inputs[0]
    if quantization == "int8":
        if info.dtype != np.uint8 or abs(info.scale - 1.0) > 1e-6 or info.zero_point != 0:
            raise ExportError(f"int8 tower input is {info.dtype} scale {info.scale} zero "
                              f"{info.zero_point}; expected uint8 pixels with scale 1, zero point 0")
        return
    scale = embedder.tower.first_quantize_scale()
    if info.dtype != np.float32 or scale is None or abs(scale - 1.0) > 1e-6:
        raise ExportError(f"mixed tower input is {info.dtype}, first quantize scale {scale}; "
                          "expected float32 pixels quantized with scale 1")


def export(run_dir: Path, out_dir: Path, quantization: str = "int8",
           argv: Sequence[str] | None = None, progress: bool = True,
           max_auc_drop: float = MAX_AUC_DROP) -> dict[str, Any]:
    """Write the model folder; returns the export report (also saved as export_report.json)."""
    import keras

    from . import keras_layers as _registered_layers  # noqa: F401  (custom layers for load_model)

    if not (run_dir / RUN_FILE).is_file():
        raise UsageError(f"{run_dir}: not a training run folder (no {RUN_FILE})")
    for needed in (KERAS_TOWER_FILE, HEAD_FILE):
        if not (run_dir / needed).is_file():
            raise UsageError(f"{run_dir}: training has not finished ({needed} missing)")
    cfg = load_run_config(run_dir)
    trained_with = json.loads((run_dir / RUN_FILE).read_text()).get("crop_code_version")
    if trained_with != CROP_CODE_VERSION:
        raise ExportError(f"{run_dir} was trained on crops made by face code version "
                          f"{trained_with}, this build makes version {CROP_CODE_VERSION}: the "
                          "device would see faces differently from training; retrain")
    data = prepare_data(cfg, progress)
    tower = keras.models.load_model(run_dir / KERAS_TOWER_FILE, compile=False)
    head = json.loads((run_dir / HEAD_FILE).read_text())
    weights, bias = np.asarray(head["weights"], dtype=np.float32), float(head["bias"])

    rng = np.random.default_rng([cfg.seed, 11])
    rep_idx = rng.choice(data.train_idx, min(300, len(data.train_idx)), replace=False)
    representative = model_input(data, cfg, rep_idx).astype(np.float32)
    # flipped crops too: the device runs the tower on mirror images when flip averaging
    representative = np.concatenate([representative, representative[:, :, ::-1]])
    logger.info("converting the tower to %s TFLite", quantization)
    tflite_bytes = convert_tower(tower, representative, quantization)

    run_metrics = json.loads((run_dir / METRICS_FILE).read_text()) \
        if (run_dir / METRICS_FILE).is_file() else {}
    meta = ModelMetadata(
        input_size=cfg.input_size, channels=cfg.channels, embedding_dim=int(weights.shape[0]),
        head_weights=weights, head_bias=bias, alignment_zoom=cfg.zoom,
        alignment_template=cfg.template,
        flip_average=cfg.flip_average, l2_normalize=cfg.l2_normalize,
        detector=DetectorSpec(**cfg.detector), quantization=quantization,
        architecture=cfg.architecture, default_threshold=DEFAULT_THRESHOLD,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        (staging / TOWER_FILE).write_bytes(tflite_bytes)
        meta.model_id = file_sha256(staging / TOWER_FILE)[:16]
        # the detector and face mesh travel with the model (sha256 + licence in model.json)
        if meta.detector.type == "blazeface":
            meta.assets = add_assets(staging, meta.detector)
            # the door uses the folder's copy: a training host's own path means nothing there
            meta.detector = replace(meta.detector, model_path=None)
        (staging / "model.json").write_text(json.dumps(meta.to_json(), indent=2))

        # parity and calibration on validation identities, through the daemon's runtime
        val = data.val_idx
        ia, ib, y = validation_pairs(data.labels[val], cfg.val_different_pairs, cfg.seed,
                                     source_groups(data, val))
        keras_emb = keras_embed(tower, data.crops[val], cfg.channels, cfg.flip_average,
                                cfg.l2_normalize)
        keras_scores = head_pair_scores(keras_emb, ia, ib, weights, bias)
        embedder = FaceEmbedder(staging, num_threads=1)
        if quantization != "float32":
            _check_pixel_input(embedder, quantization)
        lite_emb = embedder.embed(data.crops[val])
        lite_scores = embedder.pair_scores(lite_emb[ia], lite_emb[ib])
        keras_auc, lite_auc = metrics.roc_auc(keras_scores, y), metrics.roc_auc(lite_scores, y)
        cos = np.sum(keras_emb * lite_emb, 1) / np.maximum(
            np.linalg.norm(keras_emb, axis=1) * np.linalg.norm(lite_emb, axis=1), 1e-12)
        calibrated = metrics.calibrate_thresholds(lite_scores, y)
        thresholds = {(k if k == names.EER else names.PAIR_PREFIX + k): v
                      for k, v in calibrated.items()}
        if DEFAULT_THRESHOLD not in thresholds:
            looser = names.pair_name(1e-2)
            meta.default_threshold = looser if looser in thresholds else names.EER
        report: dict[str, Any] = {
            "quantization": quantization,
            "tflite_bytes": len(tflite_bytes),
            "keras_val_auc": keras_auc,
            f"{quantization}_val_auc": lite_auc,
            "auc_drop": keras_auc - lite_auc,
            "max_auc_drop": max_auc_drop,
            "embedding_cosine_keras_vs_tflite": {"mean": float(cos.mean()), "min": float(cos.min())},
            "val_pairs": len(y), "val_same_pairs": int(y.sum()),
            "runtime_backend": embedder.tower.backend,
        }
        logger.info("parity: keras AUC %.4f, %s AUC %.4f (drop %.4f)", keras_auc, quantization,
                    lite_auc, keras_auc - lite_auc)
        meta.thresholds = thresholds
        meta.metrics = {"validation": metrics.summarize(lite_scores, y, thresholds.get(
            meta.default_threshold)), "export": report, "training": run_metrics}
        meta.provenance = provenance(argv) | {"run_dir": str(run_dir.resolve()),
                                              "training": json.loads((run_dir / RUN_FILE).read_text())}
        (staging / "model.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n")
        (staging / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
        from ..stats.plots import plot_roc

        far_k, tar_k, _ = metrics.roc_curve(keras_scores, y)
        far_l, tar_l, _ = metrics.roc_curve(lite_scores, y)
        plot_roc(staging / "parity_roc.png", {
            f"keras float32 (AUC {keras_auc:.4f})": (far_k, tar_k),
            f"TFLite {quantization} (AUC {lite_auc:.4f})": (far_l, tar_l),
        }, title="Export parity on validation identities")
        if keras_auc - lite_auc > max_auc_drop:
            hint = " (try --quantization mixed)" if quantization == "int8" else ""
            raise ExportError(f"{quantization} model loses {keras_auc - lite_auc:.4f} AUC against "
                              f"the Keras model (allowed {max_auc_drop}); not exported{hint}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.replace(out_dir)
        out_dir.chmod(0o755)  # mkdtemp made it 0700; the model itself is not secret
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return report
