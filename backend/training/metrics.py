"""Per-class precision, recall, F1 and IoU, overall accuracy, macro F1, mIoU and the confusion matrix of
held-out pixels, their mean and spread over spatial folds, and the comparison with the baseline, in the
form the dock and the command line show."""

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


def spread(values: Sequence[float]) -> float | None:
    """The standard deviation of per-fold figures (n - 1 in the denominator); None for fewer than two."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def cross_validated_metrics(confusions: Sequence[np.ndarray], validated: Sequence[np.ndarray],
                            classes: Sequence[dict[str, Any]], held_out_labels: Sequence[int],
                            message: str | None = None) -> dict[str, Any]:
    """The figures a trained head reports from its folds: each figure's mean over the folds and its spread
    (:func:`spread`); per class over the folds that held the class out; precision, recall and the confusion
    matrix pooled over the folds (each held-out pixel is scored in exactly one fold).

    ``confusions[f]`` is fold f's confusion matrix of held-out pixels and ``validated[f]`` the classes it
    held out; ``held_out_labels`` counts each class's held-out labels over all folds.
    """
    folds = [segmentation_metrics(c, classes, v) for c, v in zip(confusions, validated) if c.sum() > 0]
    if not folds:
        return not_validated(message or "Not validated: no held-out pixel lies on valid pixels of the raster")
    pooled = np.sum(confusions, axis=0)
    pooled_metrics = segmentation_metrics(pooled, classes, np.any(validated, axis=0))
    per_class = []
    for k, row in enumerate(pooled_metrics["per_class"]):
        f1s = [f["per_class"][k]["f1"] for f in folds if f["per_class"][k]["validated"]]
        ious = [f["per_class"][k]["iou"] for f in folds if f["per_class"][k]["validated"]]
        per_class.append({**row, "f1": _mean(f1s), "f1_std": spread(f1s), "iou": _mean(ious),
                          "iou_std": spread(ious), "held_out_labels": int(held_out_labels[k]),
                          "folds_validated": len(f1s)})
    metrics: dict[str, Any] = {"validated": True, "folds": len(folds), "per_class": per_class}
    for key in ("overall_accuracy", "macro_f1", "miou"):
        values = [f[key] for f in folds if f[key] is not None]
        metrics[key], metrics[f"{key}_std"] = _mean(values), spread(values)
    metrics.update({"confusion_matrix": pooled_metrics["confusion_matrix"], "pixels": pooled_metrics["pixels"],
                    "held_out_labels": int(np.sum(held_out_labels)),
                    "fold_metrics": [{key: f[key] for key in ("overall_accuracy", "macro_f1", "miou", "pixels")}
                                     for f in folds]})
    if message:
        metrics["message"] = message
    return metrics


def comparison(head: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Whether the head beats the baseline: the mean and spread over folds of the difference in mIoU, fold
    by fold (the folds are the same, so their difference is less noisy than the two figures apart)."""
    if not baseline or not head.get("validated") or not baseline.get("validated"):
        return {"line": "No comparison with the baseline: nothing was validated", "miou_gain": None,
                "miou_gain_std": None}
    gains = [h["miou"] - b["miou"] for h, b in zip(head["fold_metrics"], baseline["fold_metrics"])
             if h["miou"] is not None and b["miou"] is not None]
    gain, gain_std = _mean(gains), spread(gains)
    if gain is None:
        return {"line": "No comparison with the baseline: no fold scored both", "miou_gain": None,
                "miou_gain_std": None}
    name = baseline.get("name", "the baseline")
    spread_text = f" ± {gain_std:.2f} over {len(gains)} folds" if gain_std is not None else " on one split"
    if gain_std is not None and abs(gain) <= gain_std:
        verdict = f"The head and the {name} are level within the folds' spread: mIoU {gain:+.2f}"
    elif gain > 0:
        verdict = f"The head beats the {name} by {gain:.2f} mIoU"
    else:
        verdict = f"The head is below the {name} by {-gain:.2f} mIoU"
    return {"line": verdict + spread_text, "miou_gain": gain, "miou_gain_std": gain_std}
