"""The twin's own Keras layers, registered by name so ``keras.models.load_model`` finds them.

Their own module, below the towers (``model.py``) and dlib's imported ResNet
(``dlib_resnet.py``), which both use them: importing this module is what registers them before
a saved tower or twin is loaded. Registered names (``twinlock>L1Distance``...) are what saved
files refer to, so a layer keeps its class name.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="twinlock")
class L1Distance(layers.Layer):
    """Element-wise |a - b|: the paper's component-wise L1 distance between twin embeddings."""

    def call(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.abs(a - b)

    def compute_output_shape(self, a_shape: Any, b_shape: Any) -> Any:
        return a_shape


@keras.saving.register_keras_serializable(package="twinlock")
class PadChannels(layers.Layer):
    """Append ``extra`` zero channels (NHWC): dlib's ``add_prev`` zero-fills a residual
    shortcut that has fewer channels than its block (the imported ResNet has no 1x1
    projections)."""

    def __init__(self, extra: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra = int(extra)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, self.extra]])

    def compute_output_shape(self, shape: Any) -> Any:
        return (*shape[:-1], None if shape[-1] is None else shape[-1] + self.extra)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"extra": self.extra}


@keras.saving.register_keras_serializable(package="twinlock")
class EuclideanDistance(layers.Layer):
    """||a - b||_2 per row, shape (batch, 1) (the contrastive loss works on this distance)."""

    def call(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.sqrt(tf.reduce_sum(tf.square(a - b), axis=1, keepdims=True) + 1e-12)

    def compute_output_shape(self, a_shape: Any, b_shape: Any) -> Any:
        return (a_shape[0], 1)


@keras.saving.register_keras_serializable(package="twinlock")
class CosFaceLogits(layers.Layer):
    """Additive-margin softmax logits (CosFace): ``s * (cos(theta_y) - m)`` for the true class.

    Trains the tower as an identity classifier whose embeddings separate people by angle; the
    twin's L1 head is fitted on top afterwards.
    """

    def __init__(self, n_classes: int, scale: float = 20.0, margin: float = 0.2, **kwargs: Any):
        super().__init__(**kwargs)
        self.n_classes, self.scale, self.margin = n_classes, scale, margin

    def build(self, input_shape: Any) -> None:
        self.w = self.add_weight(
            name="class_centres", shape=(input_shape[-1], self.n_classes),
            initializer="glorot_uniform",
        )

    def call(self, embeddings: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        cos = tf.matmul(tf.math.l2_normalize(embeddings, axis=1),
                        tf.math.l2_normalize(self.w, axis=0))
        onehot = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), self.n_classes)
        return self.scale * (cos - self.margin * onehot)

    def compute_output_shape(self, embeddings_shape: Any, labels_shape: Any) -> Any:
        return (embeddings_shape[0], self.n_classes)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "n_classes": self.n_classes, "scale": self.scale, "margin": self.margin
        }
