"""The baseline the head's figures are read against: a per-pixel random forest on band values.

This is what the QGIS classification plugins most analysts know do (the Semi-Automatic Classification
Plugin, dzetsaka): every band of a pixel is a feature, with no context and no foundation model. It is
trained on the same training labels and scored on the same held-out pixels of the same folds as the head
(:mod:`.fewshot`), so that the difference says what the backbone's features add.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import confusion_matrix

BASELINE_NAME = "random forest (per pixel, band values)"
#: Trees of the forest, and the training pixels it sees at most (sampled evenly across classes): enough
#: for a stable baseline, small enough to train in about a second on two cores.
N_ESTIMATORS = 100
MAX_TRAINING_PX = 20_000


def _balanced_sample(values: np.ndarray, classes: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``limit`` pixels, as evenly spread over the classes as their counts allow."""
    if len(classes) <= limit:
        return np.arange(len(classes))
    present = np.unique(classes)
    per_class = limit // len(present)
    picked = [rng.choice(np.flatnonzero(classes == k), min(per_class, int((classes == k).sum())), replace=False)
              for k in present]
    return np.concatenate(picked)


def random_forest_confusion(band_values: Sequence[np.ndarray], train_targets: Sequence[np.ndarray],
                           validation_targets: Sequence[np.ndarray], num_classes: int, seed: int = 0,
                           n_jobs: int = 2) -> np.ndarray:
    """Train the forest on the training pixels of each tile's ``band_values`` (bands, H, W) and return the
    (K, K) confusion matrix of its predictions on the validation pixels (targets < 0 are left out)."""
    from sklearn.ensemble import RandomForestClassifier

    def pixels(targets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        xs = [values[:, target >= 0].T for values, target in zip(band_values, targets)]
        ys = [target[target >= 0] for target in targets]
        return np.concatenate(xs).astype(np.float32), np.concatenate(ys)

    rng = np.random.default_rng(seed)
    x_train, y_train = pixels(train_targets)
    keep = _balanced_sample(x_train, y_train, MAX_TRAINING_PX, rng)
    forest = RandomForestClassifier(n_estimators=N_ESTIMATORS, n_jobs=n_jobs, class_weight="balanced",
                                    random_state=seed)
    forest.fit(x_train[keep], y_train[keep])
    x_val, y_val = pixels(validation_targets)
    if not len(y_val):
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return confusion_matrix(y_val, forest.predict(x_val), num_classes)
