"""DiffusionSat's numerical metadata embedding (Khanna et al., ICLR 2024, Sec. 3.1, "metadata conditioning").

DiffusionSat's UNet (``SatUNet``) adds to the time embedding of every ResNet block one term per metadata
value: each of the 7 values (longitude, latitude, ground sample distance, cloud cover, year, month, day)
goes through the UNet's own sinusoidal timestep projection, then through its own two-layer MLP
(``metadata_embedding.<i>``, a diffusers ``TimestepEmbedding``), and the 7 outputs are summed into the
time embedding::

    emb = MLP_t(proj(t)) + sum_i MLP_i(proj(m_i))

"No metadata" is, in DiffusionSat's code, the metadata set to zeros before the projection (the
unconditional branch of its pipeline, and the community port's default when none is given): a constant
``c0 = sum_i MLP_i(proj(0))`` added to every time embedding. Terrafuse folds ``c0`` into the bias of the
time embedding's last layer once at load (:func:`fold_zero_metadata`), so the default costs nothing; the
tile's real metadata adds ``MLP(m) - c0`` through a hook on the time embedding (:func:`metadata_conditioning`).

Normalisation (DiffusionSat's ``fmow_numerical_metadata`` then ``metadata_normalize``, scale 1000):
longitude ``(lon + 180) / 360``, latitude ``(lat + 90) / 180``, GSD in metres of the image as the model
sees it ``/ 1 m``, cloud cover as a fraction, ``(year - 1980) / 120``, ``month / 12``, ``day / 31``, each
times 1000. Unknown values are 0, as DiffusionSat's data loaders set them (no date: year, month and day 0;
no cloud cover: 0).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import UserError

log = logging.getLogger("terrafuse.models")

PREFIX = "metadata_embedding."
#: DiffusionSat's metadata, in the order of its ``metadata`` vector.
METADATA_FIELDS = ("longitude", "latitude", "gsd", "cloud_cover", "year", "month", "day")
#: How a feature extractor conditions the UNet: DiffusionSat's zeros ("none") or the tile's own metadata.
METADATA_MODES = ("none", "tile")
SCALE = 1000.0
BASE_LON, BASE_LAT, BASE_YEAR, MAX_YEAR, MAX_GSD_M = 180.0, 90.0, 1980, 2100, 1.0


@dataclass(frozen=True)
class TileMetadata:
    """What DiffusionSat was conditioned on, for one tile: the centre's position (degrees, WGS 84), the ground
    sample distance of the pixels the model sees (m), cloud cover (fraction 0..1) and date where known."""

    longitude: float
    latitude: float
    gsd_m: float
    cloud_cover: float | None = None
    date: dt.date | None = None

    def __post_init__(self) -> None:
        if not (-180.0 <= self.longitude <= 180.0 and -90.0 <= self.latitude <= 90.0):
            raise UserError(f"The tile centre ({self.longitude}, {self.latitude}) is not a longitude and latitude")
        if not self.gsd_m > 0:
            raise UserError(f"The ground sample distance must be positive, got {self.gsd_m}")

    def normalised(self) -> list[float]:
        """The 7 values DiffusionSat's UNet takes (its ``metadata_normalize`` of its numerical metadata)."""
        year = month = day = 0.0
        if self.date is not None:
            year, month, day = float(self.date.year - BASE_YEAR), float(self.date.month), float(self.date.day)
        values = [
            (self.longitude + BASE_LON) / (180.0 + BASE_LON),
            (self.latitude + BASE_LAT) / (90.0 + BASE_LAT),
            self.gsd_m / MAX_GSD_M,
            float(self.cloud_cover or 0.0),
            year / (MAX_YEAR - BASE_YEAR),
            month / 12.0,
            day / 31.0,
        ]
        return [v * SCALE for v in values]

    @classmethod
    def from_bounds(cls, crs: Any, bounds: tuple[float, float, float, float], gsd_m: float,
                    cloud_cover: float | None = None, date: dt.date | None = None) -> TileMetadata:
        """The metadata of a tile whose ``bounds`` (left, bottom, right, top) are in ``crs`` (anything rasterio
        reads): its centre in WGS 84 longitude and latitude, as DiffusionSat takes a scene's centroid."""
        from rasterio.warp import transform

        x = (bounds[0] + bounds[2]) / 2
        y = (bounds[1] + bounds[3]) / 2
        lon, lat = transform(crs, "EPSG:4326", [x], [y])
        return cls(longitude=float(lon[0]), latitude=float(lat[0]), gsd_m=gsd_m, cloud_cover=cloud_cover, date=date)

    def to_json(self) -> dict[str, Any]:
        return {"longitude": self.longitude, "latitude": self.latitude, "gsd_m": self.gsd_m,
                "cloud_cover": self.cloud_cover, "date": self.date.isoformat() if self.date else None}


def parse_date(text: str | None) -> dt.date | None:
    """``YYYY-MM-DD`` (or empty) as a date; a user gives it, so a bad one is a UserError."""
    if not text:
        return None
    try:
        return dt.date.fromisoformat(str(text).strip()[:10])
    except ValueError:
        raise UserError(f"The acquisition date {text!r} is not a date (YYYY-MM-DD)") from None


class MetadataEmbedding(nn.Module):
    """The ``metadata_embedding`` MLPs of a SatUNet and the UNet's sinusoidal projection they share.

    ``forward(metadata)`` (B, 7) normalised values -> (B, time_embed_dim): ``sum_i MLP_i(proj(m_i))``.
    """

    def __init__(self, mlps: nn.ModuleList, time_proj: nn.Module) -> None:
        super().__init__()
        self.mlps = mlps
        object.__setattr__(self, "time_proj", time_proj)  # the UNet's own module, not a copy or a child

    @property
    def num_metadata(self) -> int:
        return len(self.mlps)

    def forward(self, metadata: Tensor) -> Tensor:
        if metadata.ndim != 2 or metadata.shape[1] != self.num_metadata:
            raise ValueError(f"metadata must be (B, {self.num_metadata}), got {tuple(metadata.shape)}")
        batch = metadata.shape[0]
        dtype = self.mlps[0].linear_1.weight.dtype
        projected = self.time_proj(metadata.reshape(-1)).reshape(batch, self.num_metadata, -1).to(dtype)
        return sum(mlp(projected[:, i]) for i, mlp in enumerate(self.mlps))

    def zero_term(self) -> Tensor:
        """c0 = sum_i MLP_i(proj(0)): what DiffusionSat adds when it has no metadata, (time_embed_dim,)."""
        device = self.mlps[0].linear_1.weight.device
        return self(torch.zeros(1, self.num_metadata, device=device))[0]


def read_metadata_weights(unet_folder: Path) -> dict[str, Tensor]:
    """The ``metadata_embedding.*`` tensors of the UNet weights in ``unet_folder`` (safetensors, or a
    ``.bin`` read with ``torch.load(weights_only=True)``); empty when it has none."""
    from safetensors import safe_open

    files = sorted(unet_folder.glob("diffusion_pytorch_model*.safetensors"))
    files = [f for f in files if ".fp16." not in f.name] or files
    state: dict[str, Tensor] = {}
    if files:
        for path in files:
            with safe_open(str(path), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                    if key.startswith(PREFIX):
                        state[key[len(PREFIX):]] = weights.get_tensor(key)
        return state
    for path in sorted(unet_folder.glob("diffusion_pytorch_model*.bin")):
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        state.update({k[len(PREFIX):]: v for k, v in loaded.items() if k.startswith(PREFIX)})
    return state


def build_metadata_embedding(unet: Any, state: dict[str, Tensor], where: Path) -> MetadataEmbedding | None:
    """The MLPs of ``state`` (keys ``<i>.linear_1.weight`` ...) as DiffusionSat builds them (diffusers'
    ``TimestepEmbedding(proj_dim, time_embed_dim)``, SiLU between), checked against the UNet's sizes."""
    from diffusers.models.embeddings import TimestepEmbedding

    if not state:
        return None
    indices = sorted({int(key.split(".", 1)[0]) for key in state})
    if indices != list(range(len(indices))):
        raise UserError(f"The metadata embedding of {where} has MLPs {indices}: not numbered 0..n-1")
    proj_dim = int(unet.time_embedding.linear_1.in_features)
    time_dim = int(unet.time_embedding.linear_2.out_features)
    mlps = nn.ModuleList(TimestepEmbedding(proj_dim, time_dim) for _ in indices)
    try:
        mlps.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"The metadata embedding of {where} does not fit its UNet ({str(exc)[:200]})") from None
    return MetadataEmbedding(mlps, unet.time_proj).requires_grad_(False).eval()


def can_fold(unet: Any) -> bool:
    """A constant added after the time embedding's last linear layer equals one added to its bias only when
    nothing follows that layer (no ``post_act``), as in SD 2 and DiffusionSat."""
    return getattr(unet.time_embedding, "post_act", None) is None


@torch.no_grad()
def fold_zero_metadata(unet: Any, embedding: MetadataEmbedding) -> Tensor:
    """Add c0 (DiffusionSat's no-metadata term) to the bias of the time embedding's last layer, computed in
    float32 and cast once; returns c0 (float32)."""
    linear = unet.time_embedding.linear_2
    zero_term = embedding.to(torch.float32).zero_term().float()
    linear.bias.copy_((linear.bias.float() + zero_term.to(linear.bias.device)).to(linear.bias.dtype))
    return zero_term


@contextmanager
def metadata_conditioning(unet: Any, embedding: MetadataEmbedding, metadata: Tensor, folded: Tensor | None
                          ) -> Iterator[None]:
    """While open, every UNet call's time embedding gets ``MLP(metadata)`` (B, 7) instead of the folded c0:
    a forward hook on ``unet.time_embedding`` adds ``MLP(m) - c0`` (or ``MLP(m)`` when nothing was folded)."""
    with torch.no_grad():
        term = embedding(metadata.to(device=embedding.mlps[0].linear_1.weight.device, dtype=torch.float32))
        if folded is not None:
            term = term - folded.to(term.device)

    def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        if output.shape[0] != term.shape[0]:
            raise ValueError(f"{term.shape[0]} metadata rows for a batch of {output.shape[0]}")
        return output + term.to(device=output.device, dtype=output.dtype)

    handle = unet.time_embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
