"""The few-shot training loop on cached backbone features: AdamW, warm-up then cosine decay
(SatDiFuser Sec. 4.2), class-balanced cross entropy that ignores unlabelled pixels, and early stopping on
the loss of stopping labels that keeps the best state.

The stopping labels are an inner fold of the training labels (:func:`.fewshot.choose_epochs`), never the
labels a figure is reported on: choosing the epoch on those would report the best of many noisy draws."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import Tensor

from ..models.segmenter import SatDiFuser
from .samples import IGNORE


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 40
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 4
    warmup_epochs: int = 5  # Sec. 4.2; shortened to a fifth of the epochs when there are few
    patience: int = 8  # epochs without a better stopping loss before stopping; 0 never stops early
    min_delta: float = 1e-4  # a stopping loss must fall by more than this to count as better
    seed: int = 0
    inner_folds: int = 1  # inner spatial folds of the training labels whose mean stopping loss sets the epochs


@dataclass
class TrainingHistory:
    """Mean training loss and stopping loss of each epoch run, the stopping loss before the first epoch
    (when prefitted parts already predict), the epoch whose state was kept (-1: none, the prefitted state),
    and whether training stopped before the last epoch."""

    losses: list[float] = field(default_factory=list)
    stopping_losses: list[float] = field(default_factory=list)
    start_loss: float | None = None
    best_epoch: int = -1
    stopped_early: bool = False

    def stopping_curve(self) -> list[float]:
        """The stopping loss after 0 (when prefitted), 1, 2, ... epochs."""
        return ([self.start_loss] if self.start_loss is not None else []) + self.stopping_losses


def class_weights(targets: Sequence[np.ndarray], num_classes: int) -> Tensor:
    """Inverse square root of each class's share of the training pixels, scaled to a mean of 1 over the
    classes present. Softer than inverse frequency, which lets a class of a few dozen pixels dominate a
    few-shot loss; a class without training pixels weighs 0."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for target in targets:
        counts += np.bincount(target[target >= 0], minlength=num_classes)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = 1.0 / np.sqrt(counts[present] / counts[present].sum())
    weights[present] /= weights[present].mean()
    return torch.tensor(weights, dtype=torch.float32)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batch(features: Sequence[Sequence[Tensor]], indices: Sequence[int], device: torch.device) -> list[Tensor]:
    return [torch.cat([features[i][k] for i in indices]).to(device=device, dtype=torch.float32)
            for k in range(len(features[indices[0]]))]


def train_decoder(model: SatDiFuser, features: Sequence[Sequence[Tensor]], targets: Sequence[np.ndarray],
                  settings: TrainingSettings, device: torch.device,
                  on_epoch: Callable[[int, float], None] | None = None,
                  stopping_targets: Sequence[np.ndarray] | None = None,
                  epochs_to_run: int | None = None) -> TrainingHistory:
    """Train the fusion and head on per-tile cached features.

    ``features[i]`` is tile i's extractor output (batch of one), ``targets[i]`` its (H, W) class indices
    with :data:`IGNORE` where unlabelled. Tiles of one batch must share a size. With ``stopping_targets``
    (the pixels of the stopping labels, an inner split of the training labels), their loss is computed
    after each epoch; after warm-up, ``settings.patience`` epochs without improvement stop training, and
    the model is left in the state of its best stopping loss. Without them, every epoch runs (or the
    first ``epochs_to_run`` of the same schedule: a budget found on inner splits) and the last state is
    kept.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    model.to(device).train()
    weights = class_weights(targets, model.head.num_classes).to(device)
    prefit = getattr(model, "prefit", None)
    # Parts fitted in closed form before the loop (SatDiFuser's band branch); when they already predict, the
    # state before the first epoch is a candidate of the early stopping too (epoch "0": the head adds nothing).
    starts_fitted = bool(prefit(features, targets, weights)) if prefit is not None else False
    target_tensors = [torch.from_numpy(t) for t in targets]
    with_labels = [i for i, t in enumerate(targets) if (t >= 0).any()]
    held_out = [i for i, t in enumerate(stopping_targets or []) if (t >= 0).any()]
    fewest = 0 if starts_fitted else 1
    last_epoch = settings.epochs if epochs_to_run is None else max(fewest, min(settings.epochs, epochs_to_run))
    steps_per_epoch = math.ceil(len(with_labels) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    warmup_epochs = min(settings.warmup_epochs, settings.epochs // 5)
    warmup_steps = warmup_epochs * steps_per_epoch
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))
    history = TrainingHistory()
    best_loss, best_state, since_best = math.inf, None, 0
    if held_out and starts_fitted:
        best_loss = hold_out_loss(model, features, stopping_targets or [], held_out, weights, device)
        history.start_loss = best_loss
        best_state = copy.deepcopy(model.state_dict())
    for epoch in range(last_epoch):
        model.train()
        order = [with_labels[i] for i in torch.randperm(len(with_labels), generator=generator).tolist()]
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            target = torch.stack([target_tensors[i] for i in batch]).to(device)
            logits = model.decode(_batch(features, batch, device), tuple(target.shape[-2:]))
            loss = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)
            auxiliary = model.auxiliary_loss()
            if auxiliary is not None:
                loss = loss + auxiliary
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(batch)
        history.losses.append(total / len(order))
        if held_out:
            stopping = hold_out_loss(model, features, stopping_targets or [], held_out, weights, device)
            history.stopping_losses.append(stopping)
            if stopping < best_loss - settings.min_delta:
                best_loss, since_best, history.best_epoch = stopping, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            elif epoch >= warmup_epochs:
                since_best += 1
        if on_epoch is not None:
            on_epoch(epoch, history.losses[-1])
        if held_out and settings.patience > 0 and since_best >= settings.patience:
            history.stopped_early = epoch < last_epoch - 1
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        history.best_epoch = len(history.losses) - 1
    model.eval()
    return history


@torch.no_grad()
def hold_out_loss(model: SatDiFuser, features: Sequence[Sequence[Tensor]], targets: Sequence[np.ndarray],
                  tiles: Sequence[int], weights: Tensor, device: torch.device) -> float:
    """The class-weighted cross entropy over the held-out pixels of ``tiles`` (a weighted mean over pixels,
    as one batch would give)."""
    model.eval()
    loss_sum, weight_sum = 0.0, 0.0
    for i in tiles:
        target = torch.from_numpy(targets[i])[None].to(device)
        logits = model.decode(_batch(features, [i], device), tuple(target.shape[-2:]))
        per_px = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE, reduction="sum")
        keep = target >= 0
        loss_sum += float(per_px)
        weight_sum += float(weights[target[keep]].sum())
    return loss_sum / weight_sum if weight_sum > 0 else math.inf


@torch.no_grad()
def predict_cached(model: SatDiFuser, features: Sequence[Sequence[Tensor]], image_hw: Sequence[tuple[int, int]],
                   device: torch.device) -> list[np.ndarray]:
    """Class index per pixel of each tile, from its cached features."""
    model.to(device).eval()
    return [model.decode(_batch(features, [i], device), image_hw[i]).argmax(1)[0].cpu().numpy()
            for i in range(len(features))]
