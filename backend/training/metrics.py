"""Per-class precision, recall, F1 and IoU, overall accuracy, macro F1, mIoU and the confusion matrix of
held-out pixels, in the form the dock and the command line show."""

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


def segmentation_metrics(confusion: np.ndarray, classes: Sequence[dict[str, Any]],
                         validated: Sequence[bool] | None = None) -> dict[str, Any]:
    """Metrics of a confusion matrix of held-out pixels; ``classes`` are ``{"id", "name"}`` dicts.

    A class counts as validated when ``validated`` says so and it has held-out pixels; the scores of
    other classes are None, and macro F1 and mIoU average the validated classes only (a class that was
    never held out says nothing about how well it is mapped). Precision stays defined by what was
    predicted over all held-out pixels.
    """
    num = len(classes)
    flags = [True] * num if validated is None else [bool(v) for v in validated]
    tp = np.diag(confusion).astype(np.float64)
    truth_px = confusion.sum(axis=1).astype(np.float64)
    predicted_px = confusion.sum(axis=0).astype(np.float64)
    per_class, f1s, ious = [], [], []
    for k, cls in enumerate(classes):
        scored = flags[k] and truth_px[k] > 0
        precision = _ratio(tp[k], predicted_px[k]) if scored else None
        recall = _ratio(tp[k], truth_px[k]) if scored else None
        f1 = iou = None
        if scored:
            p, r = precision or 0.0, recall or 0.0
            f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
            iou = float(tp[k] / (truth_px[k] + predicted_px[k] - tp[k]))
            f1s.append(f1)
            ious.append(iou)
        per_class.append({"class_id": int(cls["id"]), "class_name": str(cls["name"]), "precision": precision,
                          "recall": recall, "f1": f1, "iou": iou, "support_px": int(truth_px[k]),
                          "validated": bool(scored)})
    total = confusion.sum()
    return {
        "per_class": per_class,
        "overall_accuracy": _ratio(tp.sum(), total),
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "miou": float(np.mean(ious)) if ious else None,
        "confusion_matrix": {"classes": [str(c["name"]) for c in classes], "matrix": confusion.astype(int).tolist()},
        "pixels": int(total),
    }


def not_validated(message: str) -> dict[str, Any]:
    """The metrics when nothing could be held out: a message instead of numbers."""
    return {"validated": False, "message": message, "per_class": [], "overall_accuracy": None, "macro_f1": None,
            "miou": None, "confusion_matrix": None, "pixels": 0}


def validation_metrics(confusion: np.ndarray, classes: Sequence[dict[str, Any]], validated: Sequence[bool],
                       message: str | None) -> dict[str, Any]:
    """:func:`segmentation_metrics` with ``validated`` and, when some class is not validated, ``message``."""
    if not any(validated) or confusion.sum() == 0:
        return not_validated(message or "Not validated: no held-out pixel lies on valid pixels of the raster")
    metrics = {"validated": True, **segmentation_metrics(confusion, classes, validated)}
    if message:
        metrics["message"] = message
    return metrics


def hold_out_metrics(predictions: Sequence[np.ndarray], train_targets: Sequence[np.ndarray],
                     val_targets: Sequence[np.ndarray], classes: Sequence[dict[str, Any]],
                     hold_out: Any) -> dict[str, Any]:
    """The scores a trained head reports: :func:`validation_metrics` on the held-out labels' pixels, with the
    counts of held-out and training labels and the fit on the training pixels (``hold_out`` is a
    :class:`~.samples.HoldOut`; targets use -1 for pixels without a label)."""
    size = len(classes)

    def confusion_of(targets: Sequence[np.ndarray]) -> np.ndarray:
        return sum((confusion_matrix(t, p, size) for t, p in zip(targets, predictions)),
                   np.zeros((size, size), dtype=np.int64))

    message = hold_out.message([str(c["name"]) for c in classes])
    metrics = validation_metrics(confusion_of(val_targets), classes, hold_out.validated, message)
    fitted = segmentation_metrics(confusion_of(train_targets), classes)
    metrics.update({"held_out_labels": int(hold_out.held_out.sum()),
                    "training_labels": int((~hold_out.held_out).sum()),
                    "training": {"overall_accuracy": fitted["overall_accuracy"], "miou": fitted["miou"]}})
    return metrics
