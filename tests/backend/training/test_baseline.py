"""The random-forest baseline: trained on training pixels, scored on the held-out ones, in the head's format."""

from __future__ import annotations

import numpy as np

from backend.training.baseline import BASELINE_NAME, random_forest_baseline
from backend.training.samples import IGNORE

CLASSES = [{"id": 1, "name": "dark"}, {"id": 2, "name": "bright"}]


def test_the_forest_separates_classes_that_band_values_separate() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.1, (4, 32, 32)).astype(np.float32)
    values[:, :, 16:] += 1.0  # the right half is bright in every band
    truth = np.zeros((32, 32), dtype=np.int64)
    truth[:, 16:] = 1
    train = np.full((32, 32), IGNORE, dtype=np.int64)
    validation = np.full((32, 32), IGNORE, dtype=np.int64)
    train[:16], validation[16:] = truth[:16], truth[16:]
    result = random_forest_baseline([values], [train], [validation], CLASSES, [True, True], None)
    assert result["name"] == BASELINE_NAME
    assert result["validated"] is True
    assert result["overall_accuracy"] > 0.95
    assert result["confusion_matrix"]["classes"] == ["dark", "bright"]
    assert sum(map(sum, result["confusion_matrix"]["matrix"])) == 16 * 32
    assert {c["class_name"] for c in result["per_class"]} == {"dark", "bright"}
    assert result["training_px"] == 16 * 32


def test_without_held_out_pixels_the_baseline_says_so() -> None:
    values = np.zeros((3, 8, 8), dtype=np.float32)
    train = np.zeros((8, 8), dtype=np.int64)
    train[4:] = 1
    result = random_forest_baseline([values], [train], [np.full((8, 8), IGNORE)], CLASSES, [False, False],
                                    "Not validated: no class has two labels")
    assert result["validated"] is False
    assert result["overall_accuracy"] is None
    assert result["message"].startswith("Not validated")
