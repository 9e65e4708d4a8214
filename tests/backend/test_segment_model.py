"""The segment job with a real (tiny, random) backbone and head: tiled like whole away from borders,
and the backbone kept loaded between jobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from backend.models.cache import BACKBONES, BackboneCache
from backend.progress import Progress
from backend.raster.bands import BandNormalisation, read_bands
from backend.worker import run_job
from tests.backend.rasters import write_raster
from tests.backend.segment_stand_in import CLASSES, smooth_image


@pytest.fixture(scope="module")
def head(tiny_backbone_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backend.models.diffusion import DiffusionFeatureExtractor, load_backbone
    from backend.models.segmenter import SatDiFuser

    source = tiny_backbone_dirs["v_prediction"]
    backbone = load_backbone(source)
    extractor = DiffusionFeatureExtractor(backbone, timesteps=(1,))
    torch.manual_seed(0)
    model = SatDiFuser.create(
        extractor.feature_info, CLASSES, "global", "pixel", fusion_kwargs={"out_chs": 8},
        backbone={"name": backbone.name, "source": str(source.resolve()), "sha256": backbone.sha256},
        timesteps=[1], blocks=list(extractor.blocks), levels=list(extractor.levels), bands=[1, 2, 3],
        band_low=[0.0] * 3, band_high=[255.0] * 3, tile_px=64)
    return model.save_pretrained(tmp_path_factory.mktemp("head") / "head")


def test_real_model_tiles_match_the_whole_image_away_from_borders(head: Path, tmp_path: Path) -> None:
    from backend.models.diffusion import load_backbone
    from backend.models.segmenter import SatDiFuser, read_config

    image = write_raster(tmp_path / "in.tif", smooth_image(128, 128))
    result = run_job("segment", {"image": str(image), "model": str(head), "out": str(tmp_path / "out"),
                                 "overlap_px": 32, "batch_size": 2}, Progress())
    assert result["tiles"] == 9
    model = SatDiFuser.from_pretrained(head, backbone=load_backbone(read_config(head).backbone["source"]))
    with rasterio.open(image) as src:
        raw, _ = read_bands(src, src.window(*src.bounds), [1, 2, 3])
    whole = BandNormalisation((1, 2, 3), (0.0,) * 3, (255.0,) * 3).apply(raw)
    with torch.inference_mode():
        probabilities = model(torch.from_numpy(whole)[None]).softmax(1)[0].numpy()
    with rasterio.open(tmp_path / "out" / "confidence.tif") as dst:
        confidence = dst.read(1)
    inner = (slice(24, 104), slice(24, 104))
    # A convolutional model sees other context in a tile than in the whole image: close, not equal.
    assert np.abs(confidence[inner] - probabilities.max(0)[inner]).mean() < 0.05
    assert result["provenance"]["checkpoint_sha256"]
    assert len(result["provenance"]["backbone_sha256"]) == 64


def test_backbones_stay_loaded_between_jobs(head: Path, tmp_path: Path) -> None:
    image = write_raster(tmp_path / "in.tif", smooth_image(64, 64))
    BACKBONES.clear()
    loads = BACKBONES.loads
    for i in range(2):
        run_job("segment", {"image": str(image), "model": str(head), "out": str(tmp_path / f"out{i}")}, Progress())
    assert BACKBONES.loads == loads + 1


def test_cache_drops_the_least_recently_used(tiny_backbone_dirs: dict[str, Path]) -> None:
    cache = BackboneCache(capacity=1)
    first = cache.get(str(tiny_backbone_dirs["v_prediction"]))
    assert cache.get(str(tiny_backbone_dirs["v_prediction"])) is first
    cache.get(str(tiny_backbone_dirs["epsilon"]))
    assert cache.get(str(tiny_backbone_dirs["v_prediction"])) is not first
    assert cache.loads == 3
