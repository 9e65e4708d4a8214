"""Fixtures of the backend tests: tiny diffusion backbones built with the real diffusers and transformers
classes (random weights, seconds to build), and an isolated Terrafuse cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

#: A tiny UNet of the Stable-Diffusion-2 architecture: 4 up blocks (UpBlock2D + 3 CrossAttnUpBlock2D).
TINY_UNET = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 32, 64, 64),
    "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 8,
    "use_linear_projection": True,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
#: A tiny VAE with Stable Diffusion's 8x downsampling (4 encoder blocks) and 4 latent channels.
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (8, 8, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64, "scaling_factor": 4.0,
}
#: Stable Diffusion 2.1's noise schedule.
SD2_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_MERGES = ("s a", "sa t", "i m", "im a", "g e</w>")


def write_tiny_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer as SD folders ship it: vocab.json, merges.txt and tokenizer_config.json."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*_LETTERS, *(c + "</w>" for c in _LETTERS), *("".join(m.split()) for m in _MERGES)]:
        vocab[token] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def write_tiny_backbone(root: Path, *, prediction_type: str = "v_prediction", text_encoder: bool = True,
                        diffusionsat_layout: bool = False, seed: int = 0) -> Path:
    """Save a random tiny backbone as a diffusers folder; DiffusionSat's layout puts the UNet (with 7
    ``metadata_embedding`` MLPs in its weights, ``SatUNet`` in its config) under checkpoint-150000/unet."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    AutoencoderKL(**TINY_VAE).save_pretrained(root / "vae")
    unet_dir = root / ("checkpoint-150000/unet" if diffusionsat_layout else "unet")
    UNet2DConditionModel(**TINY_UNET).save_pretrained(unet_dir)
    if diffusionsat_layout:
        weights = unet_dir / "diffusion_pytorch_model.safetensors"
        state = load_file(weights)
        time_in, time_dim = 32, 128  # block_out_channels[0] and 4 times that, as in DiffusionSat's SatUNet
        for i in range(7):
            state[f"metadata_embedding.{i}.linear_1.weight"] = torch.randn(time_dim, time_in)
            state[f"metadata_embedding.{i}.linear_1.bias"] = torch.randn(time_dim)
            state[f"metadata_embedding.{i}.linear_2.weight"] = torch.randn(time_dim, time_dim)
            state[f"metadata_embedding.{i}.linear_2.bias"] = torch.randn(time_dim)
        save_file(state, weights)
        config = json.loads((unet_dir / "config.json").read_text())
        config.update({"_class_name": "SatUNet", "use_metadata": True, "num_metadata": 7})
        (unet_dir / "config.json").write_text(json.dumps(config))
    DDIMScheduler(**SD2_SCHEDULER, prediction_type=prediction_type).save_pretrained(root / "scheduler")
    if text_encoder:
        from transformers import CLIPTextConfig, CLIPTextModel

        write_tiny_tokenizer(root / "tokenizer")
        torch.manual_seed(seed + 1)  # the same text encoder whatever was drawn before
        config = CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
                                bos_token_id=0, eos_token_id=1, pad_token_id=1)
        CLIPTextModel(config).save_pretrained(root / "text_encoder")
    return root


def write_untrained_head(folder: Path, tile_px: int = 32) -> Path:
    """A SatDiFuser head with random weights (global fusion, pixel head, classes 2, 5 and 9) on a tiny random
    backbone written under ``folder``, saved as ``folder/head``: the real loaders, no training."""
    from backend.models.diffusion import DiffusionFeatureExtractor, load_backbone
    from backend.models.segmenter import SatDiFuser

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TERRAFUSE_CACHE_DIR", str(folder / "cache"))
        backbone_dir = write_tiny_backbone(folder / "backbone")
        backbone = load_backbone(backbone_dir)
    extractor = DiffusionFeatureExtractor(backbone, timesteps=(1,))
    torch.manual_seed(0)
    classes = [{"id": 2, "name": "water", "colour": "#0000ff"}, {"id": 5, "name": "trees", "colour": "#00ff00"},
               {"id": 9, "name": "urban", "colour": "#ff0000"}]
    model = SatDiFuser.create(
        extractor.feature_info, classes, "global", "pixel", fusion_kwargs={"out_chs": 8},
        backbone={"name": backbone.name, "source": str(backbone_dir.resolve()), "sha256": backbone.sha256},
        timesteps=list(extractor.timesteps), blocks=list(extractor.blocks), levels=list(extractor.levels),
        bands=[1, 2, 3], band_low=[0.0] * 3, band_high=[255.0] * 3, tile_px=tile_px)
    return model.save_pretrained(folder / "head")


@pytest.fixture(autouse=True)
def terrafuse_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test writes into the user's ~/.cache/terrafuse."""
    cache = tmp_path_factory.mktemp("terrafuse-cache")
    monkeypatch.setenv("TERRAFUSE_CACHE_DIR", str(cache))
    monkeypatch.delenv("TERRAFUSE_MODELS_DIR", raising=False)
    return cache


@pytest.fixture(scope="session")
def tiny_backbone_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny backbone folders by kind: "v_prediction" and "epsilon" (with text encoder), "no_text", "diffusionsat"."""
    base = tmp_path_factory.mktemp("tiny-backbones")
    return {
        "v_prediction": write_tiny_backbone(base / "tiny-v"),
        "epsilon": write_tiny_backbone(base / "tiny-eps", prediction_type="epsilon"),
        "no_text": write_tiny_backbone(base / "tiny-no-text", text_encoder=False),
        "diffusionsat": write_tiny_backbone(base / "tiny-diffusionsat", diffusionsat_layout=True),
    }


@pytest.fixture(scope="session")
def tiny_backbone(tiny_backbone_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The v-prediction tiny backbone, loaded once through the user's loader (do not modify it)."""
    from backend.models.diffusion import load_backbone

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TERRAFUSE_CACHE_DIR", str(tmp_path_factory.mktemp("tiny-backbone-cache")))
        return load_backbone(tiny_backbone_dirs["v_prediction"])


@pytest.fixture
def hub_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh huggingface-hub cache; it read HF_ENDPOINT and HF_HOME at import, so both are patched."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def point_at(endpoint: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)

    return point_at
