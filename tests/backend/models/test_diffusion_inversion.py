"""DDIM inversion against diffusers' own schedulers, for both prediction types."""

from __future__ import annotations

import pytest
import torch

from backend.errors import UserError
from backend.models.diffusion import DiffusionFeatureExtractor, load_backbone
from backend.models.diffusion.inversion import check_timesteps, ddim_invert


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def backbone(request: pytest.FixtureRequest, tiny_backbone_dirs):
    loaded = load_backbone(tiny_backbone_dirs[request.param])
    assert loaded.prediction_type == request.param
    return loaded


def _clean_latents(backbone, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    return DiffusionFeatureExtractor(backbone).encode_latents(images)


def _unet_fn(backbone):
    def model_fn(sample: torch.Tensor, timestep: int) -> torch.Tensor:
        with torch.inference_mode():
            t = torch.tensor(timestep)
            return backbone.unet(sample, t, encoder_hidden_states=backbone.prompt_embedding).sample
    return model_fn


def _reference_inversion(backbone, latents, num_inference_steps: int, steps_offset: int, count: int):
    """diffusers' DDIMInverseScheduler over its first ``count`` timesteps; the clean latent has a = 1."""
    from diffusers import DDIMInverseScheduler

    scheduler = DDIMInverseScheduler.from_config(backbone.scheduler_config, set_alpha_to_one=True,
                                                 steps_offset=steps_offset)
    scheduler.set_timesteps(num_inference_steps)
    timesteps = [int(t) for t in scheduler.timesteps[:count]]
    sample, trajectory = latents, []
    model_fn = _unet_fn(backbone)
    for t in timesteps:
        sample = scheduler.step(model_fn(sample, t), t, sample).prev_sample
        trajectory.append(sample)
    return timesteps, trajectory


@pytest.mark.parametrize(("steps_offset", "expected"), [(1, [1, 101, 201]), (0, [0, 100, 200])])
def test_inversion_matches_diffusers_inverse_scheduler(backbone, steps_offset, expected):
    latents = _clean_latents(backbone)
    timesteps, reference = _reference_inversion(backbone, latents, 10, steps_offset, 3)
    assert timesteps == expected
    ours = ddim_invert(latents, timesteps, _unet_fn(backbone), backbone.alphas_cumprod, backbone.prediction_type)
    assert len(ours) == 3
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    # The walk did move: the last latent is far from the clean one.
    assert (ours[-1] - latents).abs().mean() > 0.05 * latents.abs().mean()


def test_extractor_feeds_the_unet_the_inversion_latents(backbone):
    """Call k sees (z_(t_(k-1)), t_k): the clean latent at t=1, then the reference trajectory."""
    latents = _clean_latents(backbone)
    timesteps, reference = _reference_inversion(backbone, latents, 10, 1, 3)
    seen: list[tuple[torch.Tensor, int]] = []

    def record(_module, args, kwargs):
        seen.append((args[0].clone(), int(args[1])))

    extractor = DiffusionFeatureExtractor(backbone, timesteps=timesteps, stop_early=False)
    handle = backbone.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generator = torch.Generator().manual_seed(1)
        extractor(torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1)
    finally:
        handle.remove()
    assert [t for _, t in seen] == timesteps
    for (sample, _), expected in zip(seen, [latents, *reference[:2]]):
        torch.testing.assert_close(sample, expected, rtol=1e-5, atol=1e-5)


def _roundtrip_error(backbone, latents, num_steps: int) -> tuple[float, float]:
    """Invert every 1000 // num_steps timesteps up to ~200, denoise back with diffusers' DDIMScheduler.

    Returns the relative error of the recovered clean latent and how far the inversion moved it."""
    from diffusers import DDIMScheduler

    spacing = 1000 // num_steps
    timesteps = list(range(1, 200, spacing))
    model_fn = _unet_fn(backbone)
    noisy = ddim_invert(latents, timesteps, model_fn, backbone.alphas_cumprod, backbone.prediction_type)[-1]
    scheduler = DDIMScheduler.from_config(backbone.scheduler_config, set_alpha_to_one=True)
    scheduler.set_timesteps(num_steps)
    sample = noisy
    for t in (int(t) for t in scheduler.timesteps if t <= timesteps[-1]):
        sample = scheduler.step(model_fn(sample, t), t, sample).prev_sample
    norm = latents.norm()
    return float((sample - latents).norm() / norm), float((noisy - latents).norm() / norm)


def test_inverting_then_denoising_recovers_the_clean_latent(backbone):
    """Inversion's error is first order in the step: smaller steps, closer recovery."""
    latents = _clean_latents(backbone)
    coarse_error, _ = _roundtrip_error(backbone, latents, 100)  # 20 steps of 10
    fine_error, moved = _roundtrip_error(backbone, latents, 250)  # 50 steps of 4
    assert moved > 0.1  # the latent was really noised (t ~ 200: a = 0.79)
    assert fine_error < 0.08 * moved
    assert fine_error < 0.6 * coarse_error


def test_timesteps_are_checked():
    assert check_timesteps([1, 100, 200], 1000) == (1, 100, 200)
    for bad in ([], [100, 1], [1, 1], [-1, 5], [1, 1000]):
        with pytest.raises(UserError):
            check_timesteps(bad, 1000)
