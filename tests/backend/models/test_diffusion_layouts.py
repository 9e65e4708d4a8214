"""Which UNet a DiffusionSat folder gives, in every layout: local folders, zip archives, the stand-in hub
(Zenodo's checkpoint layout, the community diffusers port's root layout, ``.bin``-only weights)."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backend.errors import UserError
from backend.hub.checksums import HASH_RECORD_NAME
from backend.models.diffusion import DiffusionFeatureExtractor, load_backbone
from backend.models.diffusion.registry import hub_patterns
from backend.progress import Progress
from backend.worker import run_job
from tests.backend.hub.stand_in_hub import StandInHub


def _copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(HASH_RECORD_NAME))
    return target


def _features(backbone, images: torch.Tensor, **kwargs) -> list[torch.Tensor]:
    return DiffusionFeatureExtractor(backbone, timesteps=(1, 100), **kwargs)(images)


@pytest.fixture(scope="module")
def release_with_two_unets(tiny_backbone_dirs, tmp_path_factory) -> Path:
    """DiffusionSat's archive layout with a root unet/ (here the plain tiny UNet) beside two checkpoints."""
    root = _copy(tiny_backbone_dirs["diffusionsat"], tmp_path_factory.mktemp("release") / "finetune_sd21")
    shutil.copytree(tiny_backbone_dirs["v_prediction"] / "unet", root / "unet")
    shutil.copytree(tiny_backbone_dirs["v_prediction"] / "unet", root / "checkpoint-100000" / "unet")
    return root


def test_the_newest_checkpoint_is_taken_as_the_authors_do_and_logged(release_with_two_unets, tiny_backbone_dirs,
                                                                     caplog):
    with caplog.at_level(logging.INFO, logger="terrafuse.models"):
        backbone = load_backbone(release_with_two_unets)
    assert backbone.unet_folder == "checkpoint-150000/unet"
    assert "checkpoint-150000/unet, checkpoint-100000/unet, unet; taking checkpoint-150000/unet" in caplog.text
    provenance = backbone.provenance()
    assert provenance["unet_folder"] == "checkpoint-150000/unet"
    assert "DiffusionSat's authors" in provenance["unet_choice"]
    assert backbone.metadata_embedding is not None
    assert backbone.sha256 == load_backbone(tiny_backbone_dirs["diffusionsat"]).sha256


def test_the_user_may_choose_another_unet_folder(release_with_two_unets, tiny_backbone):
    root = load_backbone(release_with_two_unets, unet_folder="unet")
    assert root.unet_folder == "unet"
    assert root.unet_choice == "chosen by the user"
    assert root.metadata_embedding is None  # the plain UNet has no metadata MLPs
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    for a, b in zip(_features(root, images), _features(tiny_backbone, images)):
        torch.testing.assert_close(a, b)
    assert root.sha256 != load_backbone(release_with_two_unets).sha256
    with pytest.raises(UserError, match="has: checkpoint-150000/unet, checkpoint-100000/unet, unet"):
        load_backbone(release_with_two_unets, unet_folder="checkpoint-5/unet")
    with pytest.raises(UserError, match="inside"):
        load_backbone(release_with_two_unets, unet_folder="../elsewhere/unet")


def test_a_zip_archive_gives_the_same_choice(release_with_two_unets, tmp_path):
    archive = tmp_path / "diffusionsat.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(release_with_two_unets.rglob("*")):
            if path.is_file():
                zipped.write(path, (Path("finetune_sd21") / path.relative_to(release_with_two_unets)).as_posix())
    assert load_backbone(archive).unet_folder == "checkpoint-150000/unet"
    assert load_backbone(archive, unet_folder="checkpoint-100000/unet").unet_folder == "checkpoint-100000/unet"


def _community_port(release: Path, target: Path) -> Path:
    """The community diffusers port's layout: the SatUNet under unet/, a custom pipeline beside."""
    shutil.copytree(release, target, ignore=shutil.ignore_patterns(HASH_RECORD_NAME, "checkpoint-*"))
    shutil.copytree(release / "checkpoint-150000" / "unet", target / "unet")
    (target / "model_index.json").write_text(json.dumps({
        "_class_name": ["pipeline_diffusionsat", "DiffusionSatPipeline"], "unet": ["diffusionsat", "SatUNet"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    (target / "pipeline_diffusionsat.py").write_text("raise SystemExit('never imported by Terrafuse')\n")
    (target / "README.md").write_text("tiny stand-in of the DiffusionSat port\n")
    return target


def _bin_only(folder: Path, target: Path) -> Path:
    """The same weights with the UNet as a pickled ``.bin`` only (as older hub repositories hold it)."""
    _copy(folder, target)
    unet = target / "unet"
    weights = unet / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), unet / "diffusion_pytorch_model.bin")
    weights.unlink()
    return target


def test_hub_ports_and_bin_only_repositories_load_as_the_zenodo_release(tiny_backbone_dirs, tmp_path, hub_settings):
    zenodo = tiny_backbone_dirs["diffusionsat"]
    port = _community_port(zenodo, tmp_path / "port")
    bin_only = _bin_only(port, tmp_path / "bin-only")
    repos = {"BiliSakura/DiffusionSat-Single-512": port, "terrafuse-test/bin-only": bin_only}
    with StandInHub(repos) as hub:
        hub_settings(hub.endpoint)
        # A catalogue name is fetched by the model manager (which pins nothing for the ports: unverified).
        run_job("models", {"action": "download", "name": "diffusionsat-512-hub", "unverified": True}, Progress())
        by_name = load_backbone("diffusionsat-512-hub")
        from_bin = load_backbone("terrafuse-test/bin-only")
    fetched = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
    assert not any(path.endswith(("pipeline_diffusionsat.py", "README.md")) for path in fetched)
    assert any(path.endswith("bin-only/resolve/0123456789abcdef0123456789abcdef01234567/unet/"
                             "diffusion_pytorch_model.bin") for path in fetched)
    assert not any("DiffusionSat-Single-512" in path and path.endswith(".bin") for path in fetched)
    assert by_name.name == "diffusionsat-512-hub"
    assert by_name.unet_folder == "unet"
    assert by_name.metadata_embedding is not None
    assert from_bin.metadata_embedding is not None
    reference = load_backbone(zenodo)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    expected = _features(reference, images)
    for backbone in (by_name, from_bin):
        torch.testing.assert_close(backbone.metadata_zero_term, reference.metadata_zero_term)
        for a, b in zip(_features(backbone, images), expected):
            torch.testing.assert_close(a, b)


def test_bin_weights_are_fetched_only_where_safetensors_are_missing():
    listing = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
               "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin",
               "text_encoder/pytorch_model.fp16.bin", "checkpoint-150000/unet/diffusion_pytorch_model.bin"]
    extra = set(hub_patterns(listing)) - set(hub_patterns([]))
    assert extra == {"unet/*.bin", "checkpoint-150000/unet/*.bin"}
