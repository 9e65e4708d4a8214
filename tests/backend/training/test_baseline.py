"""The random-forest baseline: trained on training pixels, scored on the held-out ones."""

from __future__ import annotations

import numpy as np

from backend.training.baseline import random_forest_confusion
from backend.training.samples import IGNORE


def test_the_forest_separates_classes_that_band_values_separate() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.1, (4, 32, 32)).astype(np.float32)
    values[:, :, 16:] += 1.0  # the right half is bright in every band
    truth = np.zeros((32, 32), dtype=np.int64)
    truth[:, 16:] = 1
    train = np.full((32, 32), IGNORE, dtype=np.int64)
    validation = np.full((32, 32), IGNORE, dtype=np.int64)
    train[:16], validation[16:] = truth[:16], truth[16:]
    confusion = random_forest_confusion([values], [train], [validation], 2)
    assert confusion.sum() == 16 * 32
    assert np.trace(confusion) / confusion.sum() > 0.95


def test_without_held_out_pixels_the_confusion_is_empty() -> None:
    values = np.zeros((3, 8, 8), dtype=np.float32)
    train = np.zeros((8, 8), dtype=np.int64)
    train[4:] = 1
    confusion = random_forest_confusion([values], [train], [np.full((8, 8), IGNORE)], 3)
    assert confusion.shape == (3, 3)
    assert confusion.sum() == 0
