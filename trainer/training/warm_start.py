"""``--init-from MODEL_DIR``: start a compact tower from an exported compact model's weights.

Why: a student distilled from scratch needs about 100,000 views (over an hour on 2 cores) just
to reach what the shipped ``models/compact`` already scores, so online distillation continues
from it instead. Only its exported ``tower.tflite`` is kept in the repository, so the weights are
read back from that file: each convolution's int8 kernel and int32 bias are dequantised with
their own per-channel scales (TFLite has folded every batch norm into the convolution before
it), and the float embedding layer is copied as it is.

The Keras tower keeps its batch norms so it can go on training. Each is set so that, in
inference, it adds the folded bias and nothing else, and so that its *batch* statistics on
real crops match its moving ones: otherwise the first training step, which normalises by batch
statistics, would throw away what the folded kernels know. ``warm_start`` checks the result
against the TFLite file itself on the same crops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from twinlock.daemon.errors import DataError
from twinlock.daemon.recognition.model import TOWER_FILE, read_metadata
from twinlock.daemon.recognition.scoring import unit
from twinlock.daemon.runtime import interpreter_class

logger = logging.getLogger(__name__)

#: the ops whose constant inputs are the tower's weights, in the order the tower runs them
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


#: (op, kernel, bias) of each weight op of a tower file, in run order (see ``_weights``)
Weights = list[tuple[str, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class InitModel:
    """What an exported compact model fixes about a tower started from it, and its weights."""

    model_dir: Path
    tower_file: Path
    model_id: str
    input_size: int
    template: str
    zoom: float
    width: int
    embedding_dim: int
    weights: Weights = field(repr=False, compare=False)


def read_init_model(model_dir: Path) -> InitModel:
    """The compact tower in ``model_dir`` (a ``twinlock export`` folder, read and checked by the
    daemon's own ``read_metadata``), with its weights read from the file once."""
    meta = read_metadata(model_dir)
    if meta.architecture != "compact":
        raise DataError(f"--init-from {model_dir}: a {meta.architecture!r} tower; only "
                        "compact towers can start a compact student")
    tower_file = model_dir / TOWER_FILE
    weights = _weights(tower_file)
    return InitModel(model_dir=model_dir, tower_file=tower_file, model_id=meta.model_id,
                     input_size=meta.input_size, template=meta.alignment_template,
                     zoom=meta.alignment_zoom, width=int(weights[0][1].shape[0]),
                     embedding_dim=meta.embedding_dim, weights=weights)


def _weights(tower_file: Path) -> Weights:
    """(op, kernel, bias) of every weight op, in run order, dequantised to float32 and in TFLite's
    layouts: conv ``[out, kh, kw, in]``, depthwise ``[1, kh, kw, channels]``, dense
    ``[out, in]``."""
    _, cls = interpreter_class()
    interpreter = cls(model_path=str(tower_file), num_threads=1)
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}

    def value(index: int) -> np.ndarray:
        detail = details[index]
        raw = interpreter.get_tensor(index)
        if raw.dtype == np.float32:
            return raw.copy()
        q = detail["quantization_parameters"]
        scales, zeros = q["scales"], q["zero_points"]
        shape = [1] * raw.ndim
        if raw.ndim and len(scales) > 1:
            shape[q["quantized_dimension"]] = len(scales)
        return ((raw.astype(np.float32) - zeros.reshape(shape)) *
                scales.astype(np.float32).reshape(shape))

    ops = [op for op in interpreter._get_ops_details()  # private, but the only op-graph API
           if op["op_name"] in WEIGHT_OPS]
    return [(op["op_name"], value(int(op["inputs"][1])), value(int(op["inputs"][2])))
            for op in ops]


def warm_start(tower: keras.Model, init: InitModel, crops: np.ndarray) -> float:
    """Set ``tower``'s weights from ``init``'s file; returns the worst cosine similarity between
    the Keras tower's and the TFLite file's embeddings of ``crops`` (uint8, the tower's input).

    ``crops`` also set the batch norms' statistics, so they should be training faces as the
    student will see them.
    """
    weights = init.weights
    convs = [layer for layer in tower.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    dense = [layer for layer in tower.layers if isinstance(layer, keras.layers.Dense)]
    if [op for op, _, _ in weights] != (
            ["DEPTHWISE_CONV_2D" if isinstance(c, keras.layers.DepthwiseConv2D) else "CONV_2D"
             for c in convs] + ["FULLY_CONNECTED"] * len(dense)):
        raise DataError(f"--init-from {init.model_dir}: its layers do not match the tower's")
    norms = [_norm_after(tower, conv) for conv in convs]
    for conv, norm, (_, kernel, bias) in zip(convs, norms, weights, strict=False):
        kernel = (kernel[0][..., None] if isinstance(conv, keras.layers.DepthwiseConv2D)
                  else kernel.transpose(1, 2, 3, 0))
        if kernel.shape != tuple(conv.kernel.shape):
            raise DataError(f"--init-from {init.model_dir}: {conv.name} is {conv.kernel.shape}, "
                            f"the file's {kernel.shape}")
        conv.set_weights([kernel])
        eps = norm.epsilon
        # inference: (x - 0) / sqrt(1 + eps) * sqrt(1 + eps) + bias = x + bias
        norm.set_weights([np.full_like(bias, np.sqrt(1 + eps)), bias,
                          np.zeros_like(bias), np.ones_like(bias)])
    _, kernel, bias = weights[-1]
    dense[-1].set_weights([kernel.T, bias])
    # each convolution's output on real crops (the norms add their bias only, so this is the
    # folded network), then moving statistics = those, gamma and beta undoing them
    probe = keras.Model(tower.inputs, [conv.output for conv in convs])
    outputs = probe.predict(crops.astype(np.float32), batch_size=64, verbose=0)
    for norm, out, (_, _, bias) in zip(norms, outputs, weights, strict=False):
        mean = out.mean(axis=(0, 1, 2))
        var = out.var(axis=(0, 1, 2))
        norm.set_weights([np.sqrt(var + norm.epsilon), mean + bias, mean, var])
    return embedding_parity(tower, init, crops)


def _norm_after(tower: keras.Model, conv: keras.layers.Layer) -> keras.layers.BatchNormalization:
    """The batch norm that follows ``conv`` in the compact tower."""
    index = tower.layers.index(conv)
    norm = tower.layers[index + 1]
    if not isinstance(norm, keras.layers.BatchNormalization):
        raise DataError(f"{tower.name}: {conv.name} is not followed by a batch norm")
    return norm


def embedding_parity(tower: keras.Model, init: InitModel, crops: np.ndarray) -> float:
    """Worst cosine similarity between the Keras and TFLite embeddings of ``crops``."""
    from twinlock.daemon.runtime import TFLiteModel

    runtime = TFLiteModel(init.tower_file, num_threads=1)
    dtype = runtime.inputs[0].dtype
    lite = np.concatenate([runtime.run(crop[None].astype(dtype))[0] for crop in crops])
    keras_out = np.asarray(tower.predict(crops.astype(np.float32), batch_size=64, verbose=0))
    lite, keras_out = unit(lite, axis=1), unit(keras_out, axis=1)
    worst = float(np.min(np.sum(lite * keras_out, axis=1)))
    logger.info("started from %s (%s): worst cosine to its TFLite embeddings %.4f over %d crops",
                init.model_dir, init.model_id, worst, len(crops))
    return worst
