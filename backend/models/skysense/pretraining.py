"""Self-supervised pretraining of SkySense on the user's own unlabelled imagery (Sec. 3.3, Fig. 3).

One step: two augmented views u and v of a batch go through the student and the teacher (eq. 4); the loss
is L = alpha L_MGCL + beta L_align (eq. 14); after the optimiser step the teacher follows the student by EMA
and the student's prototypes of every region in the batch are updated by Geo-Context Prototype Learning
(eq. 11-13), which has no loss term.

Views differ by photometric changes and date jitter only, never by geometry, so that a pixel of u and the
same pixel of v show the same place (the correspondence eq. 5 needs); the paper's multi-crop is left out.

Band dropout (Terrafuse's, for encoders with a band mask): the student's view u loses bands (a band subset
that real products carry, such as Landsat's, or a random one), the teacher's view v keeps every band the data
has, so the student learns to give from fewer bands the features the teacher gives from all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...progress import Progress
from ...raster.sensors import COMMON_S2_SUBSETS
from .ema import ema_update, make_teacher
from .losses import DINOLoss, ProjectionHead, cross_modal_alignment, fine_grained_loss
from .model import SkySense

LEVELS = ("pix", "obj", "img")


@dataclass
class PretrainingSettings:
    alpha: float = 1.0  # weight of L_MGCL (eq. 14)
    beta: float = 1.0  # weight of L_align (eq. 14)
    teacher_momentum: float = 0.996
    prototype_momentum: float = 0.99  # m of eq. 13
    head_dim: int = 256  # K logits of the DINO heads
    num_clusters: int = 8  # N_C of eq. 6
    date_jitter_days: int = 8  # "random disturbances on the RSI acquisition date" (Sec. 4.1)
    band_dropout: float = 0.0  # probability that a sample of the student's view loses bands (band-mask encoders)


def band_subsets(bands: list[str]) -> list[list[int]]:
    """The indices in ``bands`` of the subsets real products carry (:data:`.sensors.COMMON_S2_SUBSETS`)."""
    return [[bands.index(b) for b in subset] for subset in COMMON_S2_SUBSETS if set(subset) <= set(bands)]


def drop_bands(present: Tensor, generator: torch.Generator, probability: float,
               subsets: list[list[int]]) -> Tensor:
    """Band dropout: ``present`` (B, C) bool with, for each sample with ``probability``, bands removed: half the
    time a subset of ``subsets`` (intersected with what the sample has), else each band kept with probability
    one half. A sample always keeps at least one band it has."""
    out = present.clone()
    batch, count = present.shape
    for i in range(batch):
        if float(torch.rand((), generator=generator)) >= probability:
            continue
        if subsets and float(torch.rand((), generator=generator)) < 0.5:
            keep = torch.zeros(count, dtype=torch.bool)
            keep[subsets[int(torch.randint(len(subsets), (), generator=generator))]] = True
        else:
            keep = torch.rand(count, generator=generator) < 0.5
        candidate = present[i].cpu() & keep
        if not bool(candidate.any()):
            held = torch.nonzero(present[i].cpu()).flatten()
            if len(held) == 0:
                continue
            candidate = torch.zeros(count, dtype=torch.bool)
            candidate[held[int(torch.randint(len(held), (), generator=generator))]] = True
        out[i] = candidate.to(out.device)
    return out


def student_view_bands(view: dict[str, Any], model: SkySense, generator: torch.Generator,
                       probability: float) -> dict[str, Any]:
    """``view`` with band dropout on each modality whose encoder has a band mask: ``{m}_bands`` narrowed and
    the dropped bands zeroed (as a raster without them is read)."""
    if probability <= 0:
        return view
    view = dict(view)
    for m, encoder in model.config.encoders.items():
        x = view.get(m)
        if not encoder.band_mask or x is None:
            continue
        b, c = x.shape[0], x.shape[-3]
        present = view.get(f"{m}_bands")
        present = torch.ones(b, c, dtype=torch.bool) if present is None else present.to(torch.bool).cpu()
        mask = drop_bands(present, generator, probability, band_subsets(list(encoder.bands)))
        shape = (b,) + (1,) * (x.ndim - 4) + (c, 1, 1)
        view[m] = x * mask.reshape(shape).to(x)
        view[f"{m}_bands"] = mask.to(x.device)
    return view

def augment_view(inputs: dict[str, Any], generator: torch.Generator, jitter_days: int = 8) -> dict[str, Any]:
    """A photometric view of a batch: per-sample gain and offset per modality, Gaussian noise, and dates
    moved by up to ``jitter_days`` (wrapping around the year). Geometry and location are unchanged."""
    view = dict(inputs)
    for m in ("hr", "s2", "s1"):
        x = inputs.get(m)
        if x is None:
            continue
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        gain = 1.0 + 0.2 * (torch.rand(shape, generator=generator) - 0.5)
        offset = 0.1 * (torch.rand(shape, generator=generator) - 0.5)
        noise = 0.02 * torch.randn(x.shape, generator=generator)
        view[m] = x * gain.to(x) + offset.to(x) + noise.to(x)
        doy = inputs.get(f"{m}_doy")
        if doy is not None and jitter_days > 0:
            shift = torch.randint(-jitter_days, jitter_days + 1, tuple(doy.shape), generator=generator)
            view[f"{m}_doy"] = torch.remainder(doy.long() - 1 + shift.to(doy.device), 365) + 1
    return view


class SkySensePretrainer(nn.Module):
    """Student (the model being trained), teacher (EMA copy) and the DINO heads of L_CL."""

    def __init__(self, student: SkySense, settings: PretrainingSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or PretrainingSettings()
        dim, k = student.config.dim, self.settings.head_dim
        self.student = student
        self.student_heads = nn.ModuleDict({"modal": ProjectionHead(dim, k), "fused": ProjectionHead(2 * dim, k)})
        # The teacher and its heads are kept outside the module tree: they are not trained and not saved.
        object.__setattr__(self, "teacher", make_teacher(student))
        object.__setattr__(self, "teacher_heads", make_teacher(self.student_heads))
        self.losses = nn.ModuleDict({
            f"{branch}_{level}": DINOLoss(k) for branch in (*student.config.modalities, "fused") for level in LEVELS
        })

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def losses_for(self, view_u: dict[str, Any], view_v: dict[str, Any]) -> dict[str, Tensor]:
        """All loss terms and their total (eq. 14) for one pair of views; also the student's F_fus^mm and
        regions for the prototype update, under ``"_fused"`` and ``"_region"``."""
        s = self.settings
        student = self.student(view_u, return_modality_features=True)
        with torch.no_grad():
            teacher = self.teacher(view_v, return_modality_features=True)
        terms: dict[str, Tensor] = {}
        mgcl = student["features"].new_zeros(())
        for m, f_s in student["modality_features"].items():  # sum over i of L_FGCL(F_i, F'_i) (eq. 9)
            f_t = teacher["modality_features"][m]
            parts = fine_grained_loss(f_s, f_t, self.student_heads["modal"], self.teacher_heads["modal"],
                                      {lv: self.losses[f"{m}_{lv}"] for lv in LEVELS}, s.num_clusters)
            for level, value in parts.items():
                terms[f"{m}_{level}"] = value
                mgcl = mgcl + value
        # + L_FGCL(F_fus, F'_fus) (eq. 9): the fused feature as a one-step series
        parts = fine_grained_loss(student["features"][:, None], teacher["features"][:, None],
                                  self.student_heads["fused"], self.teacher_heads["fused"],
                                  {lv: self.losses[f"fused_{lv}"] for lv in LEVELS}, s.num_clusters)
        for level, value in parts.items():
            terms[f"fused_{level}"] = value
            mgcl = mgcl + value
        align = cross_modal_alignment(student["modality_features"])
        terms["mgcl"] = mgcl
        terms["align"] = align
        terms["total"] = s.alpha * mgcl + s.beta * align
        terms["_fused"] = student["fused"].detach()
        terms["_region"] = student["region"]
        return terms

    @torch.no_grad()
    def after_step(self, fused: Tensor, region: Tensor) -> None:
        """The teacher's EMA update, then Geo-Context Prototype Learning on the student (eq. 11-13)."""
        update_prototypes(self.student, fused, region, self.settings.prototype_momentum)
        ema_update(self.teacher, self.student, self.settings.teacher_momentum)
        ema_update(self.teacher_heads, self.student_heads, self.settings.teacher_momentum)


@torch.no_grad()
def update_prototypes(model: SkySense, fused: Tensor, region: Tensor, momentum: float) -> dict[int, Tensor]:
    """Eq. 11-13 for every region present: fused F_fus^mm (B, d, h, w), region (B,). Returns the Sinkhorn
    assignment of each region's pixels."""
    pixels = fused.flatten(2).transpose(1, 2)  # (B, h*w, d)
    assignments = {}
    for r in torch.unique(region).tolist():
        assignments[r] = model.prototypes.update(pixels[region == r].flatten(0, 1), r, momentum)
    return assignments


def pretrain(model: SkySense, batches: Iterable[dict[str, Any]], steps: int, progress: Progress | None = None,
             learning_rate: float = 1e-4, settings: PretrainingSettings | None = None,
             seed: int = 0) -> list[dict[str, float]]:
    """Pretrain ``model`` in place for ``steps`` steps on ``batches`` (cycled); the student is the result
    (the paper keeps the teacher for downstream use: copy it with ``model.load_state_dict(trainer.teacher
    .state_dict())`` if wanted). Returns the loss terms of every step."""
    trainer = SkySensePretrainer(model, settings).train()
    optimiser = torch.optim.AdamW(trainer.trainable_parameters(), lr=learning_rate, weight_decay=0.04)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    batches = list(batches)
    if not batches:
        raise ValueError("pretraining needs at least one batch")
    for step in range(steps):
        batch = batches[step % len(batches)]
        jitter = trainer.settings.date_jitter_days
        view_u = student_view_bands(augment_view(batch, generator, jitter), model, generator,
                                    trainer.settings.band_dropout)
        terms = trainer.losses_for(view_u, augment_view(batch, generator, jitter))
        optimiser.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimiser.step()
        trainer.after_step(terms["_fused"], terms["_region"])
        history.append({k: float(v.detach()) for k, v in terms.items() if not k.startswith("_")})
        if progress is not None:
            progress.update(step + 1, steps, f"pretraining step {step + 1} of {steps}: loss {history[-1]['total']:.3f}")
    model.eval()
    return history


#: EMA momentum of one pass of prototype learning on an area (eq. 13): after the default 5 passes the initial
#: prototypes weigh 0.5^5 = 3 % of the result. (Pretraining updates at every step with its own momentum.)
LEARN_MOMENTUM = 0.5
#: Pixels per region that one pass assigns (a deterministic, evenly strided subset beyond that).
MAX_PIXELS_PER_REGION = 65536


@torch.no_grad()
def learn_prototypes(model: SkySense, batches: Iterable[dict[str, Any]], epochs: int = 5,
                     momentum: float = LEARN_MOMENTUM, progress: Progress | None = None, seed: int = 0) -> list[int]:
    """Geo-Context Prototype Learning alone (eq. 11-13) with the network frozen: the cheap way to fit the
    prototypes to the user's area. Returns the regions learned.

    F_fus^mm comes before the geo-context integration (eq. 3) and the network is frozen, so a tile's features
    are the same in every pass: each tile runs once (in a shuffled, seeded order), its pixels are gathered per
    region in the tiles' own order, and each of the ``epochs`` passes is one Sinkhorn assignment and one EMA
    step (eq. 13, ``momentum`` per pass, see :data:`LEARN_MOMENTUM`) per region over all its pixels. The
    result does not depend on the order of the tiles.
    """
    batches = list(batches)
    model.eval()
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed)).tolist()
    total = len(batches) + epochs
    gathered: list[tuple[Tensor, Tensor] | None] = [None] * len(batches)
    for step, index in enumerate(order):
        out = model(batches[index])
        gathered[index] = (out["fused"].flatten(2).transpose(1, 2).cpu(), out["region"].cpu())  # (B, hw, d), (B,)
        if progress is not None:
            progress.update(step + 1, total, f"prototype learning: tile {step + 1} of {len(batches)}")
    by_region: dict[int, list[Tensor]] = {}
    for pixels, region in (g for g in gathered if g is not None):
        for r in torch.unique(region).tolist():
            by_region.setdefault(int(r), []).append(pixels[region == r].flatten(0, 1))
    device = model.prototypes.prototypes.device
    features = {}
    for r, parts in by_region.items():
        values = torch.cat(parts)
        if values.shape[0] > MAX_PIXELS_PER_REGION:
            values = values[torch.linspace(0, values.shape[0] - 1, MAX_PIXELS_PER_REGION).round().long()]
        features[r] = values.to(device)
    for epoch in range(epochs):
        for r in sorted(features):
            model.prototypes.update(features[r], r, momentum)
        if progress is not None:
            done = len(batches) + epoch + 1
            progress.update(done, total, f"prototype learning: pass {epoch + 1} of {epochs}")
    return sorted(features)
