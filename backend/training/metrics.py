"""Per-class precision, recall, F1 and IoU, overall accuracy and mIoU from a confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows the true class, columns the predicted one; ``truth`` < 0 is ignored."""
    keep = truth >= 0
    pairs = truth[keep].astype(np.int64) * num_classes + predicted[keep].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def segmentation_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Metrics of a confusion matrix. Undefined ratios (a class never true or never predicted) are None;
    mIoU averages the classes that occur in the truth."""
    tp = np.diag(confusion).astype(np.float64)
    truth_px = confusion.sum(axis=1).astype(np.float64)
    predicted_px = confusion.sum(axis=0).astype(np.float64)
    per_class = {}
    ious = []
    for k, name in enumerate(class_names):
        precision, recall = _ratio(tp[k], predicted_px[k]), _ratio(tp[k], truth_px[k])
        f1 = (2 * precision * recall / (precision + recall) if precision is not None and recall is not None
              and precision + recall > 0 else (0.0 if truth_px[k] > 0 else None))
        iou = _ratio(tp[k], truth_px[k] + predicted_px[k] - tp[k])
        if truth_px[k] > 0:
            ious.append(iou or 0.0)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "iou": iou,
                           "support_px": int(truth_px[k])}
    total = confusion.sum()
    return {
        "overall_accuracy": _ratio(tp.sum(), total),
        "miou": float(np.mean(ious)) if ious else None,
        "per_class": per_class,
        "confusion_matrix": confusion.astype(int).tolist(),
        "pixels": int(total),
    }
