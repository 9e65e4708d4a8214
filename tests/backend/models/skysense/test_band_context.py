"""SkySense's head with a band context: the cells' values, the branch's logits, saving, a missing modality,
and polygons classified from their mean feature and mean context."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backend.errors import UserError
from backend.models.band_context import band_context
from backend.models.skysense import SkySense
from backend.models.skysense.config import HR_BANDS, S1_BANDS, S2_BANDS
from backend.models.skysense.heads import classify_polygons
from backend.models.skysense.model import cell_band_context
from tests.backend.models.skysense.tiny import CLASSES, make_inputs, micro_config

CONTEXT = {"modalities": ["s2", "s1"], "modality_channels": {"s2": len(S2_BANDS), "s1": len(S1_BANDS)},
           "windows_px": [3, 5], "spread_px": 3}


def _model() -> SkySense:
    torch.manual_seed(0)
    model = SkySense(micro_config()).eval()
    model.attach_head(CLASSES, CONTEXT)
    with torch.no_grad():
        for parameter in model.band_branch.parameters():
            parameter.normal_()
        model.band_branch.shift.normal_()
    return model


def test_cell_values_average_a_series_over_its_valid_dates_and_an_image_over_each_cell() -> None:
    inputs = make_inputs(("hr", "s2"), hr_px=32, s2_px=8)
    inputs["s2_valid"] = torch.tensor([[True, False, True]])
    context = cell_band_context(inputs, ["hr", "s2"], (8, 8), windows_px=(), spread_px=1)
    hr_cells = inputs["hr"].reshape(1, len(HR_BANDS), 8, 4, 8, 4).mean(dim=(3, 5))
    s2_mean = (inputs["s2"][:, 0] + inputs["s2"][:, 2]) / 2
    torch.testing.assert_close(context[:, :len(HR_BANDS) + len(S2_BANDS)], torch.cat([hr_cells, s2_mean], dim=1))


def test_logits_are_the_heads_plus_the_branchs_on_the_context() -> None:
    model = _model()
    inputs = make_inputs(("s2", "s1"))
    with torch.no_grad():
        out = model(inputs)
    values = torch.cat([inputs["s2"].mean(1), inputs["s1"].mean(1)], dim=1)
    expected_context = band_context(values, (3, 5), 3)
    torch.testing.assert_close(out["band_context"], expected_context)
    torch.testing.assert_close(out["logits"], model.head(out["features"]) + model.band_branch(expected_context))
    # A new head starts at zero: the branch alone decides until the head has learnt something.
    assert float(model.head.linear.weight.detach().abs().sum()) == 0.0


def test_head_with_band_context_saves_and_loads(tmp_path: Path) -> None:
    model = _model()
    model.save_pretrained(tmp_path / "m")
    loaded = SkySense.from_pretrained(tmp_path / "m")
    assert loaded.config.band_context == CONTEXT
    inputs = make_inputs(("s2", "s1"), seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs)["logits"], model(inputs)["logits"])


def test_a_missing_modality_reads_as_the_training_mean() -> None:
    """Its channels equal the branch's shift: standardised, they are 0 and add nothing."""
    model = _model()
    inputs = make_inputs(("s2",))
    with torch.no_grad():
        context = model.cell_context(inputs, (8, 8))
    s1 = torch.zeros(context.shape[1], dtype=torch.bool)
    block = len(S2_BANDS) + len(S1_BANDS)
    for start in range(0, context.shape[1], block):
        s1[start + len(S2_BANDS):start + block] = True
    torch.testing.assert_close(context[0, s1], model.band_branch.shift[s1][:, None, None].expand(-1, 8, 8))
    with pytest.raises(UserError, match="give at least one"):
        model.cell_context(make_inputs(("hr",)), (8, 8))


def test_other_band_counts_are_refused() -> None:
    model = _model()
    inputs = make_inputs(("s2", "s1"))
    inputs["s2"] = inputs["s2"][:, :, :4]
    with pytest.raises(UserError, match="Give the bands it was trained with"):
        model.cell_context(inputs, (8, 8))


def test_polygons_add_the_branch_on_their_mean_context() -> None:
    model = _model()
    inputs = make_inputs(("s2", "s1"))
    with torch.no_grad():
        out = model(inputs)
        ids = torch.zeros(1, 8, 8, dtype=torch.long)
        ids[0, :4] = 1
        ids[0, 4:] = 2
        stacked = torch.cat([out["features"], out["band_context"]], dim=1)
        probabilities, _, _ = classify_polygons(model.head, stacked, ids, 2, band_branch=model.band_branch)
        first = stacked[0, :, :4].mean(dim=(1, 2))
        fused = out["features"].shape[1]
        logits = model.head.linear(first[:fused]) + model.band_branch(first[fused:, None, None])[:, 0, 0]
    torch.testing.assert_close(probabilities[0], logits.softmax(-1))


def test_a_finer_image_adds_its_spread_within_each_cell() -> None:
    inputs = make_inputs(("hr", "s2"), hr_px=32, s2_px=8)
    plain = cell_band_context(inputs, ["hr", "s2"], (8, 8), windows_px=(3,), spread_px=3)
    context = cell_band_context(inputs, ["hr", "s2"], (8, 8), windows_px=(3,), spread_px=3, cell_spread=["hr", "s2"])
    torch.testing.assert_close(context[:, :plain.shape[1]], plain)
    cells = inputs["hr"].reshape(1, len(HR_BANDS), 8, 4, 8, 4)
    expected = cells.std(dim=(3, 5), unbiased=False)
    torch.testing.assert_close(context[:, plain.shape[1]:plain.shape[1] + len(HR_BANDS)], expected, atol=1e-4,
                               rtol=1e-4)
    # A series already at the grid's resolution has no spread within a cell.
    assert float(context[:, plain.shape[1] + len(HR_BANDS):].abs().max()) < 1e-3


def test_a_head_with_cell_spread_reads_a_missing_modality_as_the_training_mean() -> None:
    torch.manual_seed(0)
    model = SkySense(micro_config()).eval()
    context = {"modalities": ["hr", "s2"], "modality_channels": {"hr": len(HR_BANDS), "s2": len(S2_BANDS)},
               "windows_px": [3], "spread_px": 3, "cell_spread": ["hr"]}
    model.attach_head(CLASSES, context)
    with torch.no_grad():
        model.band_branch.shift.normal_()
        out = model.cell_context(make_inputs(("s2",), s2_px=8), (8, 8))
        full = model.cell_context(make_inputs(("hr", "s2"), hr_px=32, s2_px=8), (8, 8))
    assert out.shape == full.shape == (1, model.band_branch.shift.shape[0], 8, 8)
    hr_spread = slice(out.shape[1] - len(HR_BANDS), out.shape[1])
    torch.testing.assert_close(out[0, hr_spread], model.band_branch.shift[hr_spread][:, None, None].expand(-1, 8, 8))
