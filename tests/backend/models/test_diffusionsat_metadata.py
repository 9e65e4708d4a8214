"""DiffusionSat's metadata embedding: golden tests against a reference written here from the authors' code.

The reference follows DiffusionSat's ``SatUNet.forward`` (samar-khanna/DiffusionSat, ``sat_unet.py``): each
metadata value goes through the UNet's sinusoidal timestep projection (``flip_sin_to_cos``, frequency shift 0),
then its own two-layer SiLU MLP, and the sum is added to the time embedding. It is fed to a plain diffusers UNet
through an identity class embedding (``emb + class_labels``), so nothing of Terrafuse's loader is reused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backend.errors import UserError
from backend.models.diffusion import DiffusionFeatureExtractor, load_backbone
from backend.models.diffusion.metadata import TileMetadata


def _sinusoid(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Stable Diffusion's timestep projection: [cos(x f_k), sin(x f_k)], f_k = 10000^(-k / (dim / 2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = values.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def _reference_term(state: dict[str, torch.Tensor], metadata: torch.Tensor, proj_dim: int) -> torch.Tensor:
    """sum_i MLP_i(proj(m_i)), the MLP written out: W2 silu(W1 x + b1) + b2."""
    total = 0
    for i in range(metadata.shape[1]):
        x = _sinusoid(metadata[:, i], proj_dim)
        w1, b1 = state[f"metadata_embedding.{i}.linear_1.weight"], state[f"metadata_embedding.{i}.linear_1.bias"]
        w2, b2 = state[f"metadata_embedding.{i}.linear_2.weight"], state[f"metadata_embedding.{i}.linear_2.bias"]
        total = total + torch.nn.functional.silu(x @ w1.T + b1) @ w2.T + b2
    return total


def _reference_unet(folder: Path, labels: list[torch.Tensor]):
    """The plain diffusers UNet of ``folder`` with an identity class embedding that adds ``labels[0]``."""
    from diffusers import UNet2DConditionModel

    unet_dir = folder / "checkpoint-150000" / "unet"
    config = {k: v for k, v in json.loads((unet_dir / "config.json").read_text()).items()
              if not k.startswith("_") and k not in ("use_metadata", "num_metadata")}

    class WithMetadataTerm(UNet2DConditionModel):
        def forward(self, *args, **kwargs):
            return super().forward(*args, class_labels=labels[0], **kwargs)

    unet = WithMetadataTerm(**{**config, "class_embed_type": "identity"})
    state = load_file(unet_dir / "diffusion_pytorch_model.safetensors")
    unet.load_state_dict({k: v for k, v in state.items() if not k.startswith("metadata_embedding.")}, strict=True)
    return unet.eval().requires_grad_(False), state


def test_normalisation_reproduces_the_authors_example():
    """The normalised vector of DiffusionSat's notebook (an amusement park in Australia) from its raw values:
    lon = 925.8798 * 0.36 - 180, lat = 345.2111 * 0.18 - 90, GSD 0.4114541 m, 11 February 2017."""
    metadata = TileMetadata(longitude=925.8798 * 0.36 - 180, latitude=345.2111 * 0.18 - 90, gsd_m=0.4114541,
                            date=dt.date(2017, 2, 11))
    expected = [925.8798, 345.2111, 411.4541, 0.0, 308.3333, 166.6667, 354.8387]
    assert metadata.normalised() == pytest.approx(expected, abs=1e-3)
    undated = TileMetadata(longitude=0.0, latitude=0.0, gsd_m=10.0, cloud_cover=0.25).normalised()
    assert undated == pytest.approx([500.0, 500.0, 10000.0, 250.0, 0.0, 0.0, 0.0])
    with pytest.raises(UserError, match="longitude and latitude"):
        TileMetadata(longitude=500000.0, latitude=4e6, gsd_m=1.0)
    # A tile in UTM 31N centred on (500000, 5000000): 3 degrees east, about 45.1535 north (arc 5e6 m / 0.9996).
    utm = TileMetadata.from_bounds("EPSG:32631", (499744.0, 4999744.0, 500256.0, 5000256.0), 1.0)
    assert utm.longitude == pytest.approx(3.0, abs=1e-6)
    assert utm.latitude == pytest.approx(45.1535, abs=1e-3)


def test_zeros_are_folded_exactly_as_diffusionsat_computes_no_metadata(tiny_backbone_dirs):
    folder = tiny_backbone_dirs["diffusionsat"]
    backbone = load_backbone(folder)
    labels: list[torch.Tensor] = []
    reference, state = _reference_unet(folder, labels)
    proj_dim = reference.time_embedding.linear_1.in_features
    torch.manual_seed(3)
    sample = torch.randn(2, 4, 8, 8)
    prompt = backbone.prompt_embedding.expand(2, -1, -1)
    labels[:] = [_reference_term(state, torch.zeros(2, 7), proj_dim)]
    for t in (1, 100, 999):
        expected = reference(sample, t, encoder_hidden_states=prompt).sample
        ours = backbone.unet(sample, t, encoder_hidden_states=prompt).sample
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_tile_metadata_gives_the_reference_features(tiny_backbone_dirs):
    folder = tiny_backbone_dirs["diffusionsat"]
    backbone = load_backbone(folder)
    labels: list[torch.Tensor] = []
    reference, state = _reference_unet(folder, labels)
    metadata = torch.tensor([
        TileMetadata(longitude=4.35, latitude=50.85, gsd_m=0.5, date=dt.date(2021, 6, 30)).normalised(),
        TileMetadata(longitude=-60.0, latitude=-3.1, gsd_m=10.0, cloud_cover=0.1).normalised(),
    ])
    labels[:] = [_reference_term(state, metadata, reference.time_embedding.linear_1.in_features)]
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    ours = DiffusionFeatureExtractor(backbone, timesteps=(1, 100), metadata="tile")(images, metadata)
    ref_backbone = dataclasses.replace(backbone, unet=reference, metadata_embedding=None, metadata_zero_term=None)
    expected = DiffusionFeatureExtractor(ref_backbone, timesteps=(1, 100))(images)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The zeros convention differs from real metadata, and the modes are enforced.
    zeros = DiffusionFeatureExtractor(backbone, timesteps=(1, 100))(images)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(ours, zeros))
    with pytest.raises(UserError, match="none was given"):
        DiffusionFeatureExtractor(backbone, timesteps=(1,), metadata="tile")(images)


def test_tile_metadata_needs_a_diffusionsat_backbone(tiny_backbone):
    with pytest.raises(UserError, match="no metadata embedding"):
        DiffusionFeatureExtractor(tiny_backbone, timesteps=(1,), metadata="tile")


def test_the_head_records_how_its_features_were_read(tiny_backbone_dirs, tmp_path):
    import numpy as np

    from backend.inference.tile_model import SegmentTileModel
    from backend.models.segmenter import SatDiFuser, read_config

    backbone = load_backbone(tiny_backbone_dirs["diffusionsat"])
    extractor = DiffusionFeatureExtractor(backbone, timesteps=(1, 100), inversion="paper", inversion_steps=3,
                                          metadata="tile")
    classes = [{"id": 1, "name": "water", "colour": "#0000ff"}, {"id": 2, "name": "trees", "colour": "#00ff00"}]
    torch.manual_seed(0)
    model = SatDiFuser.create(extractor.feature_info, classes, "global", "pixel", fusion_kwargs={"out_chs": 8},
                              extractor=extractor, timesteps=[1, 100], blocks=list(extractor.blocks),
                              levels=list(extractor.levels),
                              backbone={"name": backbone.name, "sha256": backbone.sha256})
    folder = model.save_pretrained(tmp_path / "head")
    recorded = read_config(folder).features
    assert recorded == {"inversion": "paper", "inversion_steps": 3, "inversion_grid": [1, 33, 67, 100],
                        "unet_calls_per_batch": 6, "metadata": "tile", "unet_folder": "checkpoint-150000/unet"}
    loaded = SatDiFuser.from_pretrained(folder, backbone=backbone)
    assert loaded.extractor.describe() == recorded
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    metadata = torch.tensor([TileMetadata(longitude=10.0, latitude=45.0, gsd_m=1.0).normalised()] * 2)
    with torch.inference_mode():
        expected = loaded(images, metadata).softmax(1)
    tile_model = SegmentTileModel(loaded, torch.device("cpu"), {})
    out = tile_model({"images": images.numpy(), "metadata": metadata.numpy()})
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="none was given"):
        tile_model(images.numpy())
