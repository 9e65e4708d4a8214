"""SkySense as its authors ran it: the calendar-time encoding on Sentinel-2 only, the official input statistics, and
prototypes that no official file carries. Golden tests on a small model in the official layout, against a
reference written here from the official pipeline (SkySense++'s public ``skysense_pp_pipeline.py``: the S2 tokens
get ``ctpe[day_of_year - 1]``, the HR and S1 tokens nothing, the fusion runs over [extra token, HR, S2, S1])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.models.skysense import SkySense
from backend.models.skysense.config import OFFICIAL_STATISTICS, official_conventions, paper_config
from backend.models.skysense.convert import convert_official, export_official
from backend.models.skysense.encoders import resize_to_grid
from backend.models.skysense.pretraining import LEARN_MOMENTUM, learn_prototypes
from backend.raster.stack import Normalisation
from tests.backend.models.skysense.tiny import make_inputs, micro_config, paper_layout_config


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> SkySense:
    """A small model in the official layout, written as the official .pth files and converted back."""
    torch.manual_seed(0)
    source = SkySense(paper_layout_config()).eval()
    folder = tmp_path_factory.mktemp("official")
    names = {"hr": "skysense_model_backbone_hr.pth", "s2": "skysense_model_backbone_s2.pth",
             "s1": "skysense_model_backbone_s1.pth", "head_s2": "skysense_model_head_s2.pth",
             "head_s1": "skysense_model_head_s1.pth", "fusion": "skysense_model_fusion.pth"}
    paths = {}
    for part, state in export_official(source).items():
        paths[part] = folder / names[part]
        torch.save(state, paths[part])
    model, _ = convert_official(paths, config=paper_layout_config())
    with torch.no_grad():
        model.date_encoding.weight.normal_()  # a visible P_DTPE (the test files carry no ctpe)
    return model.eval()


def _reference_fused(model: SkySense, inputs: dict) -> torch.Tensor:
    """F_fus^mm per the official pipeline, from the model's own encoders, P_DTPE table and fusion layers."""
    features = {m: model.encode_modality(m, inputs[m] if inputs[m].ndim == 5 else inputs[m][:, None])
                for m in ("hr", "s2", "s1")}
    grid = features["s2"].shape[-2:]
    tokens = []
    for m in ("hr", "s2", "s1"):
        f = features[m]
        f = resize_to_grid(f.flatten(0, 1), grid).unflatten(0, f.shape[:2])  # (B, T, d, h, w)
        if m == "s2":
            f = f + model.date_encoding.weight[inputs["s2_doy"] - 1][..., None, None]
        tokens.append(f)
    x = torch.cat(tokens, dim=1)
    b, t, d, h, w = x.shape
    x = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, d)
    x = torch.cat([model.fusion.extra_token.expand(x.shape[0], -1, -1), x], dim=1)
    for layer in model.fusion.layers:
        x = layer(x)
    return x[:, 0].reshape(b, h, w, d).permute(0, 3, 1, 2)


def test_the_paper_configuration_follows_the_official_conventions():
    config = paper_config()
    assert {m: e.date_encoding for m, e in config.encoders.items()} == {"hr": False, "s2": True, "s1": False}
    assert config.encoders["hr"].normalisation["mean"] == [0.485, 0.456, 0.406]
    assert config.encoders["hr"].normalisation["scale"] == 255.0
    assert len(config.encoders["s2"].normalisation["mean"]) == len(config.encoders["s2"].bands) == 10
    assert config.encoders["s1"].normalisation["std"] == OFFICIAL_STATISTICS["s1"]["std"]
    assert config.prototype_regions == []
    own = micro_config()  # Terrafuse's own models: every dated modality, percentiles over the area
    assert all(e.date_encoding and not e.normalisation for e in own.encoders.values())
    assert own.prototype_regions is None


def test_date_encoding_only_on_sentinel2_as_the_official_pipeline(converted: SkySense):
    inputs = make_inputs(("hr", "s2", "s1"), batch=2, hr_px=64, s2_px=16)
    inputs["hr_doy"] = torch.tensor([10, 200])
    with torch.no_grad():
        fused = converted(inputs)["fused"]
        torch.testing.assert_close(fused, _reference_fused(converted, inputs), rtol=1e-4, atol=1e-5)
        other_s1 = converted({**inputs, "s1_doy": inputs["s1_doy"] % 300 + 30, "hr_doy": torch.tensor([1, 2])})
        other_s2 = converted({**inputs, "s2_doy": inputs["s2_doy"] % 300 + 30})
    assert torch.equal(other_s1["fused"], fused)  # S1 and HR dates do not enter
    assert not torch.allclose(other_s2["fused"], fused)
    # S1 without dates is accepted: the official model never reads them.
    undated = {k: v for k, v in inputs.items() if k != "s1_doy"}
    with torch.no_grad():
        assert torch.equal(converted(undated)["fused"], fused)


def test_official_statistics_are_the_models_normalisation(converted: SkySense, tmp_path: Path):
    config = SkySense.from_pretrained(converted.save_pretrained(tmp_path / "model")).config
    assert config.encoders["s2"].normalisation == converted.config.encoders["s2"].normalisation
    assert config.prototype_regions == []
    rng = np.random.default_rng(0)
    for name, scale_of_values in (("hr", 255.0), ("s2", 4000.0), ("s1", -20.0)):
        stats = config.encoders[name].normalisation
        x = (rng.random((2, len(stats["mean"]), 4, 4)) * scale_of_values).astype(np.float32)
        expected = (x / stats["scale"] - np.asarray(stats["mean"])[:, None, None]) / np.asarray(stats["std"])[:, None,
                                                                                                              None]
        np.testing.assert_allclose(Normalisation.from_statistics(stats).apply(x), expected, rtol=1e-4, atol=1e-4)


def test_prototype_learning_does_not_depend_on_tile_order():
    torch.manual_seed(0)
    model = SkySense(official_conventions(micro_config(modalities=("s2",))))
    batches = [make_inputs(("s2",), batch=2, seed=s) for s in range(4)]
    initial = model.prototypes.prototypes.clone()
    learned = learn_prototypes(model, batches, epochs=3, seed=1)
    forward = model.prototypes.prototypes.clone()
    model.prototypes.prototypes.copy_(initial)
    model.prototypes.learned = set()
    assert learn_prototypes(model, batches[::-1], epochs=3, seed=7) == learned
    torch.testing.assert_close(model.prototypes.prototypes, forward)
    assert model.prototypes.learned_regions == learned
    regions = sorted(set(model.regions.index(torch.cat([b["lonlat"] for b in batches])).tolist()))
    assert learned == regions
    # Each pass is one EMA step of momentum LEARN_MOMENTUM: the untouched regions keep their values.
    others = [r for r in range(model.config.num_regions) if r not in regions]
    assert torch.equal(forward[others], initial[others])
    assert LEARN_MOMENTUM == 0.5
