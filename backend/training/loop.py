"""The few-shot training loop on cached backbone features: AdamW, warm-up then cosine decay
(SatDiFuser Sec. 4.2), class-balanced cross entropy that ignores unlabelled pixels."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    seed: int = 0


def class_weights(targets: Sequence[np.ndarray], num_classes: int) -> Tensor:
    """Inverse class frequency over the training pixels, scaled so that a balanced set weighs 1."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for target in targets:
        counts += np.bincount(target[target >= 0], minlength=num_classes)
    present = counts > 0
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
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
                  on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train the fusion and head on per-tile cached features; returns the mean loss of each epoch.

    ``features[i]`` is tile i's extractor output (batch of one), ``targets[i]`` its (H, W) class indices
    with :data:`IGNORE` where unlabelled. Tiles of one batch must share a size.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    model.to(device).train()
    weights = class_weights(targets, model.head.num_classes).to(device)
    target_tensors = [torch.from_numpy(t) for t in targets]
    with_labels = [i for i, t in enumerate(targets) if (t >= 0).any()]
    steps_per_epoch = math.ceil(len(with_labels) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    warmup_steps = min(settings.warmup_epochs, settings.epochs // 5) * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps))
    losses = []
    for epoch in range(settings.epochs):
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
        losses.append(total / len(order))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def predict_cached(model: SatDiFuser, features: Sequence[Sequence[Tensor]], image_hw: Sequence[tuple[int, int]],
                   device: torch.device) -> list[np.ndarray]:
    """Class index per pixel of each tile, from its cached features."""
    model.to(device).eval()
    return [model.decode(_batch(features, [i], device), image_hw[i]).argmax(1)[0].cpu().numpy()
            for i in range(len(features))]
