"""The training loop: class-balanced weights, and early stopping that leaves the model in its best state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.models.segmenter import SatDiFuser
from backend.training.loop import TrainingSettings, class_weights, hold_out_loss, train_decoder
from tests.backend.synthetic_features import random_features, tiny_feature_info

CLASSES = [{"id": 1, "name": "a", "colour": "#000000"}, {"id": 2, "name": "b", "colour": "#ffffff"}]


def test_class_weights_favour_the_rare_class_softly() -> None:
    targets = [np.array([[0] * 90 + [1] * 10, [-100] * 100])]
    weights = class_weights(targets, 3)
    assert weights[2] == 0  # absent from the training pixels
    assert weights[1] / weights[0] == pytest.approx(3.0)  # sqrt(90 / 10), not 9
    assert float(weights[:2].mean()) == pytest.approx(1.0)


def test_early_stopping_keeps_the_best_stopping_state() -> None:
    """Stopping pixels carry the opposite classes of the training pixels at the same places, so the more
    the head learns the worse the stopping loss gets: training must stop and restore its best epoch."""
    info = tiny_feature_info()
    features = [random_features(info, (32, 32), batch=1, seed=s) for s in range(4)]
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, 2, (32, 32)).astype(np.int64) for _ in features]
    opposite = [1 - t for t in targets]
    torch.manual_seed(0)
    model = SatDiFuser.create(info, CLASSES, "global", "pixel", fusion_kwargs={"out_chs": 16})
    settings = TrainingSettings(epochs=40, learning_rate=5e-3, batch_size=2, warmup_epochs=0, patience=3)
    history = train_decoder(model, features, targets, settings, torch.device("cpu"), stopping_targets=opposite)
    assert history.stopped_early
    assert len(history.losses) < 40
    assert history.best_epoch == int(np.argmin(history.stopping_losses))
    assert len(history.losses) == history.best_epoch + 1 + settings.patience
    weights = class_weights(targets, 2)
    restored = hold_out_loss(model, features, opposite, range(len(features)), weights, torch.device("cpu"))
    assert restored == pytest.approx(min(history.stopping_losses), rel=1e-5)
    assert restored < history.stopping_losses[-1]


def test_without_stopping_labels_every_epoch_runs() -> None:
    info = tiny_feature_info()
    features = [random_features(info, (64, 64), batch=1, seed=s) for s in range(2)]
    targets = [np.zeros((64, 64), dtype=np.int64), np.ones((64, 64), dtype=np.int64)]
    model = SatDiFuser.create(info, CLASSES, "global", "pixel", fusion_kwargs={"out_chs": 16})
    history = train_decoder(model, features, targets, TrainingSettings(epochs=6, batch_size=2), torch.device("cpu"))
    assert len(history.losses) == 6
    assert not history.stopped_early
    assert history.stopping_losses == []
    assert history.best_epoch == 5


def test_a_budget_runs_the_first_epochs_of_the_same_schedule() -> None:
    """The final head's budget: the same learning-rate schedule as the full run, stopped after N epochs, so
    it retraces a fold's run up to the epoch its inner split chose."""
    info = tiny_feature_info()
    features = [random_features(info, (32, 32), batch=1, seed=s) for s in range(2)]
    targets = [np.zeros((32, 32), dtype=np.int64), np.ones((32, 32), dtype=np.int64)]
    settings = TrainingSettings(epochs=10, batch_size=2)
    torch.manual_seed(0)
    full = SatDiFuser.create(info, CLASSES, "global", "pixel", fusion_kwargs={"out_chs": 16})
    full_history = train_decoder(full, features, targets, settings, torch.device("cpu"))
    torch.manual_seed(0)
    budget = SatDiFuser.create(info, CLASSES, "global", "pixel", fusion_kwargs={"out_chs": 16})
    history = train_decoder(budget, features, targets, settings, torch.device("cpu"), epochs_to_run=4)
    assert len(history.losses) == 4
    assert history.losses == full_history.losses[:4]
