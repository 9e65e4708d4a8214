"""Backbone architectures built from their configs with random weights: FLOP counts and timings without a download.

``sd21-architecture`` is Stable Diffusion 2.1's UNet, VAE, OpenCLIP ViT-H text encoder and v-prediction
schedule, with the configs of ``stabilityai/stable-diffusion-2-1`` written out below; DiffusionSat 256 and
512 share it (their UNet adds only 7 small metadata MLPs, folded into a bias at load).
``terrafuse-tiny-architecture`` is the bundled backbone's shape. Random weights give the real cost (FLOPs,
memory, time) and meaningless features: these are for benchmarks, never registered as backbones a user could
train on. On the ``meta`` device nothing is allocated, so counting the FLOPs of a 512 px tile takes a second
on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .backbone import DiffusionBackbone
from .bundled import BUNDLED_SCHEDULER, BUNDLED_UNET, BUNDLED_VAE, PROMPT_TOKENS
from .prompt import CLIP_TOKENS

#: stabilityai/stable-diffusion-2-1, unet/config.json
SD21_UNET: dict[str, Any] = {
    "sample_size": 96, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "dual_cross_attention": False,
    "use_linear_projection": True, "only_cross_attention": False, "upcast_attention": True,
}
#: stabilityai/stable-diffusion-2-1, vae/config.json
SD21_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 768,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}
#: stabilityai/stable-diffusion-2-1, scheduler/scheduler_config.json (a v-prediction model)
SD21_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "v_prediction",
}
#: stabilityai/stable-diffusion-2-1, text_encoder/config.json (OpenCLIP ViT-H/14's text tower, 23 of 24 layers;
#: the special token ids are left at CLIP's defaults: they change no cost)
SD21_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
    "num_hidden_layers": 23, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 512,
    "layer_norm_eps": 1e-5,
}

#: name -> (UNet config, VAE config, scheduler config, text encoder config or None, prompt tokens)
ARCHITECTURES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any] | None, int]] = {
    "sd21-architecture": (SD21_UNET, SD21_VAE, SD21_SCHEDULER, SD21_TEXT_ENCODER, CLIP_TOKENS),
    # The bundled backbone ships a learned prompt embedding instead of a text encoder.
    "terrafuse-tiny-architecture": (BUNDLED_UNET, BUNDLED_VAE, BUNDLED_SCHEDULER, None, PROMPT_TOKENS),
}


def build_random_backbone(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                          seed: int = 0) -> DiffusionBackbone:
    """The architecture ``name`` with random weights, frozen, on ``device`` (``"meta"``: shapes only)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    unet_config, vae_config, scheduler_config, _, tokens = ARCHITECTURES[name]
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config).eval().requires_grad_(False)
        vae = AutoencoderKL(**vae_config).eval().requires_grad_(False)
        prompt = torch.randn(1, tokens, unet_config["cross_attention_dim"], dtype=dtype)
    if dtype != torch.float32:
        unet.to(dtype)
        vae.to(dtype)
    scheduler = DDIMScheduler(**scheduler_config)
    return DiffusionBackbone(
        name=f"{name} (random weights)", vae=vae, unet=unet, alphas_cumprod=scheduler.alphas_cumprod.to(torch.float64),
        prediction_type=scheduler_config.get("prediction_type", "epsilon"), prompt_embedding=prompt,
        prompt_source="random", sha256="-", scheduler_config=dict(scheduler.config), root=Path("."),
    )


def build_random_text_encoder(name: str, device: torch.device | str = "cpu") -> Any | None:
    """The architecture's CLIP text encoder with random weights (None when it has none), frozen, float32."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = ARCHITECTURES[name][3]
    if config is None:
        return None
    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**config)).eval().requires_grad_(False)
