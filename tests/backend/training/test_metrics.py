"""Validation metrics against a confusion matrix computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from backend.training.metrics import confusion_matrix, validation_metrics

CLASSES = [{"id": 1, "name": "water"}, {"id": 2, "name": "marsh"}, {"id": 5, "name": "sand"}]


def test_metrics_of_a_hand_computed_confusion_matrix() -> None:
    truth = np.array([[0, 0, 0, 0, 1, 1, 1, 2], [2, -100, -100, 0, 1, 1, 2, 2]])
    predicted = np.array([[0, 0, 0, 1, 1, 1, 0, 2], [1, 2, 2, 0, 1, 2, 2, 2]])
    confusion = confusion_matrix(truth, predicted, 3)
    # rows: truth water (5 px), marsh (5 px), sand (4 px); columns: predicted.
    assert confusion.tolist() == [[4, 1, 0], [1, 3, 1], [0, 1, 3]]
    metrics = validation_metrics(confusion, CLASSES, [True, True, True], None)
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


def test_a_class_without_validation_gets_no_numbers_and_is_named() -> None:
    confusion = np.array([[4, 1, 0], [1, 3, 0], [0, 0, 0]])
    metrics = validation_metrics(confusion, CLASSES, [True, True, False], "Not validated for 'sand'")
    sand = metrics["per_class"][2]
    assert (sand["f1"], sand["iou"], sand["validated"]) == (None, None, False)
    assert metrics["macro_f1"] == pytest.approx(0.8 * 0.5 + 0.75 * 0.5)
    assert metrics["message"] == "Not validated for 'sand'"


def test_nothing_held_out_gives_a_message_instead_of_numbers() -> None:
    metrics = validation_metrics(np.zeros((3, 3), dtype=int), CLASSES, [False] * 3, "Not validated: no class has two")
    assert metrics["validated"] is False
    assert metrics["message"].startswith("Not validated")
    assert metrics["miou"] is None
    assert metrics["per_class"] == []
    assert metrics["confusion_matrix"] is None
