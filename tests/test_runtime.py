"""Tests for twinlock.daemon.runtime: the LiteRT fallback chain and the TFLiteModel wrapper.

The door must say clearly why a model cannot run (missing file, broken file, wrong call) and
which backends it tried; it runs the real BlazeFace model here, not a stand-in.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twinlock.daemon import runtime
from twinlock.daemon.errors import ModelError, RuntimeBackendError, TwinLockError
from twinlock.daemon.faces.blazeface import find_model_file
from twinlock.daemon.runtime import TFLiteModel, interpreter_class

MISSING_MODULE = "twinlock_no_such_backend_module.interpreter"


@pytest.fixture(scope="module")
def blazeface_file() -> Path:
    return find_model_file("face_detection_short_range.tflite")


@pytest.fixture
def bogus_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register backends whose modules do not exist, next to the real ones."""
    monkeypatch.setitem(runtime.BACKENDS, "bogus", MISSING_MODULE)
    monkeypatch.setitem(runtime.BACKENDS, "bogus2", "twinlock_another_missing_module")


def test_default_chain_loads_ai_edge_litert() -> None:
    name, cls = interpreter_class()
    assert name == "ai_edge_litert"
    assert cls.__name__ == "Interpreter"


def test_fallback_to_next_backend_is_logged(
    bogus_backends: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=runtime.logger.name)
    name, cls = interpreter_class(("bogus", "ai_edge_litert"))
    assert name == "ai_edge_litert"
    import ai_edge_litert.interpreter

    assert cls is ai_edge_litert.interpreter.Interpreter
    messages = [r.getMessage() for r in caplog.records if r.name == runtime.logger.name]
    assert any("bogus" in m and "unavailable" in m for m in messages), messages
    assert not any("ai_edge_litert" in m and "unavailable" in m for m in messages)


def test_all_backends_failing_lists_each_failure(bogus_backends: None) -> None:
    with pytest.raises(RuntimeBackendError) as caught:
        interpreter_class(("bogus", "bogus2"))
    message = str(caught.value)
    assert "bogus:" in message and "bogus2:" in message
    assert "twinlock_no_such_backend_module" in message
    assert "twinlock_another_missing_module" in message
    assert isinstance(caught.value, RuntimeError)  # stdlib type still catchable


def test_module_without_interpreter_is_a_logged_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend module that imports but has no ``Interpreter`` is skipped like a missing one."""
    monkeypatch.setitem(runtime.BACKENDS, "hollow", "json")
    caplog.set_level(logging.DEBUG, logger=runtime.logger.name)
    assert interpreter_class(("hollow", "ai_edge_litert"))[0] == "ai_edge_litert"
    assert any("hollow" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeBackendError, match="hollow: AttributeError"):
        interpreter_class(("hollow",))


def test_tensorflow_fallback_runs_blazeface(blazeface_file: Path) -> None:
    """The last resort of the chain must really work (a desktop with TensorFlow, no LiteRT).

    Runs in a child process: importing TensorFlow takes seconds and must stay out of the
    daemon-only checks in this process.
    """
    code = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('ignore')\n"
        "from twinlock.daemon.runtime import TFLiteModel, interpreter_class\n"
        "name, cls = interpreter_class(('tensorflow',))\n"
        f"model = TFLiteModel({str(blazeface_file)!r}, chain=('tensorflow',))\n"
        "out = model.run(np.zeros(model.inputs[0].shape, np.float32))\n"
        "print(name, model.backend, sorted(o.shape for o in out))\n"
    )
    if importlib.util.find_spec("tensorflow") is None:  # the [trainer] extra; absent on a Pi
        pytest.skip("tensorflow is not installed")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == (
        "tensorflow tensorflow [(1, 896, 1), (1, 896, 16)]"
    )


def test_unknown_backend_name() -> None:
    with pytest.raises(RuntimeBackendError, match="unknown LiteRT backend 'nonesuch'"):
        interpreter_class(("nonesuch",))


def test_model_uses_the_chain_it_is_given(blazeface_file: Path, bogus_backends: None) -> None:
    model = TFLiteModel(blazeface_file, chain=("bogus", "ai_edge_litert"))
    assert model.backend == "ai_edge_litert"
    with pytest.raises(RuntimeBackendError):
        TFLiteModel(blazeface_file, chain=("bogus",))


def test_missing_model_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.tflite"
    with pytest.raises(ModelError, match="absent.tflite"):
        TFLiteModel(path)
    with pytest.raises(ModelError):
        TFLiteModel(tmp_path)  # a folder is not a model file either


@pytest.mark.parametrize("content", [b"", b"definitely not a flatbuffer\n" * 20])
def test_garbage_model_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="garbage.tflite") as caught:
        TFLiteModel(path)
    assert isinstance(caught.value, TwinLockError)


def test_runs_blazeface(blazeface_file: Path) -> None:
    model = TFLiteModel(blazeface_file, num_threads=1)
    assert len(model.inputs) == 1
    (info,) = model.inputs
    assert info.shape == (1, 128, 128, 3) and info.dtype == np.float32 and not info.quantized
    outputs = model.run(np.zeros(info.shape, np.float32))
    shapes = sorted(o.shape for o in outputs)
    assert shapes == [(1, 896, 1), (1, 896, 16)]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in outputs)
    # deterministic: the same input gives the same output
    again = model.run(np.zeros(info.shape, np.float32))
    for a, b in zip(outputs, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_wrong_number_of_inputs(blazeface_file: Path) -> None:
    model = TFLiteModel(blazeface_file)
    x = np.zeros(model.inputs[0].shape, np.float32)
    with pytest.raises(ModelError, match="expects 1 inputs, got 2"):
        model.run(x, x)
    with pytest.raises(ModelError, match="expects 1 inputs, got 0"):
        model.run()


def test_wrong_input_shape_is_a_backend_error(blazeface_file: Path) -> None:
    model = TFLiteModel(blazeface_file)
    with pytest.raises(RuntimeBackendError, match="face_detection_short_range.tflite"):
        model.run(np.zeros((1, 64, 64, 3), np.float32))


def test_quantize_helper_rounds_and_clips() -> None:
    info = runtime.TensorInfo(0, "x", (1, 3), np.dtype(np.int8), scale=0.5, zero_point=-10)
    q = runtime._quantize(np.array([[0.0, 1.26, 1000.0]], np.float32), info)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, [[-10, -7, 127]])


@pytest.mark.data
def test_the_default_tower_runs_on_this_platform(examples_dir: Path) -> None:
    """models/default's int8 dlib tower through this platform's LiteRT (the aarch64 pass runs
    its other daemon tests on models/compact): two photos of Obama score as one person at the
    model's one-resident door threshold, Obama against Biden and against Miranda do not."""
    from conftest import REPO

    from twinlock.daemon.faces.images import load_image
    from twinlock.daemon.recognition.fusion import decision_settings
    from twinlock.daemon.recognition.model import FaceEmbedder

    embedder = FaceEmbedder(REPO / "models" / "default")
    meta = embedder.meta
    pipeline = meta.face_pipeline(meta.detector.build())
    emb = {}
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg", "lin-manuel-miranda.png"):
        face, _ = pipeline.primary(load_image(examples_dir / name))
        assert face is not None, name
        emb[name] = embedder.embed(face.crop)[0]
    threshold, _, _ = decision_settings(meta.thresholds, meta.default_threshold, meta.metrics,
                                        residents=1)
    same = float(embedder.scores(emb["obama.jpg"], emb["obama2.jpg"][None])[0])
    others = embedder.scores(emb["obama.jpg"], np.stack([emb["biden.jpg"],
                                                         emb["lin-manuel-miranda.png"]]))
    assert same >= threshold, (same, threshold)
    assert float(others.max()) < 0.5, others
