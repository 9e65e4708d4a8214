"""SkySense (Fig. 2): factorized multi-modal spatiotemporal encoder, attentional geo-context integration and a
per-pixel classifier head.

``forward(inputs)`` takes a dict with any non-empty subset of the modalities:

- ``"hr"``: (B, C, H, W) high-resolution image; optional ``"hr_doy"`` (B,) its day of year;
- ``"s2"``: (B, T, C, H, W) Sentinel-2 series with ``"s2_doy"`` (B, T) days of year 1..366;
- ``"s1"``: (B, T, C, H, W) Sentinel-1 series with ``"s1_doy"`` (B, T);
- optional ``"s2_valid"`` / ``"s1_valid"`` (B, T) bool, False for padded time steps;
- optional ``"s2_bands"`` (``"hr_bands"``, ``"s1_bands"``) (B, C) bool: the bands the raster holds, for an
  encoder with a band mask (missing ones zero-filled; see :meth:`SkySense.encode_modality`);
- ``"lonlat"`` (B, 2): the tile's centre in degrees, which picks the prototype region.

and returns a ``features_only``-like dict (see :meth:`SkySense.forward`). :attr:`SkySense.feature_info`
describes the per-pixel feature output for the shared few-shot head training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import Tensor, nn

from ...errors import UserError
from ..band_context import DEFAULT_SPREAD_PX, DEFAULT_WINDOWS_PX, BandContextBranch, band_context
from ..saved_folder import save_model_files
from .config import GRID_PRIORITY, SkySenseConfig
from .encoders import ModalityAdapter, SpatialEncoder, resize_to_grid
from .heads import PixelClassifier
from .prototypes import GeoContextIntegration, PrototypeBank, cosine_similarity_matrix
from .regions import RegionGrid
from .temporal import DayOfYearEncoding, TemporalFusion

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class SkySense(nn.Module):
    def __init__(self, config: SkySenseConfig) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleDict({m: SpatialEncoder(config.encoders[m]) for m in config.modalities})
        self.adapters = nn.ModuleDict({
            m: ModalityAdapter(self.encoders[m].out_chs, config.dim, config.encoders[m].up_scale,
                               config.encoders[m].up_chs)
            for m in config.modalities
        })
        self.date_encoding = DayOfYearEncoding(config.dim)
        self.fusion = TemporalFusion(config.dim, config.fusion_depth, config.fusion_heads, config.fusion_mlp_ratio)
        self.prototypes = PrototypeBank(config.num_regions, config.prototypes_per_region, config.dim,
                                        learned=config.prototype_regions)
        self.geo_context = GeoContextIntegration()
        self.regions = RegionGrid(*config.region_grid)
        self.head = PixelClassifier(2 * config.dim, config.num_classes) if config.classes else None
        self.band_branch = self._band_branch(config.num_classes) if config.classes and config.band_context \
            else None

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The per-pixel output ``features`` as one pyramid level: 2d channels on the fused grid, whose
        cell is one Sentinel-2 pixel (reduction relative to the grid modality's own pixels)."""
        grid = next(m for m in GRID_PRIORITY if m in self.config.encoders)
        enc = self.encoders[grid]
        return [{"num_chs": 2 * self.config.dim, "reduction": enc.reduction // self.adapters[grid].up_scale,
                 "module": "features", "grid_modality": grid}]

    def attach_head(self, classes: list[dict[str, Any]], band_context: dict[str, Any] | None = None) -> PixelClassifier:
        """A new linear head for ``classes`` ({"id", "name", "colour"}), replacing any earlier one; with
        ``band_context`` ({"modalities", "modality_channels": {m: bands}, "windows_px", "spread_px",
        "cell_spread"}), a per-cell band branch beside it (:mod:`..band_context`), and the head starts at zero."""
        if not classes:
            raise ValueError("a head needs at least one class")
        self.config.classes = [dict(c) for c in classes]
        self.config.band_context = dict(band_context or {})
        device = self.date_encoding.weight.device
        self.head = PixelClassifier(2 * self.config.dim, len(classes)).to(device)
        self.band_branch = self._band_branch(len(classes))
        if self.band_branch is not None:
            self.band_branch.to(device)
            nn.init.zeros_(self.head.linear.weight)
            nn.init.zeros_(self.head.linear.bias)
        return self.head

    def _band_branch(self, num_classes: int) -> BandContextBranch | None:
        context = self.config.band_context
        if not context:
            return None
        channels = {m: int(c) for m, c in context["modality_channels"].items()}
        width = sum(channels.values()) * (2 + len(context.get("windows_px", DEFAULT_WINDOWS_PX)))
        width += sum(channels[m] for m in context.get("cell_spread", ()))
        return BandContextBranch(width, num_classes, **context.get("branch", {}))

    def cell_context(self, inputs: dict[str, Tensor], grid_hw: tuple[int, int]) -> Tensor:
        """The head's band context on the fused grid (:func:`cell_band_context` with ``config.band_context``).

        A modality the head was trained with but not given (the model runs on fewer, and says so) reads as
        the training pixels' mean: after the branch's standardisation its channels are 0 and add nothing."""
        context = self.config.band_context
        modalities = list(context["modalities"])
        channels = {m: int(c) for m, c in context["modality_channels"].items()}
        windows = tuple(context.get("windows_px", DEFAULT_WINDOWS_PX))
        given = [m for m in modalities if inputs.get(m) is not None]
        if not given:
            raise UserError(f"This head reads the bands of {', '.join(modalities)} beside the features; give at "
                            "least one of them")
        batch = torch.as_tensor(inputs[given[0]]).shape[0]
        filled = dict(inputs)
        for m in modalities:
            if m not in given:
                filled[m] = torch.zeros(batch, 1, channels[m], *grid_hw, device=self.date_encoding.weight.device)
                filled.pop(f"{m}_valid", None)
            elif torch.as_tensor(inputs[m]).shape[-3] != channels[m]:
                raise UserError(f"This head reads {channels[m]} {m} bands beside the features; the {m} input has "
                                f"{torch.as_tensor(inputs[m]).shape[-3]}. Give the bands it was trained with")
        cell_spread = list(context.get("cell_spread", ()))
        out = cell_band_context(filled, modalities, grid_hw, windows, int(context.get("spread_px", DEFAULT_SPREAD_PX)),
                                cell_spread)
        if len(given) < len(modalities) and self.band_branch is not None:
            absent = torch.cat([torch.full((channels[m],), m not in given, dtype=torch.bool) for m in modalities])
            spread_absent = [torch.full((channels[m],), m not in given, dtype=torch.bool) for m in cell_spread]
            absent = torch.cat([absent.repeat(2 + len(windows)), *spread_absent]).to(out.device)
            out[:, absent] = self.band_branch.shift.to(out.dtype)[absent][None, :, None, None]
        return out

    # -- eq. 1: spatial features per modality ------------------------------------------------------
    def encode_modality(self, name: str, images: Tensor, present: Tensor | None = None) -> Tensor:
        """F_i = g_i(x_i), then the adapter to width d: images (B, T, C, H, W) -> (B, T, d, h, w).

        ``present`` (B, C) bool: which bands the input holds, for an encoder with a band mask
        (:attr:`EncoderConfig.band_mask`); missing bands are zeroed and the mask is appended as C more
        channels. None: every band is present."""
        encoder = self.encoders[name]
        b, t = images.shape[:2]
        if images.shape[2] != encoder.in_chans:
            raise UserError(f"The {name} input has {images.shape[2]} bands; this SkySense reads {encoder.in_chans} "
                            f"({', '.join(self.config.encoders[name].bands)})")
        if self.config.encoders[name].band_mask:
            mask = (torch.ones(b, images.shape[2], dtype=images.dtype, device=images.device) if present is None
                    else present.to(images.device, images.dtype).reshape(b, images.shape[2]))
            mask = mask[:, None, :, None, None]
            images = torch.cat([images * mask, mask.expand_as(images)], dim=2)
        elif present is not None and not bool(present.all()):
            raise UserError(f"This SkySense's {name} encoder reads every band of "
                            f"{', '.join(self.config.encoders[name].bands)}; it has no band mask for missing ones")
        features = self.adapters[name](encoder(images.flatten(0, 1)))
        return features.unflatten(0, (b, t))

    def _modality_inputs(self, inputs: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor | None, Tensor | None]]:
        """(images (B, T, C, H, W), days of year (B, T) or None, valid (B, T) or None) per given modality."""
        given = [m for m in ("hr", "s2", "s1") if inputs.get(m) is not None]
        if not given:
            raise UserError("SkySense needs at least one input: a high-resolution image, a Sentinel-2 or a "
                            "Sentinel-1 series")
        missing = [m for m in given if m not in self.encoders]
        if missing:
            raise UserError(f"This SkySense ({self.config.name}) has no encoder for {', '.join(missing)}; it reads "
                            f"{', '.join(self.config.modalities)}")
        out = {}
        for m in given:
            x = inputs[m]
            temporal = self.config.encoders[m].temporal
            if x.ndim == 4 and not temporal:
                x = x.unsqueeze(1)
            if x.ndim != 5:
                raise UserError(f"The {m} input must be {'(B, T, C, H, W)' if temporal else '(B, C, H, W)'}, "
                                f"got shape {tuple(x.shape)}")
            doy = inputs.get(f"{m}_doy") if self.config.encoders[m].date_encoding else None
            if doy is None and temporal and self.config.encoders[m].date_encoding:
                raise UserError(f"The {m} series needs its acquisition dates ({m}_doy)")
            if doy is not None:
                doy = torch.as_tensor(doy, device=x.device).reshape(x.shape[0], x.shape[1])
            valid = inputs.get(f"{m}_valid")
            out[m] = (x, doy, None if valid is None else valid.to(torch.bool).reshape(x.shape[0], x.shape[1]))
        return out

    def forward(self, inputs: dict[str, Tensor], grid_hw: tuple[int, int] | None = None,
                return_modality_features: bool = False) -> dict[str, Any]:
        """Returns:

        - ``features``: F_fus (B, 2d, h, w), the fused feature after geo-context concatenation (eq. 3);
        - ``fused``: F_fus^mm (B, d, h, w), before geo-context;
        - ``context``: the attended prototype mixture (B, d, h, w);
        - ``prototype_similarity``: cosine similarity to each prototype of the region (B, N_p, h, w), eq. 11;
        - ``region``: (B,) region index of each sample;
        - ``logits``: (B, classes, h, w) when a head is attached;
        - ``modality_features`` (when asked): {modality: F_i (B, T, d, h, w) on the fused grid}.
        """
        modal = self._modality_inputs(inputs)
        if inputs.get("lonlat") is None:
            raise UserError("SkySense needs the area's location (lonlat) to choose its prototype region")
        batch = next(iter(modal.values()))[0].shape[0]
        features: dict[str, Tensor] = {m: self.encode_modality(m, x, inputs.get(f"{m}_bands"))
                                       for m, (x, _, _) in modal.items()}
        if grid_hw is None:
            grid_modality = next(m for m in GRID_PRIORITY if m in features)
            grid_hw = tuple(features[grid_modality].shape[-2:])
        h, w = grid_hw
        tokens, padding = [], []
        for m, (_, doy, valid) in modal.items():
            f = resize_to_grid(features[m].flatten(0, 1), grid_hw).unflatten(0, features[m].shape[:2])
            features[m] = f
            if doy is not None:  # F_T^date = F_T + P_DTPE[:, t, :] (eq. 2), where the configuration adds it
                f = f + self.date_encoding(doy)[..., None, None]
            tokens.append(f)
            padding.append(torch.zeros(f.shape[:2], dtype=torch.bool, device=f.device) if valid is None else ~valid)
        f_t = torch.cat(tokens, dim=1)  # F_T = Concat[F_HR, F_Ms, F_SAR] (eq. 1): (B, N_T, d, h, w)
        n_t = f_t.shape[1]
        f_t = f_t.permute(0, 3, 4, 1, 2).reshape(batch * h * w, n_t, self.config.dim)
        pad = torch.cat(padding, dim=1)
        if bool(pad.all(dim=1).any()):
            raise UserError("A sample has no valid time step in any modality")
        pad = pad[:, None, None, :].expand(batch, h, w, n_t).reshape(batch * h * w, n_t)
        fused = self.fusion(f_t, pad if bool(pad.any()) else None).reshape(batch, h * w, self.config.dim)

        region = self.regions.index(torch.as_tensor(inputs["lonlat"]).reshape(batch, 2)).to(fused.device)
        prototypes = self.prototypes.select(region).to(fused.dtype)
        combined, _ = self.geo_context(fused, prototypes)
        similarity = cosine_similarity_matrix(fused, prototypes)

        def to_map(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(batch, x.shape[-1], h, w)

        out: dict[str, Any] = {
            "features": to_map(combined),
            "fused": to_map(fused),
            "context": to_map(combined[..., self.config.dim:]),
            "prototype_similarity": to_map(similarity),
            "region": region,
        }
        if self.head is not None:
            out["logits"] = self.head(out["features"])
            if self.band_branch is not None:
                out["band_context"] = self.cell_context(inputs, (h, w))
                out["logits"] = out["logits"] + self.band_branch(out["band_context"])
        if return_modality_features:
            out["modality_features"] = features
        return out

    # -- save / load ---------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder``, each whole under a temporary name
        renamed into place; other files there are kept, and a folder holding another model is refused."""
        from safetensors.torch import save

        self.config.prototype_regions = self.prototypes.learned_regions
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = json.dumps(self.config.to_json(), indent=2).encode("utf-8")
        return save_model_files(folder, "SkySense model", {WEIGHTS_NAME: save(state, metadata={"format": "pt"}),
                                                           CONFIG_NAME: config})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> SkySense:
        """A model from a folder written by :meth:`save_pretrained`, in eval mode."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise UserError(f"{folder} is not a SkySense folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{config_path} is not valid JSON: {exc}") from None
        model = cls(SkySenseConfig.from_json(data, str(config_path)))
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{weights_path} is corrupt or truncated: {exc}") from None
        load_checked(model, state, str(weights_path))
        return model.eval()


def cell_band_context(inputs: dict[str, Tensor], modalities: list[str], grid_hw: tuple[int, int],
                      windows_px: tuple[int, ...] = DEFAULT_WINDOWS_PX,
                      spread_px: int = DEFAULT_SPREAD_PX, cell_spread: Sequence[str] = ()) -> Tensor:
    """The band context on the fused grid (B, C', h, w): each modality's bands as cell values (a series' mean
    over its valid dates, so the channels do not depend on how many dates are given; a high-resolution
    image's mean over each cell), then :func:`..band_context.band_context`; then, for each modality of
    ``cell_spread``, its bands' standard deviation within each cell (the texture of a high-resolution image
    that a cell mean averages away; 0 for an input at the grid's resolution)."""
    planes, spreads = [], []
    for m in modalities:
        x = inputs.get(m)
        if x is None:
            raise UserError(f"This head reads the {m} bands beside the features; give the {m} input it was trained "
                            "with")
        x = torch.as_tensor(x).float()
        if x.ndim == 4:
            x = x.unsqueeze(1)
        valid = inputs.get(f"{m}_valid")
        weight = torch.ones(x.shape[:2], device=x.device) if valid is None else \
            torch.as_tensor(valid).to(x.device, torch.float32).reshape(x.shape[:2])
        mean = (x * weight[:, :, None, None, None]).sum(1) / weight.sum(1).clamp_min(1.0)[:, None, None, None]
        cell = mean if tuple(mean.shape[-2:]) == tuple(grid_hw) else F.adaptive_avg_pool2d(mean, grid_hw)
        if m in cell_spread:
            square = mean * mean if cell is mean else F.adaptive_avg_pool2d(mean * mean, grid_hw)
            spreads.append((square - cell * cell).clamp_min(0.0).sqrt())
        planes.append(cell)
    context = band_context(torch.cat(planes, dim=1), windows_px, spread_px)
    return torch.cat([context, *spreads], dim=1) if spreads else context


def load_checked(model: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """``load_state_dict`` that says, in words, which weights are missing, unexpected or of another shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise UserError(f"The weights in {where} do not fit this SkySense configuration: {'; '.join(parts)}")
    model.load_state_dict(state)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameters per part, and the prototype buffer's size (a buffer, not trained by gradients)."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total_parameters"] = sum(p.numel() for p in model.parameters())
    counts["prototype_values"] = int(model.prototypes.prototypes.numel()) if hasattr(model, "prototypes") else 0
    return counts
