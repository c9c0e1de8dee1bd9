"""Batch augmentation in TensorFlow: mirror, the paper's small affine distortions, lighting.

Koch et al. train on affine distortions (rotation, shear, scale, translation) of each pair; we add
horizontal flips and brightness/contrast jitter, which model a door camera's changing light.
Works on float32 batches in the 0..255 pixel range (the towers rescale internally).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    rotation_deg: float = 10.0
    shear: float = 0.1
    scale: float = 0.1  # zoom in [1 - scale, 1 + scale]
    shift_px: float = 2.0  # at 105 px; scaled with the crop size
    brightness: float = 25.0  # additive, in pixel units
    contrast: float = 0.25  # multiplicative around the image mean, in [1 - c, 1 + c]


def augment_batch(images: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Randomly distort a batch (B, H, W, C) float32 in 0..255; returns the same shape."""
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)

    def uniform(limit: float) -> tf.Tensor:
        return tf.random.uniform([b], -limit, limit)

    if cfg.flip:
        flip = tf.random.uniform([b, 1, 1, 1]) < 0.5
        images = tf.where(flip, tf.reverse(images, axis=[2]), images)

    angle = uniform(cfg.rotation_deg * math.pi / 180.0)
    shear = uniform(cfg.shear)
    zoom = 1.0 + uniform(cfg.scale)
    tx = uniform(cfg.shift_px) * wf / 105.0
    ty = uniform(cfg.shift_px) * hf / 105.0
    # forward map A = R(angle) @ Shear @ zoom about the centre; ImageProjectiveTransform wants the
    # inverse (output pixel -> input pixel).
    cos, sin = tf.cos(angle), tf.sin(angle)
    a00, a01 = cos * zoom, (cos * shear - sin) * zoom
    a10, a11 = sin * zoom, (sin * shear + cos) * zoom
    det = a00 * a11 - a01 * a10
    i00, i01, i10, i11 = a11 / det, -a01 / det, -a10 / det, a00 / det
    cx, cy = (wf - 1.0) / 2.0, (hf - 1.0) / 2.0
    # input = Inv @ (output - centre - t) + centre
    ox = cx - i00 * (cx + tx) - i01 * (cy + ty)
    oy = cy - i10 * (cx + tx) - i11 * (cy + ty)
    zeros = tf.zeros_like(angle)
    transforms = tf.stack([i00, i01, ox, i10, i11, oy, zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.stack([h, w]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )

    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    contrast = 1.0 + tf.reshape(uniform(cfg.contrast), [-1, 1, 1, 1])
    brightness = tf.reshape(uniform(cfg.brightness), [-1, 1, 1, 1])
    images = (images - mean) * contrast + mean + brightness
    return tf.clip_by_value(images, 0.0, 255.0)
