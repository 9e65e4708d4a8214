"""Cost of SatDiFuser's features on the Stable Diffusion 2.1 architecture (random weights, no download).

Builds the SD 2.1 UNet and VAE from their configs (written below), prints their parameter counts and the
time of one tile's features (VAE encoding, DDIM inversion to 3 timesteps = 3 UNet calls, decoder hooks)
on the CPU in float32 and, when CUDA is available, on the GPU in float32 and bfloat16.

    python benchmarks/diffusion_features.py [--tile-px 512] [--repeats 1] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models.diffusion import DiffusionBackbone, DiffusionFeatureExtractor
from backend.models.diffusion.prompt import CLIP_TOKENS

#: stabilityai/stable-diffusion-2-1, unet/config.json
SD21_UNET = {
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
SD21_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 768,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}
#: stabilityai/stable-diffusion-2-1, scheduler/scheduler_config.json (a v-prediction model)
SD21_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "v_prediction",
}


def build_sd21_backbone() -> DiffusionBackbone:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD21_UNET).eval().requires_grad_(False)
    vae = AutoencoderKL(**SD21_VAE).eval().requires_grad_(False)
    scheduler = DDIMScheduler(**SD21_SCHEDULER)
    return DiffusionBackbone(
        name="sd-2.1-architecture (random weights)", vae=vae, unet=unet,
        alphas_cumprod=scheduler.alphas_cumprod.to(torch.float64), prediction_type="v_prediction",
        prompt_embedding=torch.randn(1, CLIP_TOKENS, SD21_UNET["cross_attention_dim"]), prompt_source="random",
        sha256="-", scheduler_config=dict(scheduler.config), root=Path("."),
    )


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def time_features(backbone: DiffusionBackbone, tile_px: int, repeats: int, warmup: bool) -> tuple[float, list]:
    extractor = DiffusionFeatureExtractor(backbone)
    images = torch.rand(1, 3, tile_px, tile_px, device=backbone.device) * 2 - 1
    if warmup:
        extractor(images)
    sync = torch.cuda.synchronize if backbone.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        features = extractor(images)
    sync()
    return (time.perf_counter() - start) / repeats, list(zip(extractor.feature_info, features))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-px", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    backbone = build_sd21_backbone()
    print(f"built the SD 2.1 architecture in {time.perf_counter() - start:.1f} s (random weights)")
    print(f"parameters: UNet {millions(backbone.unet):.1f} M, VAE {millions(backbone.vae):.1f} M "
          f"(encoder {millions(backbone.vae.encoder) + millions(backbone.vae.quant_conv):.1f} M)")
    runs = [] if args.skip_cpu else [("cpu", torch.float32)]
    if torch.cuda.is_available():
        runs += [("cuda", torch.float32), ("cuda", torch.bfloat16)]
    for device, dtype in runs:
        if (device, dtype) != ("cpu", torch.float32):  # built on the CPU in float32
            backbone.unet.to(device=device, dtype=dtype)
            backbone.vae.to(device=device, dtype=dtype)
            backbone.prompt_embedding = backbone.prompt_embedding.to(device=device, dtype=dtype)
        name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        seconds, features = time_features(backbone, args.tile_px, args.repeats, warmup=device == "cuda")
        megabytes = sum(f.numel() * f.element_size() for _, f in features) / 2**20
        print(f"{device} {str(dtype).removeprefix('torch.')} ({name}): {seconds:.2f} s per {args.tile_px} px tile, "
              f"{len(features)} feature maps (3 timesteps), {megabytes:.0f} MiB of float32 features")
    if runs:
        for info, feature in features[: len(features) // 3]:
            print(f"  {info['name']:<18} {tuple(feature.shape)}  reduction {info['reduction']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
