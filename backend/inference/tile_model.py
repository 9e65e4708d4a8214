"""Loading a model from its picklable description (:class:`~.spec.TileModelSpec`) into the callable
:class:`~.spec.TileModel`: numpy batches in, numpy outputs out, so any executor (a thread here, a Ray
worker elsewhere) can run it without knowing the model.

Loaders: ``"segment"`` (SatDiFuser heads, here) and ``"classify"`` and ``"prototypes"`` (SkySense,
:mod:`.skysense_model`: dict batches of per-modality arrays plus ``grid_hw`` in, dicts of the outputs the
writers read out). Another is added with ``register_loader(job, fn)``, ``fn(spec, device) -> TileModel``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError
from .spec import TILE_JOBS, TileModel, TileModelSpec

if TYPE_CHECKING:  # the diffusion package loads diffusers: imported when a segment model loads
    from ..models.diffusion.fast_path import InferenceSettings


class SegmentTileModel:
    """A SatDiFuser head with its backbone: float32 (N, C, H, W) tiles in [-1, 1] -> float32
    (N, K, H, W) class probabilities (softmax of the logits). A head that reads DiffusionSat's metadata per
    tile takes dict batches ``{"images": (N, C, H, W), "metadata": (N, 7)}`` (see
    :mod:`..models.diffusion.metadata`); one with a band context also ``"bands"`` (N, C', H, W)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, provenance: dict[str, Any]) -> None:
        self.model = model
        self.device = device
        self.provenance = provenance
        self.max_batch: int | None = None

    def __call__(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        metadata = bands = None
        if isinstance(batch, dict):
            if "metadata" in batch:
                metadata = torch.from_numpy(np.asarray(batch["metadata"], dtype=np.float32))
            if "bands" in batch:
                bands = torch.from_numpy(np.ascontiguousarray(batch["bands"], dtype=np.float32)).to(self.device)
            batch = batch["images"]
        with torch.inference_mode():
            images = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            extra = {} if bands is None else {"bands": bands}
            logits = self.model(images, **extra) if metadata is None else self.model(images, metadata, **extra)
            probabilities = logits.softmax(1)
            return probabilities.float().cpu().numpy()


def load_segmenter(model_dir: str, backbone_source: str | None, device: torch.device,
                   settings: InferenceSettings | None = None,
                   unet_folder: str | None = None) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """The head with its backbone attached (the backbone from the process's cache) and run with
    ``settings`` (precision, compile), the backbone's provenance (with how the head reads its features) and
    the head's sha256. The UNet folder is ``unet_folder``, else the one the head recorded (for the head's own
    backbone), else the default choice; the backbone's sha256 check refuses a UNet the head was not trained on."""
    from ..hub.checksums import file_sha256
    from ..models.cache import BACKBONES
    from ..models.segmenter import HEAD_WEIGHTS_NAME, SatDiFuser, read_config

    config = read_config(model_dir)
    source = backbone_source or config.backbone.get("source") or config.backbone.get("name")
    if not source:
        raise UserError(f"The head {model_dir} records no backbone; pass one with --backbone")
    if not backbone_source:  # the recorded folder belongs to the recorded backbone; another one is read as usual
        unet_folder = unet_folder or config.features.get("unet_folder")
    try:
        backbone = BACKBONES.get(source, device, unet_folder=unet_folder)
    except UserError as exc:
        raise UserError(f"Cannot load the backbone of this head ({exc}); pass its folder with --backbone") from None
    model = SatDiFuser.from_pretrained(model_dir, backbone=backbone, settings=settings)
    head_sha256 = file_sha256(Path(model_dir) / HEAD_WEIGHTS_NAME)
    provenance = {**backbone.provenance(), "features": model.extractor.describe()}
    return model.to(device), provenance, head_sha256


def _load_segment(spec: TileModelSpec, device: torch.device) -> SegmentTileModel:
    from ..models.diffusion.fast_path import InferenceSettings

    settings = InferenceSettings(precision=spec.params.get("precision") or "auto",
                                 compile=bool(spec.params.get("compile")))
    override = {"unet_folder": spec.params["unet_folder"]} if spec.params.get("unet_folder") else {}
    model, backbone_provenance, head_sha256 = load_segmenter(spec.params["model"], spec.params.get("backbone"),
                                                             device, settings, **override)
    provenance = {"checkpoint_sha256": head_sha256, "head_sha256": head_sha256, **backbone_provenance}
    return SegmentTileModel(model, device, provenance)


def _load_skysense(spec: TileModelSpec, device: torch.device) -> Any:
    # Imported on use: a segment job (and its Ray actors) never loads the SkySense code.
    from .skysense_model import load_skysense

    return load_skysense(spec, device)


_LOADERS: dict[str, Callable[[TileModelSpec, torch.device], Any]] = {"segment": _load_segment}


def register_loader(job: str, loader: Callable[[TileModelSpec, torch.device], Any]) -> None:
    """Make :func:`load_tile_model` load ``job``'s specs with ``loader(spec, device)``."""
    if job not in TILE_JOBS:
        raise ValueError(f"job must be one of {', '.join(TILE_JOBS)}; got {job!r}")
    _LOADERS[job] = loader


register_loader("classify", _load_skysense)
register_loader("prototypes", _load_skysense)


def load_tile_model(spec: TileModelSpec, device: torch.device | str) -> TileModel:
    """The model ``spec`` describes, loaded on ``device``."""
    loader = _LOADERS.get(spec.job)
    if loader is None:
        raise ValueError(f"no tile model loader is registered for {spec.job!r} (see register_loader)")
    return loader(spec, torch.device(device))


def model_sha256(spec: TileModelSpec) -> str:
    """The sha256 of the weights ``spec`` points at, from the files alone (no model load)."""
    from ..hub.checksums import file_sha256
    from ..models.segmenter import HEAD_WEIGHTS_NAME

    if spec.job == "segment":
        weights = Path(spec.params["model"]) / HEAD_WEIGHTS_NAME
        return file_sha256(weights) if weights.is_file() else ""
    if spec.params.get("model"):  # a SkySense folder (a configuration built fresh has no file)
        from ..models.skysense.model import WEIGHTS_NAME

        weights = Path(spec.params["model"]) / WEIGHTS_NAME
        return file_sha256(weights) if weights.is_file() else ""
    return ""
