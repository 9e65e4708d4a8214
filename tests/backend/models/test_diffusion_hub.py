"""Backbones from a hub repository id, through huggingface-hub's cache, against a stand-in hub on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from backend.errors import UserError
from backend.hub.checksums import HASH_RECORD_NAME
from backend.models.diffusion import load_backbone
from tests.backend.hub.stand_in_hub import StandInHub


def _served_copy(folder: Path, target: Path) -> Path:
    """The tiny backbone as a hub repository holds it, with files a backbone must not fetch."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(HASH_RECORD_NAME))
    for unet in target.glob("**/unet"):
        weights = unet / "diffusion_pytorch_model.safetensors"
        shutil.copy(weights, unet / "diffusion_pytorch_model.fp16.safetensors")
        (unet / "diffusion_pytorch_model.bin").write_bytes(b"a pickle that is never fetched")
    (target / "README.md").write_text("tiny test model")
    (target / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    return target


def test_hub_repository_downloads_then_loads_offline(tiny_backbone_dirs, tmp_path, hub_settings, monkeypatch):
    repos = {
        "terrafuse-test/tiny-sd2": _served_copy(tiny_backbone_dirs["v_prediction"], tmp_path / "sd2"),
        "terrafuse-test/tiny-diffusionsat": _served_copy(tiny_backbone_dirs["diffusionsat"], tmp_path / "dsat"),
    }
    with StandInHub(repos) as hub:
        hub_settings(hub.endpoint)
        online = load_backbone("terrafuse-test/tiny-sd2")
        diffusionsat = load_backbone("terrafuse-test/tiny-diffusionsat")
        with pytest.raises(UserError, match="No model repository"):
            load_backbone("terrafuse-test/missing")
    fetched = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
    assert any(path.endswith("/unet/diffusion_pytorch_model.safetensors") for path in fetched)
    assert any("/checkpoint-150000/unet/" in path for path in fetched)
    assert not any(path.endswith((".bin", ".fp16.safetensors", "README.md")) for path in fetched)
    assert online.name == "terrafuse-test/tiny-sd2"
    assert online.sha256 == load_backbone(tiny_backbone_dirs["v_prediction"]).sha256
    assert online.prompt_source == "text_encoder"
    assert "models--terrafuse-test--tiny-sd2" in str(online.root)
    assert not (online.root / HASH_RECORD_NAME).exists()  # nothing written into huggingface-hub's snapshot
    assert diffusionsat.metadata_embedding is not None
    assert diffusionsat.ignored_unet_keys == ()
    assert diffusionsat.unet_folder == "checkpoint-150000/unet"

    # The stand-in hub is gone: offline, the same repository comes from the cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = load_backbone("terrafuse-test/tiny-sd2")
    assert offline.root == online.root
    assert offline.sha256 == online.sha256
    assert offline.prompt_source == "cache"
    with pytest.raises(UserError, match="offline"):
        load_backbone("terrafuse-test/never-downloaded")


def test_explicit_offline_flag_reads_only_the_cache(hub_settings):
    hub_settings("http://127.0.0.1:9")  # nothing listens there; offline must not even try
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        load_backbone("terrafuse-test/tiny-sd2", offline=True)
