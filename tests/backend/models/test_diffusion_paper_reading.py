"""SatDiFuser's reading of the features (Sec. 3.1): DDIM inversion of the clean latent to z_t, then the UNet at t
on z_t. The reference below is written from the equations (DDIM, Song et al. 2021, eq. 12 with sigma = 0; the
v-parametrisation, Salimans & Ho 2022) with diffusers' own scheduler table, not with Terrafuse's inversion."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from backend.errors import UserError
from backend.models.diffusion import DiffusionFeatureExtractor
from backend.models.diffusion.inversion import inversion_grid


def _reference_features(backbone, images: torch.Tensor, timesteps: tuple[int, ...], steps: int,
                        modules: list[str]) -> list[torch.Tensor]:
    scheduler = DDIMScheduler.from_pretrained(str(backbone.root / "scheduler"))
    alphas = scheduler.alphas_cumprod.double()
    unet, vae = backbone.unet, backbone.vae
    prompt = backbone.prompt_embedding.expand(images.shape[0], -1, -1)
    last = timesteps[-1]
    grid = sorted({round(j * last / steps) for j in range(1, steps + 1)} | set(timesteps))
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        a_prev = torch.tensor(1.0, dtype=torch.float64)
        inverted = {}
        for t in grid:  # z_(t_j) = sqrt(a_t) x0 + sqrt(1 - a_t) eps, both from v = UNet(z_(t_(j-1)), t_j)
            v = unet(z, t, encoder_hidden_states=prompt).sample
            x0 = a_prev.sqrt().float() * z - (1 - a_prev).sqrt().float() * v
            eps = a_prev.sqrt().float() * v + (1 - a_prev).sqrt().float() * z
            a_t = alphas[t]
            z = a_t.sqrt().float() * x0 + (1 - a_t).sqrt().float() * eps
            inverted[t] = z
            a_prev = a_t
        features: list[torch.Tensor] = []
        for t in timesteps:  # the features of t: the UNet at t on z_t
            seen: dict[str, torch.Tensor] = {}
            handles = [unet.get_submodule(name).register_forward_hook(
                lambda _m, _i, out, name=name, seen=seen: seen.__setitem__(name, out)) for name in modules]
            try:
                unet(inverted[t], t, encoder_hidden_states=prompt)
            finally:
                for handle in handles:
                    handle.remove()
            features.extend(seen[name] for name in modules)
    return features


def test_the_paper_reading_inverts_then_reads_the_unet_on_z_t(tiny_backbone):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    extractor = DiffusionFeatureExtractor(tiny_backbone, timesteps=(1, 100), blocks=("resnet",), inversion="paper",
                                          inversion_steps=4)
    assert extractor.inversion_grid == (1, 25, 50, 75, 100)
    assert extractor.calls_per_batch == 5 + 2
    ours = extractor(images)
    assert extractor.num_unet_calls == 7
    modules = [info["module"] for info in extractor.feature_info if info["timestep"] == 1]
    expected = _reference_features(tiny_backbone, images, (1, 100), 4, modules)
    assert len(ours) == len(expected)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The fast default reads other latents: call k of the inversion sees z_(t_(k-1)), not z_(t_k).
    reuse = DiffusionFeatureExtractor(tiny_backbone, timesteps=(1, 100), blocks=("resnet",))
    assert reuse.calls_per_batch == 2
    assert any(not torch.allclose(a, b, atol=1e-3) for a, b in zip(reuse(images), ours))
    assert extractor.describe() == {"inversion": "paper", "inversion_steps": 4, "inversion_grid": [1, 25, 50, 75, 100],
                                    "unet_calls_per_batch": 7, "metadata": "none", "unet_folder": "unet"}


def test_inversion_grid_and_bad_choices(tiny_backbone):
    assert inversion_grid((1, 100, 200), None) == (1, 100, 200)
    assert inversion_grid((1, 100, 200), 2) == (1, 100, 200)
    assert inversion_grid((10, 200), 4) == (10, 50, 100, 150, 200)
    assert inversion_grid((3,), 10) == (1, 2, 3)  # rounding never reaches 0
    with pytest.raises(UserError, match="at least 1"):
        inversion_grid((1, 100), 0)
    with pytest.raises(UserError, match="feature reading"):
        DiffusionFeatureExtractor(tiny_backbone, timesteps=(1,), inversion="exact")
