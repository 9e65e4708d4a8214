"""A frozen latent-diffusion backbone: VAE, UNet, noise schedule and fixed prompt embedding.

Loads any diffusers folder of the Stable-Diffusion-2 architecture, DiffusionSat's included: its UNet
(``SatUNet``) adds ``metadata_embedding``, seven MLPs whose outputs DiffusionSat adds to the time
embedding for position, GSD, cloud cover and date (:mod:`.metadata`). They are loaded too: by default
their "no metadata" term (DiffusionSat's zeros) is folded into the time embedding's bias once, so the UNet
computes what DiffusionSat computes without metadata; the tile's own metadata is an option of the feature
extractor. The rest must match the architecture exactly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...errors import UserError
from ...hub.checksums import files_sha256
from .inversion import PREDICTION_TYPES
from .layout import BackboneLayout, find_layout
from .metadata import PREFIX as METADATA_PREFIX
from .metadata import MetadataEmbedding, build_metadata_embedding, can_fold, fold_zero_metadata, read_metadata_weights
from .prompt import SATELLITE_PROMPT, load_prompt_embedding

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .backbone_config import BackboneConfig
    from .fast_path import CompiledBlocks

log = logging.getLogger("terrafuse.models")

#: Weights present in DiffusionSat's UNet that the plain UNet2DConditionModel has no place for (loaded
#: separately, see :mod:`.metadata`).
IGNORED_UNET_PREFIXES = (METADATA_PREFIX,)


@dataclass
class DiffusionBackbone:
    """Everything feature extraction needs, frozen and in eval mode."""

    name: str
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    alphas_cumprod: Tensor  # (num_train_timesteps,) float64 on the CPU
    prediction_type: str  # "epsilon" or "v_prediction", from the scheduler config
    prompt_embedding: Tensor  # (1, tokens, cross_attention_dim) on the backbone's device and dtype
    prompt_source: str  # "folder", "cache", "text_encoder" or "zeros"
    sha256: str  # content hash of the VAE and UNet files
    scheduler_config: dict[str, Any]
    root: Path
    ignored_unet_keys: tuple[str, ...] = ()
    config: BackboneConfig | None = None
    unet_folder: str = "unet"  # the UNet's folder inside root (checkpoint-150000/unet for DiffusionSat)
    unet_choice: str = ""
    # DiffusionSat's metadata MLPs (float32) and the no-metadata term c0 folded into the time embedding's bias
    # (None: nothing folded, the extractor adds the zeros term itself).
    metadata_embedding: MetadataEmbedding | None = None
    metadata_zero_term: Tensor | None = None
    prompt: str = SATELLITE_PROMPT
    # How the model manager installed it (verified against what, or accepted unverified), when it did.
    install: dict[str, Any] = field(default_factory=dict)
    # How the modules run now (set by fast_path.prepare_backbone): NHWC weights, compiled blocks.
    channels_last: bool = False
    compiled: CompiledBlocks | None = None
    sdpa_checked: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def latent_downsampling(self) -> int:
        """Image pixels per latent pixel (8 for Stable Diffusion's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def unet_downsampling(self) -> int:
        """Latent pixels per pixel of the UNet's coarsest level (8 for three downsamplings)."""
        return 2 ** self.unet.num_upsamplers

    def provenance(self) -> dict[str, Any]:
        """What an output's metadata records about the backbone."""
        embedding = self.metadata_embedding
        return {"backbone": self.name, "backbone_sha256": self.sha256, "prediction_type": self.prediction_type,
                "prompt": self.prompt, "prompt_source": self.prompt_source,
                "ignored_unet_keys": len(self.ignored_unet_keys), "unet_folder": self.unet_folder,
                "unet_choice": self.unet_choice,
                "metadata_embedding": (f"{embedding.num_metadata} MLPs (DiffusionSat), zeros folded into the time "
                                       "embedding" if self.metadata_zero_term is not None else
                                       f"{embedding.num_metadata} MLPs (DiffusionSat)") if embedding else "none",
                **({"backbone_install": dict(self.install)} if self.install else {})}


def read_scheduler(path: Path) -> tuple[dict[str, Any], Tensor, str]:
    """The scheduler config, its ``alphas_cumprod`` (built by diffusers' DDIMScheduler from the betas)
    and its prediction type."""
    from diffusers import DDIMScheduler

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot read the scheduler config {path}: {exc}") from None
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(f"The scheduler of {path.parent.parent} predicts {prediction_type!r}; Terrafuse supports "
                        f"{' and '.join(PREDICTION_TYPES)}")
    scheduler = DDIMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return config, scheduler.alphas_cumprod.to(torch.float64), prediction_type


def _load_component(cls: Any, folder: Path, dtype: torch.dtype) -> tuple[Any, dict[str, list[str]]]:
    from safetensors import SafetensorError

    # Unreadable or truncated weights surface as OSError, ValueError or safetensors' own error; a
    # config that does not fit the weights as a RuntimeError (size mismatch) or ValueError.
    try:
        return cls.from_pretrained(str(folder), torch_dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise UserError(f"Cannot load {folder}: the checkpoint is corrupt, truncated or of another "
                        f"architecture ({type(exc).__name__}: {str(exc)[:300]})") from None


def _check_loading(folder: Path, info: dict[str, list[str]], ignorable: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse missing or mis-shaped weights; report unexpected ones. Returns the ignored keys."""
    missing = list(info.get("missing_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        shown = ", ".join((missing + [str(m) for m in mismatched])[:5])
        raise UserError(f"The checkpoint {folder} does not fit the architecture in its config.json "
                        f"({len(missing)} missing, {len(mismatched)} mis-shaped weights, e.g. {shown})")
    unexpected = sorted(info.get("unexpected_keys", []))
    ignored = tuple(k for k in unexpected if k.startswith(ignorable))
    others = [k for k in unexpected if not k.startswith(ignorable)]
    if ignored:
        log.info("%s: %d weights are not part of the plain UNet and are read apart (%s)", folder, len(ignored),
                 ", ".join(sorted({k.split(".")[0] for k in ignored})))
    if others:
        log.warning("%s: %d weights belong to no module of the UNet and are ignored: %s%s", folder, len(others),
                    ", ".join(others[:5]), " ..." if len(others) > 5 else "")
    return ignored + tuple(others)


def _freeze(module: torch.nn.Module, device: torch.device | str) -> None:
    module.requires_grad_(False)
    module.eval()
    module.to(device)


def _load_metadata_embedding(unet: Any, layout: BackboneLayout,
                             ignored: tuple[str, ...]) -> tuple[MetadataEmbedding | None, Tensor | None]:
    """DiffusionSat's metadata MLPs from the UNet's weights, and c0 folded into the time embedding's bias."""
    if not any(key.startswith(METADATA_PREFIX) for key in ignored):
        return None, None
    embedding = build_metadata_embedding(unet, read_metadata_weights(layout.unet), layout.unet)
    if embedding is None:
        return None, None
    if not can_fold(unet):
        log.info("%s: the metadata term is added at every call (the time embedding has a post-activation)",
                 layout.unet)
        return embedding, None
    zero_term = fold_zero_metadata(unet, embedding)
    log.info("%s: DiffusionSat's %d metadata MLPs loaded; their no-metadata term (zeros) is folded into the time "
             "embedding", layout.unet, embedding.num_metadata)
    return embedding, zero_term


def load_backbone_folder(folder: Path, *, name: str | None = None, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32, config: BackboneConfig | None = None,
                         hash_record_in_folder: bool = True, unet_folder: str | None = None) -> DiffusionBackbone:
    """Load the backbone in a diffusers folder (see :mod:`.layout`), frozen, on ``device`` in ``dtype``;
    ``unet_folder`` overrides which UNet folder of a DiffusionSat release is used."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    layout: BackboneLayout = find_layout(Path(folder), unet_folder)
    scheduler_config, alphas_cumprod, prediction_type = read_scheduler(layout.scheduler_config)
    if config is not None and config.prediction_type and config.prediction_type != prediction_type:
        raise UserError(f"{layout.root} predicts {prediction_type!r}, but the backbone {config.name!r} should "
                        f"predict {config.prediction_type!r}: the folder holds another model")
    sha256 = files_sha256(layout.root, layout.weight_files(), record_in_folder=hash_record_in_folder)
    vae, vae_info = _load_component(AutoencoderKL, layout.vae, dtype)
    _check_loading(layout.vae, vae_info, ())
    unet, unet_info = _load_component(UNet2DConditionModel, layout.unet, dtype)
    ignored = _check_loading(layout.unet, unet_info, IGNORED_UNET_PREFIXES)
    metadata_embedding, zero_term = _load_metadata_embedding(unet, layout, ignored)
    if metadata_embedding is not None:
        ignored = tuple(k for k in ignored if not k.startswith(METADATA_PREFIX))
        metadata_embedding.to(device)
    _freeze(vae, device)
    _freeze(unet, device)
    embedding, prompt_source = load_prompt_embedding(layout.root, layout.text_encoder, layout.tokenizer, sha256,
                                                     int(unet.config.cross_attention_dim))
    backbone = DiffusionBackbone(
        name=name or layout.root.name, vae=vae, unet=unet, alphas_cumprod=alphas_cumprod,
        prediction_type=prediction_type, prompt_embedding=embedding.to(device=device, dtype=dtype),
        prompt_source=prompt_source, sha256=sha256, scheduler_config=scheduler_config, root=layout.root,
        ignored_unet_keys=ignored, config=config, unet_folder=layout.unet_folder, unet_choice=layout.unet_choice,
        metadata_embedding=metadata_embedding, metadata_zero_term=zero_term,
    )
    log.info("backbone %s loaded from %s: sha256 %s, %s, prompt embedding from %s, unet %s (%s)", backbone.name,
             layout.root, sha256[:12], prediction_type, prompt_source, layout.unet_folder, layout.unet_choice)
    return backbone
