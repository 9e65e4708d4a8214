"""The raster's own bands beside a backbone's features: every band at full resolution with its local
means and local spread, and a per-pixel branch of the head that reads them.

Why: a few-shot head on foundation features alone loses what a per-pixel classifier on the bands keeps
(the bundled diffusion backbone reads three bands through a VAE and blurs colour; SkySense's cells average
it), while a per-pixel classifier has no context, so a field's texture or a marsh's mixed pixels come out
as salt and pepper. The branch adds both to the head: the bands (all of them, not only the three a VAE
reads) and their means and standard deviation over a few square windows, the classic multi-scale context
of object-based image analysis. Its logits are added to the backbone head's (a product of experts), so a
head whose backbone features carry nothing useful still maps as well as a linear model on the bands and
their context.

Written by hand because no library offers it as a tensor op: box means are :func:`torch.nn.functional.avg_pool2d`
with stride 1 over a reflect-padded tile (no zero padding darkening the tile's edge).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import Tensor, nn

#: Side of the square windows the local means are taken over, in pixels of the head's grid (odd).
DEFAULT_WINDOWS_PX = (3, 7, 15)
#: Side of the window of the local standard deviation (texture).
DEFAULT_SPREAD_PX = 7


@dataclass(frozen=True)
class BandContextConfig:
    """Which bands (1-based raster bands, or cells' channels for SkySense) and how they are scaled
    (``low``/``high`` to [-1, 1], as :class:`..raster.bands.BandNormalisation`), and the windows."""

    bands: tuple[int, ...]
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    windows_px: tuple[int, ...] = DEFAULT_WINDOWS_PX
    spread_px: int = DEFAULT_SPREAD_PX

    def __post_init__(self) -> None:
        if not self.bands:
            raise ValueError("band context needs at least one band")
        for size in (*self.windows_px, self.spread_px):
            if size < 1 or size % 2 == 0:
                raise ValueError(f"window sides must be odd and positive, got {size}")
        if self.low and (len(self.low) != len(self.bands) or len(self.high) != len(self.bands)):
            raise ValueError("low and high need one value per band")

    @property
    def channels(self) -> int:
        """Channels of :func:`band_context`'s output."""
        return len(self.bands) * (2 + len(self.windows_px))

    def to_json(self) -> dict[str, Any]:
        return {"bands": list(self.bands), "low": list(self.low), "high": list(self.high),
                "windows_px": list(self.windows_px), "spread_px": self.spread_px}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BandContextConfig:
        return cls(bands=tuple(int(b) for b in data["bands"]), low=tuple(map(float, data.get("low", ()))),
                   high=tuple(map(float, data.get("high", ()))),
                   windows_px=tuple(int(w) for w in data.get("windows_px", DEFAULT_WINDOWS_PX)),
                   spread_px=int(data.get("spread_px", DEFAULT_SPREAD_PX)))


def _box_mean(values: Tensor, size: int) -> Tensor:
    if size == 1:
        return values
    pad = size // 2
    mode = "reflect" if min(values.shape[-2:]) > pad else "replicate"
    return F.avg_pool2d(F.pad(values, (pad, pad, pad, pad), mode=mode), size, stride=1)


def band_context(values: Tensor, windows_px: Sequence[int] = DEFAULT_WINDOWS_PX,
                 spread_px: int = DEFAULT_SPREAD_PX) -> Tensor:
    """(B, C, H, W) scaled bands -> (B, C * (2 + windows), H, W): the bands, their box means over each
    window, and their standard deviation over ``spread_px``."""
    values = values.float()
    means = [_box_mean(values, size) for size in windows_px]
    mean = _box_mean(values, spread_px)
    spread = (_box_mean(values * values, spread_px) - mean * mean).clamp_min(0.0).sqrt()
    return torch.cat([values, *means, spread], dim=1)


#: L2 penalty of the branch's fit, on the mean class-weighted cross entropy of standardised channels: the
#: labelled pixels of one polygon are near copies, so the penalty is sized to a few dozen labels, not to the
#: thousands of pixels they cover.
DEFAULT_L2 = 1e-3


class BandContextBranch(nn.Module):
    """Per-pixel logits from :func:`band_context`'s channels: a multinomial logistic regression on the
    standardised channels, fitted to convergence (:meth:`fit`, L-BFGS) before the head trains and then
    frozen. The head's logits are added to it and start at zero, so the head learns what the backbone's
    features add to the bands, and the inner folds of the training labels decide how much that is
    (:func:`..training.fewshot.choose_epochs`; 0 epochs: the branch alone).

    Why not train it with the head: the few-shot loop runs a few hundred AdamW steps, which leaves a linear
    model from scratch far from its optimum (measured: below a per-pixel random forest on the bands)."""

    def __init__(self, in_chs: int, num_classes: int, l2: float = DEFAULT_L2) -> None:
        super().__init__()
        self.in_chs, self.num_classes, self.l2 = int(in_chs), int(num_classes), float(l2)
        self.register_buffer("shift", torch.zeros(self.in_chs))
        self.register_buffer("scale", torch.ones(self.in_chs))
        self.linear = nn.Conv2d(self.in_chs, self.num_classes, 1)

    def config(self) -> dict[str, Any]:
        return {"l2": self.l2}

    def fit(self, x: Tensor, y: Tensor, class_weight: Tensor | None = None, max_iter: int = 200) -> None:
        """Fit on pixels ``x`` (N, C) with classes ``y`` (N,): standardise each channel, then minimise the
        class-weighted mean cross entropy plus ``l2`` / 2 times the squared weights; then freeze."""
        x = x.float()
        with torch.no_grad():
            self.shift.copy_(x.mean(0))
            std = x.std(0, unbiased=False)
            self.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        z = (x - self.shift) / self.scale
        weight = self.linear.weight
        with torch.no_grad():
            weight.zero_()
            self.linear.bias.zero_()
        self.linear.requires_grad_(True)
        optimizer = torch.optim.LBFGS(self.linear.parameters(), lr=1.0, max_iter=max_iter,
                                      line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            logits = z @ weight[:, :, 0, 0].T + self.linear.bias
            loss = F.cross_entropy(logits, y, weight=class_weight) + 0.5 * self.l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        self.linear.requires_grad_(False)

    def forward(self, context: Tensor) -> Tensor:
        scaled = (context.float() - self.shift[:, None, None]) / self.scale[:, None, None]
        return self.linear(scaled)


def prefit_branch(branch: BandContextBranch, contexts: Sequence[Tensor], targets: Sequence[Any],
                  class_weight: Tensor, device: torch.device) -> bool:
    """Fit ``branch`` on the labelled pixels of tiles: ``contexts[i]`` (1, C, H, W) is tile i's band context,
    ``targets[i]`` its (H, W) classes, negative where unlabelled; the branch then lives on ``device``. False
    when no pixel is labelled."""
    xs, ys = [], []
    for context, target in zip(contexts, targets):
        target = torch.as_tensor(target)
        keep = target >= 0
        if keep.any():
            xs.append(context[0][:, keep].T)
            ys.append(target[keep])
    if not xs:
        return False
    branch.fit(torch.cat(xs), torch.cat(ys), class_weight.cpu())
    branch.to(device)
    return True
