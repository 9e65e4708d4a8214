"""The bundled SkySense: a small configuration pretrained here, so that classify and prototypes work offline.

It has the paper's parts (a timm spatial encoder, the day-of-year encoding, the temporal fusion transformer,
geo-context prototypes; Sec. 3.2) at a size a laptop CPU runs: one Sentinel-2 encoder (a 4-block ViT, 96
wide, 2 px patches) reading the 10 m bands B2, B3, B4 and B8, d = 64, a 2-layer fusion and 8 x 8 regions of
16 prototypes. Its features live on a 20 m grid and are interpolated onto the 10 m grid of the jobs: a
pixel-shuffle head (the official ``head_s2``) made each pixel's feature depend on its place inside a patch,
and the prototypes learned those places instead of land cover, so this size leaves it out.

It was pretrained with the self-supervised objectives of :mod:`.pretraining` (eq. 5-9 and
11-13) for minutes on one open Sentinel-2 scene by ``scripts/train_bundled_skysense.py``: demo-grade, far
below the official SkySense. Its model card is ``resources/models/terrafuse-tiny-skysense/README.md``.

The weights are stored in float16 (half the size); :meth:`SkySense.from_pretrained` loads them into the
model's float32 parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import HR_BANDS, S1_BANDS, S2_BANDS, EncoderConfig, SkySenseConfig
from .model import SkySense

BUNDLED_SKYSENSE_NAME = "terrafuse-tiny-skysense"
#: resources/ sits next to backend/ whatever the plugin folder is called.
BUNDLED_SKYSENSE_FOLDER = Path(__file__).resolve().parents[3] / "resources" / "models" / BUNDLED_SKYSENSE_NAME
#: The Sentinel-2 bands the bundled encoder reads: the paper's ten (10 m and 20 m), any of them missing (band mask).
BUNDLED_S2_BANDS = S2_BANDS
#: Tile size in grid cells (10 m): the encoder's training size.
BUNDLED_TILE_PX = 32
#: The high-resolution encoder's patch: 4 x 4 image pixels per token (one grid cell of an image given alone).
BUNDLED_HR_PATCH = 4


def _vit(bands: tuple[str, ...], patch: int, depth: int, width: int, heads: int, **extra: Any) -> EncoderConfig:
    """A timm ViT-Tiny resized, without class token or final norm, any input size (as the official ViTs)."""
    kwargs = {"global_pool": "avg", "final_norm": False, "dynamic_img_size": True, "drop_path_rate": 0.0,
              "patch_size": patch, "img_size": BUNDLED_TILE_PX * (patch // 2), "depth": depth, "embed_dim": width,
              "num_heads": heads}
    kwargs["class_token"] = False  # as the official ViTs: no class token in the sequence
    return EncoderConfig(timm_name="vit_tiny_patch16_224", bands=list(bands), timm_kwargs=kwargs, **extra)


def bundled_skysense_config() -> SkySenseConfig:
    """The architecture of the bundled model (random weights until loaded)."""
    return SkySenseConfig(
        name=BUNDLED_SKYSENSE_NAME,
        encoders={
            "hr": _vit(HR_BANDS, BUNDLED_HR_PATCH, 4, 96, 3, temporal=False),
            "s2": _vit(BUNDLED_S2_BANDS, 2, 4, 96, 3, band_mask=True),
            "s1": _vit(S1_BANDS, 2, 2, 64, 2),
        },
        dim=64, fusion_depth=2, fusion_heads=4, region_grid=(8, 8), prototypes_per_region=16,
        description=("Bundled demo-grade SkySense: high-resolution RGB, Sentinel-2 (the ten bands of the paper, any "
                     "missing, e.g. Landsat's six) and Sentinel-1 VV/VH, self-supervised on open scenes (see the "
                     "model card)"),
    )


def bundled_skysense_available(folder: Path = BUNDLED_SKYSENSE_FOLDER) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def load_bundled_skysense(folder: Path = BUNDLED_SKYSENSE_FOLDER) -> SkySense:
    """The bundled model in float32, in eval mode."""
    return SkySense.from_pretrained(folder).float().eval()


def save_half(model: SkySense, folder: Path) -> Path:
    """``save_pretrained`` with the floating-point weights in float16 (the bundled files stay small)."""
    half = SkySense(model.config)
    half.load_state_dict(model.state_dict())
    half = half.to(torch.float16)
    return half.save_pretrained(folder)
