"""The band mask of a Sentinel-2 encoder (rasters lacking bands, Landsat read as Sentinel-2) and band dropout
in pretraining, on tiny models with random weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from backend.errors import UserError
from backend.models.skysense import SkySense
from backend.models.skysense.config import S2_BANDS
from backend.models.skysense.pretraining import (
    PretrainingSettings,
    band_subsets,
    drop_bands,
    pretrain,
    student_view_bands,
)
from backend.raster.band_mapping import default_band_mapping
from backend.raster.sensors import LANDSAT_OLI_TO_S2, is_landsat, landsat_descriptions
from tests.backend.models.skysense.tiny import make_inputs, micro_config

#: Landsat OLI B2..B7 as Sentinel-2 reads them.
LANDSAT_PRESENT = [b in ("B2", "B3", "B4", "B8A", "B11", "B12") for b in S2_BANDS]


def masked_model(seed: int = 0, **overrides: Any) -> SkySense:
    config = micro_config(modalities=("s2", "s1"), **overrides)
    config.encoders["s2"].band_mask = True
    torch.manual_seed(seed)
    return SkySense(config).eval()


def test_landsat_bands_stand_for_their_sentinel2_neighbours() -> None:
    assert is_landsat("/data/LC08_L2SP_224078_20200127_02_T1.TIF", {}, [None])
    assert is_landsat("scene.tif", {"SPACECRAFT_ID": "LANDSAT_9"}, [None])
    assert is_landsat("scene.tif", {}, ["SR_B5"]) is False  # a band name alone does not say Landsat
    assert not is_landsat("S2A_MSIL2A_20170613.tif", {"SOURCE": "Copernicus"}, ["B02", "B8A"])
    # Six bands without descriptions: B2..B7 in order; named ones by their OLI number or colour.
    assert landsat_descriptions([None] * 6, 6) == ["B2", "B3", "B4", "B8A", "B11", "B12"]
    assert landsat_descriptions(["SR_B4", "SR_B5", "nir", "swir2", "thermal B10"], 5) == ["B4", "B8A", "B8A",
                                                                                        "B12", None]
    assert LANDSAT_OLI_TO_S2["B5"] == "B8A"  # the narrow NIR band (HLS), not the broad B8
    mapping = default_band_mapping(landsat_descriptions([None] * 6, 6), S2_BANDS, "Landsat", allow_missing=True)
    assert mapping == [1, 2, 3, None, None, None, None, 4, 5, 6]


def test_a_raster_lacking_bands_is_refused_without_a_mask_and_mapped_with_one() -> None:
    four = ["B02", "B03", "B04", "B11"]
    with pytest.raises(UserError, match="lacks the bands B5, B6, B7, B8, B8A, B12"):
        default_band_mapping(four, S2_BANDS, "Sentinel-2")
    assert default_band_mapping(four, S2_BANDS, "Sentinel-2", allow_missing=True) == [1, 2, 3, None, None, None,
                                                                                     None, None, 4, None]
    # Four bands without descriptions: the four 10 m bands.
    assert default_band_mapping([None] * 4, S2_BANDS, "Sentinel-2", allow_missing=True) == [1, 2, 3, None, None,
                                                                                            None, 4, None, None, None]
    with pytest.raises(UserError, match="lacks the bands"):
        default_band_mapping(["VV", "VH"], S2_BANDS, "Sentinel-2", allow_missing=True)  # none of them


def test_missing_bands_are_masked_values_never_read_and_the_mask_is_seen() -> None:
    model = masked_model()
    assert model.encoders["s2"].backbone.patch_embed.proj.in_channels == 2 * len(S2_BANDS)
    inputs = make_inputs(("s2",), batch=2, s2_px=16)
    present = torch.tensor([LANDSAT_PRESENT] * 2)
    with torch.inference_mode():
        base = model({**inputs, "s2_bands": present})["features"]
        noisy = dict(inputs)
        noisy["s2"] = inputs["s2"].clone()
        noisy["s2"][:, :, ~present[0]] = 1e3  # whatever a missing band holds is not read
        same = model({**noisy, "s2_bands": present})["features"]
        full = model(inputs)["features"]  # no mask given: every band present
        fewer = model({**inputs, "s2_bands": torch.tensor([[True, True, True] + [False] * 7] * 2)})["features"]
    torch.testing.assert_close(same, base)
    assert not torch.allclose(full, base)
    assert not torch.allclose(fewer, base)


def test_an_encoder_without_a_mask_refuses_missing_bands() -> None:
    config = micro_config(modalities=("s2",))
    model = SkySense(config).eval()
    inputs = make_inputs(("s2",), s2_px=16)
    with pytest.raises(UserError, match="no band mask"):
        model({**inputs, "s2_bands": torch.tensor([LANDSAT_PRESENT])})


def test_band_dropout_keeps_a_held_band_and_draws_the_products_subsets() -> None:
    generator = torch.Generator().manual_seed(0)
    present = torch.tensor([LANDSAT_PRESENT] * 200)
    subsets = band_subsets(list(S2_BANDS))
    assert [S2_BANDS[i] for i in subsets[0]] == ["B2", "B3", "B4", "B8A", "B11", "B12"]
    dropped = drop_bands(present, generator, 0.5, subsets)
    assert not (dropped & ~present).any()  # never a band the data lacks
    assert dropped.any(dim=1).all()  # always one band held
    changed = (dropped != present).any(dim=1).float().mean()
    assert 0.3 < float(changed) < 0.7
    assert torch.equal(drop_bands(present, torch.Generator().manual_seed(0), 0.5, subsets), dropped)  # seeded
    assert torch.equal(drop_bands(present, generator, 0.0, subsets), present)


def test_pretraining_with_band_dropout_shows_the_student_fewer_bands() -> None:
    model = masked_model()
    seen: list[tuple[bool, torch.Tensor]] = []
    student_embed = model.encoders["s2"].backbone.patch_embed

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        # The presence channels of every image the patch embedding reads (the teacher's copy calls it too).
        seen.append((module is student_embed, args[0][:, len(S2_BANDS):, 0, 0].detach().clone() > 0.5))

    student_embed.register_forward_pre_hook(record)
    batches = [make_inputs(("s2", "s1"), batch=2, seed=s, s2_px=8) for s in range(2)]
    before = model.encoders["s2"].backbone.patch_embed.proj.weight.detach().clone()
    history = pretrain(model, batches, steps=3, learning_rate=1e-3, seed=0,
                       settings=PretrainingSettings(num_clusters=2, head_dim=16, band_dropout=1.0))
    assert len(history) == 3
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in history)
    student = [mask for is_student, mask in seen if is_student]
    teacher = [mask for is_student, mask in seen if not is_student]
    assert student
    assert teacher
    assert all(bool((~mask).any(dim=1).all()) for mask in student)  # every student sample lost bands
    assert all(bool(mask.all()) for mask in teacher)  # the teacher sees every band
    mask_weights = model.encoders["s2"].backbone.patch_embed.proj.weight[:, len(S2_BANDS):]
    assert not torch.allclose(mask_weights, before[:, len(S2_BANDS):])  # the missing-band embedding learns
    # The teacher's view keeps every band; without dropout the student's does too.
    view = student_view_bands(batches[0], model, torch.Generator().manual_seed(0), 0.0)
    assert view is batches[0]


def test_explicit_bands_take_zero_for_a_missing_band(tmp_path) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import from_bounds

    from backend.raster.stack import missing_band_warnings, modality_inputs

    path = tmp_path / "S2_20230610_undescribed.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=5, dtype="uint16", crs="EPSG:32632",
                       transform=from_bounds(500000, 4980000, 500080, 4980080, 8, 8)) as dst:
        dst.write(np.ones((5, 8, 8), dtype=np.uint16))
    given = "3,2,1,0,0,0,4,0,5,0"  # B2..B4 in reverse order, B8 and B11; the others missing
    inputs = modality_inputs("s2", [str(path)], S2_BANDS, bands=given, allow_missing=True)
    assert inputs.bands == (3, 2, 1, 4, 5)
    assert inputs.missing_bands == ["B5", "B6", "B7", "B8A", "B12"]
    (line,) = missing_band_warnings([inputs])
    assert "lacks the bands B5, B6, B7, B8A, B12 of the model's 10" in line
    with pytest.raises(UserError, match="band 0 does not exist"):
        modality_inputs("s2", [str(path)], S2_BANDS, bands=given)  # no band mask: 0 is no band
