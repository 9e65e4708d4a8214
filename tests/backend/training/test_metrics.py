"""Validation metrics against confusion matrices computed by hand: one fold, the mean and spread over folds, the
comparison with the baseline."""

from __future__ import annotations

import numpy as np
import pytest

from backend.training.metrics import (
    comparison,
    confusion_matrix,
    cross_validated_metrics,
    not_validated,
    segmentation_metrics,
)

CLASSES = [{"id": 1, "name": "water"}, {"id": 2, "name": "marsh"}, {"id": 5, "name": "sand"}]


def test_metrics_of_a_hand_computed_confusion_matrix() -> None:
    truth = np.array([[0, 0, 0, 0, 1, 1, 1, 2], [2, -100, -100, 0, 1, 1, 2, 2]])
    predicted = np.array([[0, 0, 0, 1, 1, 1, 0, 2], [1, 2, 2, 0, 1, 2, 2, 2]])
    confusion = confusion_matrix(truth, predicted, 3)
    # rows: truth water (5 px), marsh (5 px), sand (4 px); columns: predicted.
    assert confusion.tolist() == [[4, 1, 0], [1, 3, 1], [0, 1, 3]]
    metrics = cross_validated_metrics([confusion], [np.array([True, True, True])], CLASSES, [2, 2, 1])
    water, marsh, sand = metrics["per_class"]
    assert (water["class_id"], water["class_name"], water["support_px"]) == (1, "water", 5)
    assert water["precision"] == pytest.approx(4 / 5)
    assert water["recall"] == pytest.approx(4 / 5)
    assert water["f1"] == pytest.approx(0.8)
    assert water["iou"] == pytest.approx(4 / 6)
    assert marsh["precision"] == pytest.approx(3 / 5)
    assert marsh["recall"] == pytest.approx(3 / 5)
    assert marsh["iou"] == pytest.approx(3 / 7)
    assert sand["precision"] == pytest.approx(3 / 4)
    assert sand["recall"] == pytest.approx(3 / 4)
    assert sand["iou"] == pytest.approx(3 / 5)
    assert metrics["overall_accuracy"] == pytest.approx(10 / 14)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.6 + 0.75) / 3)
    assert metrics["miou"] == pytest.approx((4 / 6 + 3 / 7 + 3 / 5) / 3)
    assert metrics["confusion_matrix"] == {"classes": ["water", "marsh", "sand"], "matrix": confusion.tolist()}
    assert metrics["validated"] is True
    assert "message" not in metrics
    assert metrics["miou_std"] is None  # one fold: no spread
    assert metrics["held_out_labels"] == 5
    assert sand["held_out_labels"] == 1


def test_a_class_without_validation_gets_no_numbers_and_is_named() -> None:
    confusion = np.array([[4, 1, 0], [1, 3, 0], [0, 0, 0]])
    metrics = cross_validated_metrics([confusion], [np.array([True, True, False])], CLASSES, [1, 1, 0],
                                      "Not validated for 'sand'")
    sand = metrics["per_class"][2]
    assert (sand["f1"], sand["iou"], sand["validated"]) == (None, None, False)
    assert metrics["macro_f1"] == pytest.approx(0.8 * 0.5 + 0.75 * 0.5)
    assert metrics["message"] == "Not validated for 'sand'"


def test_figures_are_the_mean_and_spread_over_folds_and_the_confusion_is_pooled() -> None:
    perfect = np.diag([5, 5, 5])
    half = np.array([[2, 2, 0], [2, 2, 0], [0, 0, 0]])  # sand not held out in this fold
    metrics = cross_validated_metrics([perfect, half], [np.array([True] * 3), np.array([True, True, False])],
                                      CLASSES, [2, 2, 1])
    assert metrics["folds"] == 2
    assert metrics["overall_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics["overall_accuracy_std"] == pytest.approx(np.std([1.0, 0.5], ddof=1))
    half_iou = 2 / 6
    assert metrics["miou"] == pytest.approx((1.0 + half_iou) / 2)
    water, _, sand = metrics["per_class"]
    assert water["iou"] == pytest.approx((1.0 + half_iou) / 2)
    assert water["iou_std"] == pytest.approx(np.std([1.0, half_iou], ddof=1))
    assert sand["iou"] == pytest.approx(1.0)
    assert sand["iou_std"] is None
    assert sand["folds_validated"] == 1
    assert metrics["confusion_matrix"]["matrix"] == (perfect + half).tolist()
    assert [f["miou"] for f in metrics["fold_metrics"]] == pytest.approx([1.0, half_iou])


def test_the_comparison_says_by_how_much_the_head_beats_the_baseline_with_the_spread() -> None:
    def folds(mious: list[float]) -> dict:
        return {"validated": True, "fold_metrics": [{"miou": m} for m in mious]}

    better = comparison(folds([0.8, 0.7, 0.9]), {**folds([0.5, 0.5, 0.6]), "name": "random forest"})
    assert better["miou_gain"] == pytest.approx(0.2666667)
    assert better["line"].startswith("The head beats the random forest by 0.27 mIoU ± 0.06 over 3 folds")
    level = comparison(folds([0.6, 0.5]), {**folds([0.5, 0.7]), "name": "random forest"})
    assert "level within the folds' spread" in level["line"]
    worse = comparison(folds([0.4]), {**folds([0.6]), "name": "random forest"})
    assert worse["line"] == "The head is below the random forest by 0.20 mIoU on one split"
    assert comparison(not_validated("none"), None)["miou_gain"] is None


def test_nothing_held_out_gives_a_message_instead_of_numbers() -> None:
    metrics = cross_validated_metrics([np.zeros((3, 3), dtype=int)], [np.zeros(3, dtype=bool)], CLASSES, [0, 0, 0],
                                      "Not validated: no class has two")
    assert metrics["validated"] is False
    assert metrics["message"].startswith("Not validated")
    assert metrics["miou"] is None
    assert metrics["per_class"] == []
    assert metrics["confusion_matrix"] is None


def test_one_confusion_gives_the_hand_computed_figures_directly() -> None:
    confusion = np.array([[4, 1], [1, 3]])
    figures = segmentation_metrics(confusion, CLASSES[:2])
    assert figures["overall_accuracy"] == pytest.approx(7 / 9)
