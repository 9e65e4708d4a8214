"""The one few-shot trainer of both models: spatial cross-validation of a head on cached features, the
baseline on the same folds, then the final head on every label.

Whatever the backbone (SatDiFuser's fused diffusion features or SkySense's F_fus), a job hands over its
label tiles with their cached features and a function that makes a fresh head; this module does the rest,
the same way for both:

1. For each fold of :func:`.split.spatial_folds`: the labels the fold holds out are set aside; inner
   spatial folds of the remaining labels choose how many epochs a head trains (:func:`choose_epochs`: none
   at all, the prefitted band branch alone, is a candidate); a head trained on all the remaining labels for
   those epochs is scored once on the held-out labels' pixels, and the random forest trained on the same
   training labels is scored on the same pixels.
2. The figures are the folds' mean and spread (:func:`.metrics.cross_validated_metrics`), with a line that
   says whether the head beats the baseline (:func:`.metrics.comparison`).
3. The head that is saved is trained on every label, for the median of the epochs the folds chose: each
   fold's head is trained as the saved one is, so the figures score the procedure that made it.

Nothing that is reported chooses anything: a fold's head never sees the classes of the labels it is scored
on, and the epoch budget of the final head comes from the inner folds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import rasterio
import torch
from torch import Tensor

from ..progress import Progress
from ..raster.labels import LabelSet
from .baseline import BASELINE_NAME, random_forest_confusion
from .loop import TrainingHistory, TrainingSettings, predict_cached, train_decoder
from .metrics import comparison, confusion_matrix, cross_validated_metrics, not_validated, segmentation_metrics
from .samples import IGNORE, TileSample
from .split import SpatialFolds, describe, spatial_folds


class FewShotHead(Protocol):
    """What the loop trains: logits from a tile's cached features (both models' heads take this form)."""

    def decode(self, features: list[Tensor], image_hw: tuple[int, int]) -> Tensor: ...

    def auxiliary_loss(self) -> Tensor | None: ...


@dataclass
class FoldRun:
    """One fold's head: its epochs and how they were chosen, its training history and the confusion
    matrices of the head and the baseline."""

    choice: EpochChoice
    history: TrainingHistory
    confusion: np.ndarray
    baseline_confusion: np.ndarray | None
    validated: np.ndarray  # (classes,) bool


@dataclass
class FewShotResult:
    """The final head (trained on every label), the honest figures and what they rest on."""

    head: Any
    history: TrainingHistory
    metrics: dict[str, Any]
    baseline: dict[str, Any] | None
    comparison: dict[str, Any]
    validation: dict[str, Any]
    folds: list[FoldRun] = field(default_factory=list)

    def verdict(self) -> str:
        """What the command line's last progress line says: the figure, what it rests on, the baseline."""
        parts = [self.metrics.get("summary") or self.metrics.get("message") or ""]
        if self.baseline is not None and self.comparison.get("miou_gain") is not None:
            parts.append(self.comparison["line"])
        return "; ".join(p for p in parts if p)


@dataclass(frozen=True)
class LabelTiles:
    """The label tiles of one job and where they lie: the labels on the raster's (or grid's) CRS,
    ``transform`` the raster's, each tile's size in pixels."""

    samples: list[TileSample]
    labels: LabelSet
    transform: rasterio.Affine

    @property
    def features(self) -> list[list[Tensor]]:
        return [s.features for s in self.samples]

    @property
    def image_hw(self) -> list[tuple[int, int]]:
        return [(int(s.window.height), int(s.window.width)) for s in self.samples]

    @property
    def band_values(self) -> list[np.ndarray]:
        return [s.band_values for s in self.samples]

    def targets(self, use: np.ndarray, exclude_use: np.ndarray | None = None) -> list[np.ndarray]:
        """Each tile's targets for the labels selected by ``use``, leaving out every pixel that a label
        selected by ``exclude_use`` covers."""
        excluded = [None] * len(self.samples)
        if exclude_use is not None and exclude_use.any():
            excluded = [s.cover(self.labels, exclude_use, self.transform) for s in self.samples]
        return [s.targets(self.labels, use, e) for s, e in zip(self.samples, excluded)]


class PackedPixels:
    """The labelled pixels of label tiles packed into rows of ``row_px`` pixels, for a per-pixel head (no
    spatial context, such as SkySense's linear head over F_fus): the same head, trained on the labelled
    pixels alone instead of whole tiles, at a fraction of the cost. It offers :class:`LabelTiles`'s
    interface: each row is a (1, row_px) tile whose tail pixels past the last labelled one are ignored.

    Targets are still made on the whole tiles (so which pixel a training label covers is decided there)
    and then gathered. Features must be at the tiles' resolution.
    """

    def __init__(self, tiles: LabelTiles, row_px: int = 4096) -> None:
        self.tiles, self.labels, self.row_px = tiles, tiles.labels, row_px
        self._keep = [np.flatnonzero(((s.feature_px >= 0) & s.valid).ravel()) for s in tiles.samples]
        self._count = sum(len(k) for k in self._keep)
        # Pixels in the order of their label: a label's pixels share few rows, so the rows of one fold's
        # training, stopping and held-out labels overlap little and fewer rows are decoded per epoch.
        self._order = np.argsort(self._gather([s.feature_px for s in tiles.samples]), kind="stable")
        self._rows = max(1, -(-self._count // row_px))
        levels = len(tiles.samples[0].features)
        self._features = [self._pack_features([s.features[k] for s in tiles.samples]) for k in range(levels)]
        self._band_values = self._pack([s.band_values for s in tiles.samples], 0.0)

    def _gather(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """(..., count): the kept pixels of each tile's (..., H, W) array, tile after tile."""
        return np.concatenate([a.reshape(*a.shape[:-2], -1)[..., k] for a, k in zip(arrays, self._keep)], axis=-1)

    def _pack(self, arrays: Sequence[np.ndarray], fill: float) -> list[np.ndarray]:
        flat = self._gather(arrays)[..., self._order]
        padded = np.full((*flat.shape[:-1], self._rows * self.row_px), fill, dtype=flat.dtype)
        padded[..., :self._count] = flat
        return [padded[..., r * self.row_px:(r + 1) * self.row_px][..., None, :] for r in range(self._rows)]

    def _pack_features(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        flat = torch.cat([t.flatten(2)[:, :, torch.from_numpy(k)] for t, k in zip(tensors, self._keep)], dim=2)
        flat = flat[:, :, torch.from_numpy(self._order)]
        padded = torch.zeros((*flat.shape[:2], self._rows * self.row_px), dtype=flat.dtype)
        padded[:, :, :self._count] = flat
        return [padded[:, :, r * self.row_px:(r + 1) * self.row_px].unsqueeze(2) for r in range(self._rows)]

    @property
    def features(self) -> list[list[Tensor]]:
        return [[level[r] for level in self._features] for r in range(self._rows)]

    @property
    def image_hw(self) -> list[tuple[int, int]]:
        return [(1, self.row_px)] * self._rows

    @property
    def band_values(self) -> list[np.ndarray]:
        return self._band_values

    def targets(self, use: np.ndarray, exclude_use: np.ndarray | None = None) -> list[np.ndarray]:
        return self._pack(self.tiles.targets(use, exclude_use), IGNORE)


@dataclass
class FewShotSetup:
    """What a job hands the trainer (:func:`cross_validate`, or a benchmark's :func:`train_on_split`): the
    label tiles with their features, the folds, a maker of fresh heads, the classes and the settings."""

    tiles: LabelTiles | PackedPixels
    folds: SpatialFolds
    classes: list[dict[str, Any]]
    new_model: Callable[[], FewShotHead]
    settings: TrainingSettings
    device: torch.device


@dataclass(frozen=True)
class EpochChoice:
    """How many epochs a head trains on its training labels, chosen on inner spatial folds of them alone:
    the mean over ``inner_folds`` runs of the stopping loss after 0 (when prefitted parts already predict),
    1, 2, ... epochs, and the fewest epochs within ``min_delta`` of its minimum. ``inner_folds`` = 0: no
    inner fold could be made, and the whole schedule runs."""

    epochs: int
    inner_folds: int
    mean_curve: tuple[float, ...] = ()
    starts_at_zero: bool = False

    def to_json(self) -> dict[str, Any]:
        first = 0 if self.starts_at_zero else 1
        return {"epochs": self.epochs, "inner_folds": self.inner_folds,
                "mean_stopping_loss": {str(first + i): round(v, 5) for i, v in enumerate(self.mean_curve)}}


def _mean_curve(curves: Sequence[list[float]]) -> np.ndarray:
    """The mean of stopping-loss curves of different lengths (a run that stopped early keeps its last loss:
    patience epochs past its best were no better)."""
    length = max(len(c) for c in curves)
    return np.mean([c + [c[-1]] * (length - len(c)) for c in curves], axis=0)


def choose_epochs(tiles: LabelTiles | PackedPixels, training: np.ndarray, new_head: Callable[[], FewShotHead],
                  settings: TrainingSettings, device: torch.device, block_m: float,
                  on_run: Callable[[int, int], Callable[[int, float], None] | None] | None = None) -> EpochChoice:
    """The epochs of a head trained on the ``training`` labels, chosen on their own spatial folds.

    Each of the first ``settings.inner_folds`` inner folds trains a fresh head on the other training labels
    and records its stopping loss on the fold's labels after every epoch, from "no epoch" (the prefitted
    band branch alone) on; the curves are averaged. The head that is kept then trains on *all* the training
    labels for the chosen epochs (:func:`train_on_split`): on the benchmark's scenes that refit is what
    lifted the maps, while averaging over more inner folds changed nothing (docs/quality.md). Only training
    labels enter: nothing about the labels outside ``training`` can steer it.
    """
    inner = spatial_folds(tiles.labels.subset(training), block_m, settings.seed)
    runs = min(max(1, settings.inner_folds), inner.count)
    if runs == 0:
        return EpochChoice(settings.epochs, 0)
    positions = np.flatnonzero(training)
    curves, starts_at_zero = [], False
    for j in range(runs):
        held = np.zeros_like(training)
        held[positions[inner.fold == j]] = True
        fit = training & ~held
        torch.manual_seed(settings.seed)
        head = new_head()
        history = train_decoder(head, tiles.features, tiles.targets(fit, exclude_use=~training), settings, device,
                                on_run(j, runs) if on_run is not None else None,
                                stopping_targets=tiles.targets(held, exclude_use=fit))
        if history.stopping_losses or history.start_loss is not None:
            curves.append(history.stopping_curve())
            starts_at_zero = history.start_loss is not None
    if not curves:  # no inner fold held a labelled pixel on the tiles
        return EpochChoice(settings.epochs, 0)
    mean = _mean_curve(curves)
    best = int(np.flatnonzero(mean <= mean.min() + settings.min_delta)[0])
    return EpochChoice(best if starts_at_zero else best + 1, len(curves), tuple(float(v) for v in mean),
                       starts_at_zero)


def train_on_split(tiles: LabelTiles | PackedPixels, held_out: np.ndarray, new_head: Callable[[], FewShotHead],
                   settings: TrainingSettings, device: torch.device, block_m: float,
                   on_run: Callable[[str], Callable[[int, float], None] | None] | None = None,
                   ) -> tuple[FewShotHead, TrainingHistory, EpochChoice]:
    """A head trained on every label that ``held_out`` leaves, for the epochs that inner folds of those
    labels chose (:func:`choose_epochs`): the procedure of the final head, so that a fold scores what is saved.

    Nothing of the held-out labels but their place enters: their classes cannot change the head.
    """
    training = ~held_out

    def phase(name: str) -> Callable[[int, float], None] | None:
        return on_run(name) if on_run is not None else None

    choice = choose_epochs(tiles, training, new_head, settings, device, block_m,
                           lambda j, runs: phase(f"inner fold {j + 1} of {runs}"))
    torch.manual_seed(settings.seed)  # every fold's head starts from the final head's initial weights
    head = new_head()
    history = train_decoder(head, tiles.features, tiles.targets(training, exclude_use=held_out), settings, device,
                            phase("all its training labels"), epochs_to_run=choice.epochs)
    return head, history, choice


def confusion_of(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray], size: int) -> np.ndarray:
    """The (size, size) confusion matrix of tiles' predictions against their targets (negative: left out)."""
    return sum((confusion_matrix(t, p, size) for t, p in zip(targets, predictions)),
               np.zeros((size, size), dtype=np.int64))


def epoch_budget(runs: Sequence[FoldRun], settings: TrainingSettings) -> int:
    """Epochs of the final head: the median of the epochs that the folds' inner folds chose (0: the
    prefitted branch alone); every epoch of the schedule when no fold could make inner folds."""
    chosen = [r.choice.epochs for r in runs if r.choice.inner_folds]
    return int(np.median(chosen)) if chosen else settings.epochs


def training_runs(folds: SpatialFolds, settings: TrainingSettings) -> int:
    """How many heads :func:`cross_validate` trains at most: per fold its inner folds and its own head, then
    the final head (for a progress bar: each counts ``settings.epochs`` steps)."""
    return folds.count * (max(1, settings.inner_folds) + 1) + 1


def cross_validate(tiles: LabelTiles | PackedPixels, folds: SpatialFolds, classes: Sequence[dict[str, Any]],
                   new_head: Callable[[], FewShotHead], settings: TrainingSettings, device: torch.device,
                   baseline: bool, on_epoch: Callable[[str, int, float], None] | None = None) -> FewShotResult:
    """Steps 1-3 of the module's docstring."""
    size = len(classes)
    ids = np.asarray(tiles.labels.ids)
    runs: list[FoldRun] = []
    for f in range(folds.count):
        held_out = folds.held_out(f, ids)

        def fold_phase(name: str, f: int = f) -> Callable[[int, float], None] | None:
            if on_epoch is None:
                return None
            return lambda epoch, loss: on_epoch(f"fold {f + 1} of {folds.count}, {name}", epoch, loss)

        head, history, choice = train_on_split(tiles, held_out, new_head, settings, device, folds.block_m,
                                               fold_phase)
        validation = tiles.targets(held_out, exclude_use=~held_out)
        predictions = predict_cached(head, tiles.features, tiles.image_hw, device)
        baseline_confusion = None
        if baseline:
            training = tiles.targets(~held_out, exclude_use=held_out)
            baseline_confusion = random_forest_confusion(tiles.band_values, training, validation, size,
                                                         seed=settings.seed)
        runs.append(FoldRun(choice, history, confusion_of(predictions, validation, size), baseline_confusion,
                            folds.validated(f)))

    statement = describe(folds)
    held_per_class = folds.held_out_per_class()
    message = _not_validated_message(folds, classes)
    if runs:
        metrics = cross_validated_metrics([r.confusion for r in runs], [r.validated for r in runs], classes,
                                          held_per_class, message)
    else:
        metrics = not_validated(message or statement)
    baseline_metrics: dict[str, Any] | None = None
    if baseline:
        baseline_metrics = {"name": BASELINE_NAME, **(cross_validated_metrics(
            [r.baseline_confusion for r in runs], [r.validated for r in runs], classes, held_per_class, message)
            if runs else not_validated(message or statement))}

    every_label = np.ones(len(ids), dtype=bool)
    budget = epoch_budget(runs, settings)
    torch.manual_seed(settings.seed)
    head = new_head()

    def final_epoch(epoch: int, loss: float) -> None:
        if on_epoch is not None:
            on_epoch("every label", epoch, loss)

    all_targets = tiles.targets(every_label)
    history = train_decoder(head, tiles.features, all_targets, settings, device, final_epoch, epochs_to_run=budget)
    fitted = segmentation_metrics(confusion_of(predict_cached(head, tiles.features, tiles.image_hw, device),
                                                all_targets, size), classes)
    metrics.update({"scheme": folds.scheme, "summary": _summary(statement, metrics),
                    "training_labels": int(len(ids)),
                    "training": {"overall_accuracy": fitted["overall_accuracy"], "miou": fitted["miou"]}})
    metrics.setdefault("held_out_labels", int(held_per_class.sum()))
    if baseline_metrics is not None:
        baseline_metrics["scheme"] = folds.scheme
    validation_json = {**folds.to_json(), "statement": statement, "final_epochs": budget,
                       "inner_folds": settings.inner_folds,
                       "folds_detail": [{"fold": f + 1, **r.choice.to_json()} for f, r in enumerate(runs)]}
    return FewShotResult(head=head, history=history, metrics=metrics, baseline=baseline_metrics,
                         comparison=comparison(metrics, baseline_metrics), validation=validation_json, folds=runs)


def epoch_progress(progress: Progress, done_before: int, total: int,
                   epochs: int) -> Callable[[str, int, float], None]:
    """The loop's epoch callback as progress: each fold, then the final head, counts ``epochs`` steps."""
    runs: list[str] = []

    def on_epoch(phase: str, epoch: int, loss: float) -> None:
        if not runs or runs[-1] != phase:
            runs.append(phase)
        step = done_before + (len(runs) - 1) * epochs + epoch + 1
        progress.update(min(step, total - 3), total, f"training ({phase}): epoch {epoch + 1}, loss {loss:.4f}")

    return on_epoch


def _not_validated_message(folds: SpatialFolds, classes: Sequence[dict[str, Any]]) -> str | None:
    """Why some classes (or all) have no figures, or None when every class is validated."""
    validated = folds.validated()
    missing = [f"'{c['name']}'" for c, v in zip(classes, validated) if not v]
    if not missing:
        return None
    if len(missing) == len(classes):
        return ("Not validated: no class has two labels, so none can be held out. Draw a second label of each "
                "class, away from the first")
    return (f"Not validated for {', '.join(missing)}: a class needs two labels or more for one to be held out. "
            "Draw another label of these classes, away from the first")


def _summary(statement: str, metrics: dict[str, Any]) -> str:
    """One line: the figure, its spread and what it rests on."""
    if not metrics.get("validated"):
        return metrics.get("message") or statement

    def figure(key: str) -> str:
        std = metrics.get(f"{key}_std")
        return f"{metrics[key]:.2f}" + (f" ± {std:.2f}" if std is not None else "")

    return f"mIoU {figure('miou')}, overall accuracy {figure('overall_accuracy')}; {statement}"
