"""The sample streams training and validation use: labels pinned (1 = same person), seeded."""

from __future__ import annotations

import numpy as np

from twinlock.trainer.training.config import TrainConfig
from twinlock.trainer.training.prepare import epoch_samples, validation_pairs


def test_pair_label_one_means_same_identity() -> None:
    labels = np.repeat(np.arange(30), 4)
    cfg = TrainConfig(data=["x"], steps_per_epoch=10, batch_size=32, seed=3)
    ia, ib, y = epoch_samples(cfg, labels, epoch=0, embeddings=None)
    assert len(y) == 320
    np.testing.assert_array_equal(y == 1, labels[ia] == labels[ib])
    assert 0.4 < y.mean() < 0.6
    assert not np.any(ia == ib)


def test_epochs_are_seeded_and_differ() -> None:
    labels = np.repeat(np.arange(10), 3)
    cfg = TrainConfig(data=["x"], steps_per_epoch=2, batch_size=8)
    first = epoch_samples(cfg, labels, 0, None)
    again = epoch_samples(cfg, labels, 0, None)
    second = epoch_samples(cfg, labels, 1, None)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], second[0])


def test_triplets_and_cosface_samples() -> None:
    labels = np.repeat(np.arange(12), 3)
    a, p, n = epoch_samples(TrainConfig(data=["x"], loss="triplet", steps_per_epoch=3,
                                        batch_size=8), labels, 0, None)
    assert np.all(labels[a] == labels[p]) and np.all(labels[a] != labels[n]) and np.all(a != p)
    (images,) = epoch_samples(TrainConfig(data=["x"], loss="cosface", steps_per_epoch=3,
                                          batch_size=8), labels, 0, None)
    assert len(images) == 24 and images.max() < len(labels)


def test_validation_pairs_stay_inside_a_source_dataset() -> None:
    labels = np.repeat(np.arange(20), 3)
    groups = (labels >= 10).astype(np.int64)  # two sources of 10 people each
    ia, ib, y = validation_pairs(labels, 200, seed=0, groups=groups)
    assert np.all(groups[ia] == groups[ib])
    assert y.sum() == 20 * 3  # every same-person pair: 3 per person
    np.testing.assert_array_equal(y == 1, labels[ia] == labels[ib])
    assert (y == 0).sum() == 200
