"""LiteRT interpreter loading with a logged fallback chain, and a small typed wrapper.

The door runs ``ai_edge_litert`` (the maintained successor of tflite-runtime). Older Pis may only
have ``tflite_runtime``; a desktop may only have TensorFlow. The import happens here, lazily, so
importing the daemon never pulls in TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError, RuntimeBackendError

logger = logging.getLogger(__name__)

#: backend name -> module that provides ``Interpreter``
BACKENDS: dict[str, str] = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    # the module behind ``tf.lite.Interpreter``: ``tensorflow.lite`` imported by name is the
    # internal package and has no ``Interpreter`` attribute
    "tensorflow": "tensorflow.lite.python.interpreter",
}
DEFAULT_CHAIN: tuple[str, ...] = ("ai_edge_litert", "tflite_runtime", "tensorflow")


def interpreter_class(chain: Sequence[str] = DEFAULT_CHAIN) -> tuple[str, Any]:
    """First importable ``Interpreter`` class along ``chain``: (backend name, class)."""
    failures: list[str] = []
    for name in chain:
        if name not in BACKENDS:
            raise RuntimeBackendError(f"unknown LiteRT backend {name!r}; known: {sorted(BACKENDS)}")
        try:
            module = importlib.import_module(BACKENDS[name])
            cls = module.Interpreter
        except Exception as exc:  # noqa: BLE001 - ImportError, a broken native library, no Interpreter class
            failures.append(f"{name}: {exc.__class__.__name__}: {exc}")
            logger.info("LiteRT backend %s unavailable (%s)", name, exc)
            continue
        return name, cls
    raise RuntimeBackendError("no LiteRT backend could be imported: " + "; ".join(failures))


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.dtype in (np.int8, np.uint8, np.int16)


def _info(detail: dict[str, Any]) -> TensorInfo:
    scale, zero = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        index=int(detail["index"]),
        name=str(detail["name"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero),
    )


class TFLiteModel:
    """A loaded .tflite model: feed numpy in, get float32 numpy out (dequantized if needed)."""

    def __init__(
        self, path: str | Path, num_threads: int = 1, chain: Sequence[str] = DEFAULT_CHAIN
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        self.backend, cls = interpreter_class(chain)
        try:
            self._interpreter = cls(model_path=str(self.path), num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except Exception as exc:
            raise ModelError(f"{self.path}: cannot load with {self.backend}: {exc}") from exc
        self.inputs = [_info(d) for d in self._interpreter.get_input_details()]
        self.outputs = [_info(d) for d in self._interpreter.get_output_details()]
        logger.debug("loaded %s with %s (%d threads)", self.path.name, self.backend, num_threads)

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """One invocation. Inputs must already have the model's input dtype and shape."""
        if len(arrays) != len(self.inputs):
            raise ModelError(f"{self.path.name}: expects {len(self.inputs)} inputs, got {len(arrays)}")
        try:
            for info, array in zip(self.inputs, arrays, strict=True):
                if array.dtype != info.dtype:
                    array = _quantize(array, info)
                self._interpreter.set_tensor(info.index, array)
            self._interpreter.invoke()
            return [self._dequantize(info) for info in self.outputs]
        except ModelError:
            raise
        except Exception as exc:
            raise RuntimeBackendError(f"{self.path.name}: inference failed: {exc}") from exc

    def first_quantize_scale(self) -> float | None:
        """Scale of the QUANTIZE op fed by the first input, or None if there is none.

        A model with float input and an int8 body rounds its pixels there; export checks that
        the scale is 1, so whole-number pixels pass unchanged.
        """
        first = self.inputs[0].index
        for op in self._interpreter._get_ops_details():
            if op["op_name"] == "QUANTIZE" and first in list(op["inputs"]):
                out = int(op["outputs"][0])
                try:  # ai-edge-litert and TF >= 2.16 take a subgraph index, older ones do not
                    details = self._interpreter._get_tensor_details(out, 0)
                except TypeError:
                    details = self._interpreter._get_tensor_details(out)
                return float(details["quantization"][0])
        return None

    def _dequantize(self, info: TensorInfo) -> np.ndarray:
        raw = self._interpreter.get_tensor(info.index)
        if info.quantized:
            return (raw.astype(np.float32) - info.zero_point) * info.scale
        return raw.astype(np.float32, copy=False)


def _quantize(array: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Convert float input to a quantized input tensor (for models with int8 float inputs)."""
    if info.quantized and np.issubdtype(array.dtype, np.floating):
        q = np.round(array / info.scale + info.zero_point)
        limits = np.iinfo(info.dtype)
        return np.clip(q, limits.min, limits.max).astype(info.dtype)
    return array.astype(info.dtype)
