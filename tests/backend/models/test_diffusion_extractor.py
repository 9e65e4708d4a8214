"""Features of the UNet decoder: shapes, feature_info, one UNet call per timestep, early stop, padding."""

from __future__ import annotations

import math

import pytest
import torch

from backend.errors import UserError
from backend.models.diffusion import DiffusionFeatureExtractor
from backend.models.diffusion.inversion import ddim_invert


def _images(batch: int = 1, height: int = 64, width: int = 64, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 2 - 1


def _count_calls(module: torch.nn.Module) -> tuple[list[int], object]:
    calls = [0]

    def hook(*_args: object) -> None:
        calls[0] += 1

    return calls, module.register_forward_hook(hook)


def test_feature_info_and_shapes(tiny_backbone):
    extractor = DiffusionFeatureExtractor(tiny_backbone)
    # Tiny UNet: up blocks of 64, 64, 32, 32 channels, 2 ResNets each; attention in up blocks 1..3.
    per_timestep = ["up0.resnet.0", "up0.resnet.1"] + [
        f"up{level}.{kind}.{j}" for level in (1, 2, 3) for j in (0, 1) for kind in ("resnet", "attn1")
    ]
    assert [info["name"] for info in extractor.feature_info] == [
        f"t{t}/{name}" for t in (1, 100, 200) for name in per_timestep
    ]
    channels = {0: 64, 1: 64, 2: 32, 3: 32}
    for info in extractor.feature_info:
        assert info["timestep"] == int(info["name"].split("/")[0][1:])
        assert info["kind"] == info["name"].split(".")[1]
        assert info["num_chs"] == channels[info["level"]]
        assert info["reduction"] == 64 // 2 ** info["level"]
    features = extractor(_images(batch=2))
    assert len(features) == len(extractor.feature_info) == 42
    for feature, info in zip(features, extractor.feature_info):
        side = 64 // info["reduction"]
        assert feature.shape == (2, info["num_chs"], side, side), info["name"]
        assert feature.dtype == torch.float32
        assert torch.isfinite(feature).all()
    assert list(extractor.parameters()) == []
    assert extractor.state_dict() == {}


def test_three_timesteps_take_three_unet_calls(tiny_backbone):
    extractor = DiffusionFeatureExtractor(tiny_backbone, timesteps=(1, 100, 200))
    conv_out_calls, handle = _count_calls(tiny_backbone.unet.conv_out)
    try:
        extractor(_images())
    finally:
        handle.remove()
    assert extractor.num_unet_calls == 3
    assert conv_out_calls[0] == 2  # the last call stops after the finest up block


def test_features_are_those_of_the_unet_call_at_their_timestep(tiny_backbone):
    """Features of t=100 are the UNet's at timestep 100 on z_1, the latent inverted to t=1."""
    extractor = DiffusionFeatureExtractor(tiny_backbone, blocks=("resnet", "attn1", "attn2"))
    images = _images()
    features = dict(zip((info["name"] for info in extractor.feature_info), extractor(images)))
    unet = tiny_backbone.unet
    latents = extractor.encode_latents(images)

    def unet_fn(sample, t):
        with torch.inference_mode():
            return unet(sample, torch.tensor(t), encoder_hidden_states=tiny_backbone.prompt_embedding).sample

    z_1 = ddim_invert(latents, [1], unet_fn, tiny_backbone.alphas_cumprod, tiny_backbone.prediction_type)[0]
    seen = {}
    modules = {
        "up3.resnet.1": unet.up_blocks[3].resnets[1],
        "up1.attn1.0": unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1,
        "up2.attn2.1": unet.up_blocks[2].attentions[1].transformer_blocks[0].attn2,
    }
    handles = [m.register_forward_hook(lambda _m, _i, out, key=key: seen.__setitem__(key, out))
               for key, m in modules.items()]
    try:
        unet_fn(z_1, 100)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(features["t100/up3.resnet.1"], seen["up3.resnet.1"])
    for key, side in (("up1.attn1.0", 2), ("up2.attn2.1", 4)):  # (B, HW, C) back on the grid
        expected = seen[key].transpose(1, 2).reshape(1, -1, side, side)
        torch.testing.assert_close(features[f"t100/{key}"], expected)
    assert not torch.allclose(features["t100/up3.resnet.1"], features["t200/up3.resnet.1"])


def test_early_stop_changes_nothing_but_the_work(tiny_backbone):
    images = _images()
    full = DiffusionFeatureExtractor(tiny_backbone, levels=(0, 1), stop_early=False)
    early = DiffusionFeatureExtractor(tiny_backbone, levels=(0, 1), stop_early=True)
    up2_calls, handle = _count_calls(tiny_backbone.unet.up_blocks[2])
    try:
        expected = full(images)
        assert up2_calls[0] == 3
        got = early(images)
        assert up2_calls[0] == 3 + 2
    finally:
        handle.remove()
    assert [info["name"] for info in early.feature_info] == [info["name"] for info in full.feature_info]
    assert {info["level"] for info in early.feature_info} == {0, 1}
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b)
    assert full.num_unet_calls == early.num_unet_calls == 3


def test_any_image_size_is_padded_and_cropped_back(tiny_backbone):
    extractor = DiffusionFeatureExtractor(tiny_backbone, timesteps=(1, 50))
    images = _images(height=72, width=100)
    features = extractor(images)
    padded = torch.nn.functional.pad(images, (0, 128 - 100, 0, 128 - 72), mode="replicate")
    reference = extractor(padded)
    for feature, full, info in zip(features, reference, extractor.feature_info):
        h, w = math.ceil(72 / info["reduction"]), math.ceil(100 / info["reduction"])
        assert feature.shape[-2:] == (h, w)
        torch.testing.assert_close(feature, full[..., :h, :w])


def test_batch_items_are_independent(tiny_backbone):
    extractor = DiffusionFeatureExtractor(tiny_backbone, timesteps=(100,))
    images = _images(batch=2)
    together = extractor(images)
    alone = extractor(images[1:])
    for both, single in zip(together, alone):
        torch.testing.assert_close(both[1:], single, rtol=1e-4, atol=1e-5)


def test_heads_can_train_on_the_features(tiny_backbone):
    extractor = DiffusionFeatureExtractor(tiny_backbone, timesteps=(1,), blocks=("attn1",), levels=(3,))
    (feature,) = [f for f, info in zip(extractor(_images()), extractor.feature_info) if info["name"].endswith(".0")]
    assert not feature.requires_grad
    assert not torch.is_inference(feature)
    head = torch.nn.Conv2d(feature.shape[1], 2, 1)
    head(feature).square().mean().backward()
    assert head.weight.grad is not None
    assert all(not p.requires_grad for p in tiny_backbone.unet.parameters())
    assert not tiny_backbone.unet.training
    assert not tiny_backbone.vae.training


@pytest.mark.parametrize("kwargs", [
    {"blocks": ("mlp",)}, {"blocks": ()}, {"levels": (4,)}, {"levels": ()}, {"timesteps": (200, 100)},
    {"timesteps": (1000,)}, {"blocks": ("attn1",), "levels": (0,)},
])
def test_bad_choices_are_user_errors(tiny_backbone, kwargs):
    with pytest.raises(UserError):
        DiffusionFeatureExtractor(tiny_backbone, **kwargs)


def test_a_bfloat16_backbone_gives_float32_features_close_to_float32(tiny_backbone_dirs, tiny_backbone):
    from backend.models.diffusion import load_backbone

    half = load_backbone(tiny_backbone_dirs["v_prediction"], dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert half.prompt_embedding.dtype == torch.bfloat16
    images = _images()
    low = DiffusionFeatureExtractor(half, timesteps=(1, 100))(images)
    full = DiffusionFeatureExtractor(tiny_backbone, timesteps=(1, 100))(images)
    for a, b in zip(low, full):
        assert a.dtype == torch.float32
        assert (a - b).norm() <= 0.1 * b.norm()
