"""Cost of SatDiFuser's features on the Stable Diffusion 2.1 architecture (random weights, no download).

Builds the SD 2.1 UNet and VAE from their configs (backend/models/diffusion/architectures.py), prints
their parameter counts and the time of one tile's features (VAE encoding, DDIM inversion to 3 timesteps =
3 UNet calls, decoder hooks) on the CPU in float32 and, when CUDA is available, on the GPU in float32 and bfloat16.

    python benchmarks/diffusion_features.py [--tile-px 512] [--repeats 1] [--skip-cpu]

benchmarks/throughput.py measures the same over batch sizes and precisions, with FLOP counts and the
straightforward path beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models.diffusion import DiffusionBackbone, DiffusionFeatureExtractor, InferenceSettings
from backend.models.diffusion.architectures import build_random_backbone


def build_sd21_backbone() -> DiffusionBackbone:
    return build_random_backbone("sd21-architecture")


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def time_features(backbone: DiffusionBackbone, tile_px: int, repeats: int, warmup: bool) -> tuple[float, list]:
    # The dtype is the weights' own here (float32 or bfloat16 weights): no autocast on top.
    extractor = DiffusionFeatureExtractor(backbone, settings=InferenceSettings(precision="fp32"))
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
