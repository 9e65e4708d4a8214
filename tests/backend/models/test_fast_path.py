"""The backbone's fast inference path: early stop, reused inversion calls, autocast, channels_last, fused
attention, compilation with its fall-back, and the FLOPs of SD 2.1's architecture (counted on the meta device)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from backend.errors import UserError
from backend.models.diffusion import DiffusionFeatureExtractor, InferenceSettings, fast_path, load_backbone
from backend.models.diffusion.architectures import build_random_backbone
from backend.models.segmenter import SatDiFuser

FP32 = InferenceSettings(precision="fp32", channels_last=False)


def _images(batch: int = 1, side: int = 64, seed: int = 5) -> torch.Tensor:
    return torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def backbone(tiny_backbone_dirs):
    """A backbone of its own: these tests change its layout, attention and compiled blocks."""
    return load_backbone(tiny_backbone_dirs["v_prediction"])


class CallCounter:
    """How many times each named module ran, and the dtype of its last output."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls = dict.fromkeys(modules, 0)
        self.dtypes: dict[str, torch.dtype] = {}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str):
        def hook(_module, _inputs, output) -> None:
            self.calls[name] += 1
            tensor = output[0] if isinstance(output, tuple) else output
            self.dtypes[name] = tensor.dtype
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def assert_same_features(got: list[torch.Tensor], expected: list[torch.Tensor], **tolerance: float) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **tolerance)


def test_the_last_call_stops_right_after_the_last_hooked_block(backbone):
    """With all four levels, the last hooked block is the finest level's last self-attention: its
    cross-attention, feed-forward and output projection, and conv_out, run in the first two calls only."""
    unet = backbone.unet
    last_block = unet.up_blocks[3].attentions[-1].transformer_blocks[-1]
    counter = CallCounter({"attn1": last_block.attn1, "attn2": last_block.attn2, "ff": last_block.ff,
                           "proj_out": unet.up_blocks[3].attentions[-1].proj_out,
                           "conv_norm_out": unet.conv_norm_out, "conv_out": unet.conv_out})
    images = _images()
    try:
        full = DiffusionFeatureExtractor(backbone, stop_early=False, settings=FP32)(images)
        assert counter.calls == dict.fromkeys(counter.calls, 3)
        early_extractor = DiffusionFeatureExtractor(backbone, settings=FP32)
        early = early_extractor(images)
    finally:
        counter.remove()
    assert counter.calls == {"attn1": 6, "attn2": 5, "ff": 5, "proj_out": 5, "conv_norm_out": 5, "conv_out": 5}
    assert early_extractor.num_unet_calls == 3
    assert_same_features(early, full, rtol=0, atol=0)


def test_coarse_levels_skip_the_finer_up_blocks_and_the_upsampler(backbone):
    unet = backbone.unet
    counter = CallCounter({"up1.upsampler": unet.up_blocks[1].upsamplers[0], "up2": unet.up_blocks[2],
                           "up3": unet.up_blocks[3], "conv_out": unet.conv_out})
    try:
        DiffusionFeatureExtractor(backbone, levels=(0, 1), settings=FP32)(_images())
    finally:
        counter.remove()
    assert counter.calls == dict.fromkeys(counter.calls, 2)


def test_the_inversion_calls_are_the_feature_calls(backbone):
    """The straightforward path (inversion first, then a call per timestep for the features) computes the
    same features with twice the UNet calls."""
    images = _images(batch=2)
    reused = DiffusionFeatureExtractor(backbone, settings=FP32)
    separate = DiffusionFeatureExtractor(backbone, stop_early=False, reuse_inversion_calls=False, settings=FP32)
    assert_same_features(reused(images), separate(images), rtol=0, atol=0)
    assert reused.num_unet_calls == 3
    assert separate.num_unet_calls == 6


def test_attention_runs_through_scaled_dot_product_attention(backbone):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    assert all(isinstance(p, AttnProcessor2_0) for p in backbone.unet.attn_processors.values())  # diffusers' default
    assert fast_path.use_sdpa(backbone.unet) == 0
    expected = DiffusionFeatureExtractor(backbone, settings=FP32)(_images())
    backbone.unet.set_attn_processor(AttnProcessor())  # the classic, unfused processor
    assert fast_path.use_sdpa(backbone.unet) == len(backbone.unet.attn_processors)
    assert all(isinstance(p, AttnProcessor2_0) for p in backbone.unet.attn_processors.values())
    assert_same_features(DiffusionFeatureExtractor(backbone, settings=FP32)(_images()), expected)


def test_bfloat16_autocast_runs_the_unet_and_vae_in_bfloat16_and_keeps_float32_features(backbone):
    unet, vae = backbone.unet, backbone.vae
    linear = unet.up_blocks[3].attentions[0].transformer_blocks[0].ff.net[2]
    counter = CallCounter({"unet_linear": linear, "vae_conv": vae.encoder.conv_in, "unet": unet})
    images = _images(batch=2)
    try:
        full = DiffusionFeatureExtractor(backbone, settings=FP32)(images)
        assert counter.dtypes == dict.fromkeys(counter.dtypes, torch.float32)
        half = DiffusionFeatureExtractor(backbone, settings=InferenceSettings(precision="bf16"))(images)
    finally:
        counter.remove()
    assert counter.dtypes == {"unet_linear": torch.bfloat16, "vae_conv": torch.bfloat16, "unet": torch.bfloat16}
    assert next(unet.parameters()).dtype == torch.float32  # autocast: the weights are left alone
    for a, b in zip(half, full):
        assert a.dtype == torch.float32
        assert a.is_contiguous()
        assert (a - b).norm() <= 0.05 * b.norm()


def test_auto_precision_is_float32_on_the_cpu_and_half_on_cuda(monkeypatch):
    assert fast_path.autocast_dtype("auto", "cpu") is None
    assert fast_path.autocast_dtype("fp32", "cuda") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert fast_path.autocast_dtype("auto", "cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a T4 or a V100
    assert fast_path.autocast_dtype("auto", "cuda") is torch.float16
    assert fast_path.wants_channels_last(InferenceSettings(), "cuda")
    assert not fast_path.wants_channels_last(InferenceSettings(), "cpu")
    with pytest.raises(UserError):
        InferenceSettings(precision="int8")


def test_a_float16_vae_that_overflows_is_encoded_again_in_float32(backbone, caplog):
    conv_in = backbone.vae.encoder.conv_in
    with torch.no_grad():
        conv_in.weight.mul_(1e6)  # activations beyond float16's 65504, harmless in float32
    images = _images()
    expected = DiffusionFeatureExtractor(backbone, settings=FP32).encode_latents(images)
    assert torch.isfinite(expected).all()
    with caplog.at_level(logging.WARNING, logger="terrafuse.models"):
        got = DiffusionFeatureExtractor(backbone, settings=InferenceSettings(precision="fp16")).encode_latents(images)
    assert "overflowed" in caplog.text
    torch.testing.assert_close(got, expected)


def test_channels_last_changes_the_layout_not_the_features(backbone):
    expected = DiffusionFeatureExtractor(backbone, settings=FP32)(_images())
    nhwc = DiffusionFeatureExtractor(backbone, settings=InferenceSettings(precision="fp32", channels_last=True))
    got = nhwc(_images())
    assert backbone.channels_last
    assert backbone.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert backbone.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(f.is_contiguous() for f in got)
    assert_same_features(got, expected, rtol=1e-4, atol=1e-5)
    DiffusionFeatureExtractor(backbone, settings=FP32)(_images())  # the next job's settings win
    assert not backbone.channels_last
    assert backbone.unet.conv_in.weight.is_contiguous()


def _broken_backend(_graph, _example_inputs):
    raise RuntimeError("forced failure: no C++ compiler on this machine")


def test_a_failing_compile_falls_back_to_eager_with_a_warning(backbone, monkeypatch, caplog):
    expected = DiffusionFeatureExtractor(backbone, settings=FP32)(_images())
    monkeypatch.setattr(fast_path, "COMPILE_BACKEND", _broken_backend)
    extractor = DiffusionFeatureExtractor(backbone, settings=InferenceSettings(precision="fp32", compile=True))
    with caplog.at_level(logging.WARNING, logger="terrafuse.models"):
        got = extractor(_images())
    assert_same_features(got, expected, rtol=0, atol=0)
    assert backbone.compiled is not None
    assert "forced failure" in backbone.compiled.failure
    assert "eager mode" in caplog.text
    assert not any("forward" in module.__dict__ for module in backbone.unet.modules())  # every block reverted
    assert_same_features(extractor(_images()), expected, rtol=0, atol=0)  # and it stays eager, silently


def test_a_torch_compile_that_refuses_at_once_leaves_the_backbone_eager(backbone, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("torch.compile is not supported on Python 3.13")

    monkeypatch.setattr(torch, "compile", refuse)
    blocks = fast_path.compile_blocks(backbone.unet, backbone.vae)
    assert not blocks.active
    assert "not supported" in blocks.failure
    assert not any("forward" in module.__dict__ for module in backbone.unet.modules())


def test_out_of_memory_in_compiled_code_is_raised_not_hidden():
    def out_of_memory(*_args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    blocks = fast_path.CompiledBlocks()
    wrapped = fast_path._FallbackForward(lambda x: x + 1, out_of_memory, blocks)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        wrapped(torch.zeros(1))
    assert blocks.failure is None  # the engine halves its batch and the compiled blocks stay


def test_turning_compile_off_again_restores_eager_blocks(backbone, monkeypatch):
    monkeypatch.setattr(fast_path, "COMPILE_BACKEND", "eager")  # dynamo's tracing without code generation
    fast_path.prepare_backbone(backbone, InferenceSettings(compile=True))
    assert backbone.compiled is not None
    assert backbone.compiled.active
    assert "forward" in backbone.unet.up_blocks[3].resnets[0].__dict__
    fast_path.prepare_backbone(backbone, InferenceSettings())
    assert backbone.compiled is None
    assert not any("forward" in module.__dict__ for module in backbone.unet.modules())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_compiled_blocks_give_the_same_features(backbone, monkeypatch, backend):
    expected = DiffusionFeatureExtractor(backbone, settings=FP32)(_images(batch=2))
    monkeypatch.setattr(fast_path, "COMPILE_BACKEND", backend)
    extractor = DiffusionFeatureExtractor(backbone, settings=InferenceSettings(precision="fp32", compile=True))
    got = extractor(_images(batch=2))
    assert backbone.compiled.failure is None, backbone.compiled.failure
    assert_same_features(got, expected, rtol=1e-4, atol=1e-4)


def test_the_segmenter_runs_its_head_under_the_extractor_precision(backbone):
    extractor = DiffusionFeatureExtractor(backbone, timesteps=(1, 100), settings=FP32)
    torch.manual_seed(0)
    model = SatDiFuser.create(extractor.feature_info, [{"id": 1, "name": "a", "colour": "#000000"},
                                                       {"id": 2, "name": "b", "colour": "#ffffff"}],
                              "global", "pixel", extractor=extractor).eval()
    images = _images(batch=2)
    with torch.inference_mode():
        full = model(images)
        extractor.settings = InferenceSettings(precision="bf16")
        half = model(images)
    assert full.dtype == half.dtype == torch.float32
    assert full.shape == half.shape == (2, 2, 64, 64)
    assert (half - full).norm() <= 0.05 * full.norm()


def test_sd21_architecture_flops_per_tile_counted_without_weights():
    """SD 2.1's UNet and VAE encoder on a 512 px tile, counted on the meta device: the figures the issue's
    bound is built on (one UNet call about 804 GFLOP, the encoder about 1,117 GFLOP)."""
    backbone = build_random_backbone("sd21-architecture", device="meta")
    images = torch.empty(1, 3, 512, 512, device="meta")
    latent = torch.empty(1, 4, 64, 64, device="meta")
    with FlopCounterMode(display=False) as unet_counter:
        backbone.unet(latent, torch.tensor(1, device="meta"), encoder_hidden_states=backbone.prompt_embedding)
    with FlopCounterMode(display=False) as vae_counter:
        backbone.vae.encode(images)
    with FlopCounterMode(display=False) as features_counter:
        DiffusionFeatureExtractor(backbone, settings=FP32)(images)
    unet, vae, features = (c.get_total_flops() / 1e9 for c in (unet_counter, vae_counter, features_counter))
    assert 790 < unet < 820
    assert 1100 < vae < 1130
    # Three UNet calls, the last one stopped early, and the encoder.
    assert vae + 2 * unet < features < vae + 3 * unet
