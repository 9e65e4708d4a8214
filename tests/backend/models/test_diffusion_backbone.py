"""Loading backbones: diffusers folders, DiffusionSat's layout, zip archives, the prompt embedding, hashes."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from backend.errors import UserError
from backend.hub.checksums import HASH_RECORD_NAME
from backend.models.diffusion import DiffusionFeatureExtractor, list_backbones, load_backbone
from backend.models.diffusion import prompt as prompt_module
from backend.models.diffusion.prompt import SATELLITE_PROMPT, encode_prompt, prompt_cache_path


def _copy(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(HASH_RECORD_NAME))
    return target


def test_folder_loads_frozen_with_its_schedule(tiny_backbone_dirs):
    backbone = load_backbone(tiny_backbone_dirs["v_prediction"])
    assert backbone.name == "tiny-v"
    assert backbone.prediction_type == "v_prediction"
    assert backbone.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(backbone.alphas_cumprod[0].float(), torch.tensor(1 - 0.00085))
    assert backbone.latent_downsampling == 8
    assert backbone.unet_downsampling == 8
    for module in (backbone.unet, backbone.vae):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert len(backbone.sha256) == 64
    assert backbone.provenance()["backbone_sha256"] == backbone.sha256


def test_prompt_embedding_is_computed_once_then_cached(tiny_backbone_dirs, tmp_path, monkeypatch):
    folder = tiny_backbone_dirs["epsilon"]
    first = load_backbone(folder)
    assert first.prompt_source == "text_encoder"
    expected = encode_prompt(folder / "text_encoder", folder / "tokenizer", SATELLITE_PROMPT)
    assert expected.shape == (1, 77, 32)
    torch.testing.assert_close(first.prompt_embedding, expected)
    assert prompt_cache_path(first.sha256).is_file()

    def no_text_encoder(*_args: object) -> None:
        raise AssertionError("the text encoder was loaded again")

    monkeypatch.setattr(prompt_module, "encode_prompt", no_text_encoder)
    second = load_backbone(folder)
    assert second.prompt_source == "cache"
    torch.testing.assert_close(second.prompt_embedding, expected)


def test_without_text_encoder_the_prompt_is_zeros_with_a_warning(tiny_backbone_dirs, caplog):
    with caplog.at_level(logging.WARNING, logger="terrafuse.models"):
        backbone = load_backbone(tiny_backbone_dirs["no_text"])
    assert backbone.prompt_source == "zeros"
    assert backbone.prompt_embedding.shape == (1, 77, 32)
    assert not backbone.prompt_embedding.any()
    assert "zero prompt embedding" in caplog.text


def test_a_shipped_prompt_embedding_is_used(tiny_backbone_dirs, tmp_path):
    folder = _copy(tiny_backbone_dirs["no_text"], tmp_path)
    embedding = torch.randn(1, 77, 32)
    prompt_module._write_embedding(folder / "prompt_embedding.safetensors", embedding, SATELLITE_PROMPT)
    backbone = load_backbone(folder)
    assert backbone.prompt_source == "folder"
    torch.testing.assert_close(backbone.prompt_embedding, embedding)


def test_diffusionsat_layout_loads_its_metadata_embedding_folded(tiny_backbone_dirs, tiny_backbone, caplog):
    folder = tiny_backbone_dirs["diffusionsat"]
    assert not (folder / "unet").exists()
    assert (folder / "checkpoint-150000" / "unet").is_dir()
    with caplog.at_level(logging.INFO, logger="terrafuse.models"):
        backbone = load_backbone(folder)
    assert backbone.ignored_unet_keys == ()
    assert backbone.metadata_embedding is not None
    assert backbone.metadata_embedding.num_metadata == 7
    assert backbone.metadata_zero_term is not None
    assert "zeros) is folded into the time embedding" in caplog.text
    assert backbone.provenance()["unet_folder"] == "checkpoint-150000/unet"
    assert "zeros folded" in backbone.provenance()["metadata_embedding"]
    # Same seed, same UNet weights as the plain tiny backbone: only the time embedding's bias differs, by c0.
    bias = backbone.unet.time_embedding.linear_2.bias
    plain_bias = tiny_backbone.unet.time_embedding.linear_2.bias
    torch.testing.assert_close(bias - plain_bias, backbone.metadata_zero_term)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    ours = DiffusionFeatureExtractor(backbone, timesteps=(1, 100))(images)
    plain = DiffusionFeatureExtractor(tiny_backbone, timesteps=(1, 100))(images)
    assert any(not torch.allclose(a, b) for a, b in zip(ours, plain))  # the metadata term changes the features


def test_the_hash_is_recorded_and_follows_the_weights(tiny_backbone_dirs, tmp_path, monkeypatch):
    folder = _copy(tiny_backbone_dirs["no_text"], tmp_path)
    first = load_backbone(folder)
    record = json.loads((folder / HASH_RECORD_NAME).read_text())
    assert record["sha256"] == first.sha256
    assert "unet/diffusion_pytorch_model.safetensors" in record["files"]
    assert first.sha256 == load_backbone(tiny_backbone_dirs["no_text"]).sha256  # same content, same hash

    from backend.hub import checksums

    def no_rehash(_path: Path) -> str:
        raise AssertionError("the recorded hash was not reused")

    monkeypatch.setattr(checksums, "file_sha256", no_rehash)
    assert load_backbone(folder).sha256 == first.sha256
    monkeypatch.undo()
    config = json.loads((folder / "vae" / "config.json").read_text())
    config["scaling_factor"] = 1.0
    (folder / "vae" / "config.json").write_text(json.dumps(config))
    assert load_backbone(folder).sha256 != first.sha256


def test_broken_checkpoints_are_user_errors(tiny_backbone_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    truncated = _copy(tiny_backbone_dirs["no_text"], tmp_path, "truncated")
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt"):
        load_backbone(truncated)

    missing = _copy(tiny_backbone_dirs["no_text"], tmp_path, "missing")
    weights = missing / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["conv_out.weight"]
    save_file(state, weights)
    with pytest.raises(UserError, match="does not fit"):
        load_backbone(missing)

    sample = _copy(tiny_backbone_dirs["no_text"], tmp_path, "sample")
    config_path = sample / "scheduler" / "scheduler_config.json"
    config_path.write_text(config_path.read_text().replace('"v_prediction"', '"sample"'))
    with pytest.raises(UserError, match="sample"):
        load_backbone(sample)

    no_vae = _copy(tiny_backbone_dirs["no_text"], tmp_path, "no_vae")
    shutil.rmtree(no_vae / "vae")
    with pytest.raises(UserError, match="vae"):
        load_backbone(no_vae)


def _zip_folder(folder: Path, archive: Path, top: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != HASH_RECORD_NAME:
                zipped.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return archive


def test_zip_archives_load_by_path_and_by_registered_name(tiny_backbone_dirs, tmp_path, monkeypatch):
    archive = _zip_folder(tiny_backbone_dirs["diffusionsat"], tmp_path / "diffusionsat_512.zip", "finetune_sd21")
    by_path = load_backbone(archive)
    assert by_path.root.name == "finetune_sd21"
    assert by_path.sha256 == load_backbone(tiny_backbone_dirs["diffusionsat"]).sha256

    assert "diffusionsat-512" in list_backbones()
    with pytest.raises(UserError, match="zenodo.org/records/13751498"):
        load_backbone("diffusionsat-512")
    monkeypatch.setenv("TERRAFUSE_MODELS_DIR", str(tmp_path))
    by_name = load_backbone("diffusionsat-512")  # v-prediction, as the registry expects
    assert by_name.name == "diffusionsat-512"
    assert by_name.sha256 == by_path.sha256
    assert by_name.config.tile_px == 512
    assert by_name.config.timesteps == (1, 100, 200)


def test_a_registered_backbone_must_match_its_prediction_type(tiny_backbone_dirs, tmp_path, monkeypatch):
    _zip_folder(tiny_backbone_dirs["epsilon"], tmp_path / "diffusionsat_256.zip", "model")
    monkeypatch.setenv("TERRAFUSE_MODELS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="another model"):
        load_backbone("diffusionsat-256")


def test_unknown_names_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="Unknown backbone"):
        load_backbone("no such backbone")
    (tmp_path / "weights.ckpt").write_bytes(b"x")
    with pytest.raises(UserError, match="neither"):
        load_backbone(tmp_path / "weights.ckpt")
