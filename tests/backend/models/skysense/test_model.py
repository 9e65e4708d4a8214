"""SkySense through a base tester in the manner of segmentation_models_pytorch: every non-empty subset of
the modalities forward, backward and through a save/load round trip, on a tiny configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.errors import UserError
from backend.models.skysense import SkySense, create_skysense, list_skysense
from backend.models.skysense.temporal import DayOfYearEncoding, TemporalFusion
from tests.backend.models.skysense.tiny import CLASSES, SUBSETS, make_inputs, micro_config


def build(modalities: tuple[str, ...] = ("hr", "s2", "s1"), seed: int = 0, classes: bool = True) -> SkySense:
    torch.manual_seed(seed)
    return SkySense(micro_config(modalities=modalities, classes=CLASSES if classes else []))


@pytest.mark.parametrize("modalities", SUBSETS, ids="+".join)
def test_forward_every_modality_subset(modalities: tuple[str, ...]) -> None:
    model = build(modalities).eval()
    with torch.no_grad():
        out = model(make_inputs(modalities, batch=2))
    config = model.config
    grid = (8, 8) if {"s2", "s1"} & set(modalities) else (1, 1)  # S2 grid: 8 px; HR alone: 32 px / 32
    assert out["features"].shape == (2, 2 * config.dim, *grid)
    assert out["fused"].shape == (2, config.dim, *grid)
    assert out["prototype_similarity"].shape == (2, config.prototypes_per_region, *grid)
    assert out["logits"].shape == (2, len(CLASSES), *grid)
    assert torch.equal(out["features"][:, : config.dim], out["fused"])
    assert all(torch.isfinite(v).all() for k, v in out.items() if k != "region")
    assert model.feature_info[0]["num_chs"] == 2 * config.dim


@pytest.mark.parametrize("modalities", [("hr", "s2", "s1"), ("s1",), ("hr",)], ids="+".join)
def test_backward_reaches_every_parameter_in_use(modalities: tuple[str, ...]) -> None:
    model = build(modalities).train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # timm zero-initialises ResNet blocks' last norm,
            torch.nn.init.ones_(module.weight)  # which would zero their branch's gradient at initialisation
    out = model(make_inputs(modalities, batch=2))
    (out["logits"] * torch.randn_like(out["logits"])).sum().backward()
    for name, parameter in model.named_parameters():
        if name.startswith("date_encoding"):
            continue  # only the rows of the days in the batch learn: checked below
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} gets a zero gradient"
    rows = model.date_encoding.weight.grad
    if modalities == ("hr",):
        assert rows is None or rows.abs().sum() == 0  # no date given: P_DTPE is not used
    else:
        assert (rows.abs().sum(dim=1) > 0).sum() >= 1
    assert model.prototypes.prototypes.grad is None  # prototypes move by EMA only (eq. 13)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = build().eval()
    inputs = make_inputs(("hr", "s2", "s1"), batch=2, seed=3)
    with torch.no_grad():
        before = model(inputs)
    model.save_pretrained(tmp_path / "skysense")
    assert sorted(p.name for p in (tmp_path / "skysense").iterdir()) == ["config.json", "model.safetensors"]
    loaded = SkySense.from_pretrained(tmp_path / "skysense")
    assert not loaded.training
    assert loaded.config == model.config
    with torch.no_grad():
        after = loaded(inputs)
    for key in ("features", "logits", "prototype_similarity"):
        assert torch.equal(before[key], after[key]), key
    with torch.no_grad():
        other = build(seed=1).eval()(inputs)
    assert not torch.equal(other["features"], after["features"])


def test_loading_refuses_other_weights(tmp_path: Path) -> None:
    build().save_pretrained(tmp_path / "a")
    build(("s2",)).save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "config.json").replace(tmp_path / "a" / "config.json")
    with pytest.raises(UserError, match="unexpected"):
        SkySense.from_pretrained(tmp_path / "a")
    weights = tmp_path / "b" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (tmp_path / "a" / "config.json").replace(tmp_path / "b" / "config.json")
    with pytest.raises(UserError, match="corrupt or truncated"):
        SkySense.from_pretrained(tmp_path / "b")


def test_date_encoding_is_indexed_by_day_of_year() -> None:
    encoding = DayOfYearEncoding(dim=4)
    rows = encoding(torch.tensor([[1, 2, 365, 366]]))
    weight = encoding.weight
    assert torch.equal(rows[0, 0], weight[0])
    assert torch.equal(rows[0, 1], weight[1])
    assert torch.equal(rows[0, 2], weight[364])
    assert torch.equal(rows[0, 3], weight[364])
    for bad in (0, 367):
        with pytest.raises(UserError, match="Day of year"):
            encoding(torch.tensor([bad]))


def test_dates_change_the_fused_feature_and_only_through_p_dtpe() -> None:
    model = build(("s2",), classes=False).eval()
    inputs = make_inputs(("s2",))
    shifted = {**inputs, "s2_doy": torch.remainder(inputs["s2_doy"] + 100, 365) + 1}
    with torch.no_grad():
        a, b = model(inputs)["fused"], model(shifted)["fused"]
        assert not torch.allclose(a, b)
        model.date_encoding.weight.zero_()  # without P_DTPE the dates cannot matter
        assert torch.equal(model(inputs)["fused"], model(shifted)["fused"])


def test_extra_token_is_prepended_and_its_output_is_the_fused_feature() -> None:
    torch.manual_seed(0)
    fusion = TemporalFusion(dim=8, depth=1, heads=2).eval()
    tokens = torch.randn(5, 3, 8)
    cat = fusion.prepend_extra_token(tokens)
    assert cat.shape == (5, 4, 8)  # 1 + N_T tokens (eq. 2)
    assert torch.equal(cat[:, 0], fusion.extra_token[0].expand(5, -1))
    with torch.no_grad():
        before = fusion(tokens)
        fusion.extra_token.add_(1.0)
        after = fusion(tokens)
    assert before.shape == (5, 8)
    assert not torch.allclose(before, after)


def test_padded_time_steps_are_ignored() -> None:
    model = build(("s2",), classes=False).eval()
    inputs = make_inputs(("s2",))
    inputs["s2_valid"] = torch.tensor([[True, True, False]])
    changed = {**inputs, "s2": inputs["s2"].clone()}
    changed["s2"][:, 2] = 100.0
    with torch.no_grad():
        assert torch.allclose(model(inputs)["fused"], model(changed)["fused"], atol=1e-6)
        del inputs["s2_valid"]
        assert not torch.allclose(model(inputs)["fused"], model(changed)["fused"], atol=1e-6)


@pytest.mark.parametrize(("inputs", "message"), [
    ({"lonlat": torch.zeros(1, 2)}, "at least one input"),
    ({"s2": torch.randn(1, 2, 10, 8, 8), "lonlat": torch.zeros(1, 2)}, "acquisition dates"),
    ({"s2": torch.randn(1, 2, 4, 8, 8), "s2_doy": torch.ones(1, 2, dtype=torch.long), "lonlat": torch.zeros(1, 2)},
     "has 4 bands"),
    ({"hr": torch.randn(1, 3, 32, 32)}, "location"),
])
def test_bad_inputs_get_clear_messages(inputs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build().eval()(inputs)


def test_a_modality_without_encoder_is_refused() -> None:
    with pytest.raises(UserError, match="no encoder for hr"):
        build(("s2",))(make_inputs(("hr", "s2")))


def test_registry() -> None:
    assert list_skysense() == ["skysense-paper", "skysense-tiny"]
    model = create_skysense("skysense-tiny", modalities=("s1",))
    assert list(model.encoders) == ["s1"]
    with pytest.raises(ValueError, match="skysense-tiny"):
        create_skysense("skysense-huge")
