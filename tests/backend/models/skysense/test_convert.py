"""The converter from the official checkpoints' key layouts, on state dicts of those layouts built at small
sizes: key round trips, and numerical checks against reference implementations of the official modules
(mmcls patch merging with nn.Unfold, mmseg ViT layers with nn.MultiheadAttention)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from backend.errors import UserError
from backend.models.skysense import SkySense
from backend.models.skysense.config import official_conventions
from backend.models.skysense.convert import (
    LAYOUTS,
    convert_official,
    ctpe_to_date_encoding,
    export_official,
    infer_swinv2,
    load_official,
    map_keys,
    timm_to_unfold_merge,
    unfold_to_timm_merge,
)
from tests.backend.models.skysense.tiny import make_inputs, paper_layout_config

FILES = {"hr": "skysense_model_backbone_hr.pth", "s2": "skysense_model_backbone_s2.pth",
         "s1": "skysense_model_backbone_s1.pth", "head_s2": "skysense_model_head_s2.pth",
         "head_s1": "skysense_model_head_s1.pth", "fusion": "skysense_model_fusion.pth"}


@pytest.fixture(scope="module")
def source() -> SkySense:
    torch.manual_seed(0)
    model = SkySense(official_conventions(paper_layout_config())).eval()
    with torch.no_grad():  # one projection for all modalities, as the official fusion's porj_linear
        for m in ("s2", "s1"):
            model.adapters[m].proj.load_state_dict(model.adapters["hr"].proj.state_dict())
    return model


def write_official(model: SkySense, folder: Path) -> dict[str, Path]:
    paths = {}
    for part, state in export_official(model).items():
        paths[part] = folder / FILES[part]
        torch.save(state, paths[part])
    return paths


def test_exported_layouts_look_official(source: SkySense) -> None:
    exported = export_official(source)
    assert sorted(exported) == sorted(FILES)
    hr, s2, fusion = exported["hr"], exported["s2"], exported["fusion"]
    assert "backbone.stages.1.downsample.reduction.weight" in hr
    assert "backbone.stages.2.blocks.1.attn.w_msa.cpb_mlp.2.weight" in hr
    assert "backbone.stages.2.blocks.1.norm3.weight" in hr
    assert "backbone.norm3.weight" in hr
    assert "backbone.stages.0.blocks.0.ffn.layers.0.0.weight" in hr
    assert "backbone_s2.layers.1.attn.attn.in_proj_weight" in s2
    assert "backbone_s2.layers.0.ln2.bias" in s2
    assert s2["backbone_s2.pos_embed"].shape[1] == 1 + 16  # mmseg keeps a class-token slot
    assert "fusion.porj_linear.weight" in fusion
    assert "fusion.cls_token" in fusion
    assert "fusion.layers.1.ffn.layers.1.weight" in fusion
    assert "head_s2.decoder.0.weight" in exported["head_s2"]


def test_round_trip_through_official_files(source: SkySense, tmp_path: Path) -> None:
    paths = write_official(source, tmp_path)
    converted, report = convert_official(paths, config=paper_layout_config())
    own, back = source.state_dict(), converted.state_dict()
    skipped = {"date_encoding.weight"} | {k for k in own if k.startswith("prototypes.")}
    for key, value in own.items():
        if key in skipped:
            continue
        assert back[key].shape == value.shape, key
        assert torch.equal(back[key], value), key
    assert "date_encoding.weight" in report.not_filled  # no ctpe given
    assert report.not_filled == ["date_encoding.weight", "prototypes.prototypes"]
    assert "mask_token" not in str(report.converted)
    inputs = make_inputs(("hr", "s2", "s1"), hr_px=64, s2_px=16)
    with torch.no_grad():
        converted.date_encoding.weight.copy_(source.date_encoding.weight)
        converted.prototypes.prototypes.copy_(source.prototypes.prototypes)
        assert torch.equal(converted(inputs)["features"], source(inputs)["features"])


def test_prefixes_are_optional_and_wrappers_unwrapped(source: SkySense, tmp_path: Path) -> None:
    bare = export_official(source, with_prefixes=False)["s2"]
    torch.save({"state_dict": bare}, tmp_path / "s2.pth")
    mapped, _ = map_keys(load_official(tmp_path / "s2.pth"), "s2")
    own = {k.removeprefix(LAYOUTS["s2"].target): v for k, v in source.state_dict().items()
           if k.startswith(LAYOUTS["s2"].target)}
    assert sorted(mapped) == sorted(own)
    # The combined pretraining checkpoint names the HR backbone backbone_gep.
    combined = {k.replace("backbone.", "backbone_gep.", 1): v for k, v in export_official(source)["hr"].items()}
    combined["backbone_s2.cls_token"] = torch.zeros(1, 1, 8)
    mapped_hr, ignored = map_keys(combined, "hr")
    assert "layers.1.downsample.reduction.weight" in mapped_hr
    assert "backbone_s2.cls_token" in ignored


def test_patch_merging_matches_mmcls_unfold() -> None:
    """mmcls merges 2x2 neighbourhoods with nn.Unfold (channel-major); the converted weight must give timm's
    PatchMerging the same output."""
    from timm.models.swin_transformer_v2 import PatchMerging

    torch.manual_seed(0)
    c = 6
    x = torch.randn(2, 4, 6, c)  # (B, H, W, C), timm's layout
    mmcls_reduction = torch.randn(2 * c, 4 * c)
    unfolded = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, L, 4C)
    expected = F.layer_norm(unfolded @ mmcls_reduction.T, (2 * c,))  # post-norm, as SwinV2 stages use it
    merge = PatchMerging(c, 2 * c)
    with torch.no_grad():
        merge.reduction.weight.copy_(unfold_to_timm_merge(mmcls_reduction))
    got = merge(x).reshape(2, -1, 2 * c)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(timm_to_unfold_merge(unfold_to_timm_merge(mmcls_reduction)), mmcls_reduction)


class MmsegLayer(nn.Module):
    """The official ViT / fusion layer: pre-norm, nn.MultiheadAttention (mmcv wraps it as attn.attn), FFN."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = nn.Module()
        self.attn.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Module()
        self.ffn.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0)),
                                        nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn.attn(y, y, y, need_weights=False)[0]
        return x + self.ffn.layers(self.ln2(x))


@pytest.mark.parametrize("part", ["s2", "fusion"])
def test_transformer_layers_match_the_mmseg_reference(part: str) -> None:
    torch.manual_seed(1)
    model = SkySense(paper_layout_config()).eval()
    if part == "s2":
        dim, heads, eps = 32, 2, 1e-6
        ours = model.encoders["s2"].backbone.blocks[0]
    else:
        dim, heads, eps = 32, 4, 1e-5
        ours = model.fusion.layers[0]
    reference = MmsegLayer(dim, heads, eps).eval()
    official = {f"layers.0.{k}": v for k, v in reference.state_dict().items()}
    mapped, _ = map_keys(official, part)
    prefix = "blocks.0." if part == "s2" else "layers.0."
    ours.load_state_dict({k.removeprefix(prefix): v for k, v in mapped.items()})
    x = torch.randn(3, 5, dim)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


def test_ctpe_goes_through_the_input_projection() -> None:
    torch.manual_seed(0)
    ctpe, weight = torch.randn(1, 365, 12), torch.randn(4, 12)
    table = ctpe_to_date_encoding(ctpe, weight, dim=4)
    x, bias = torch.randn(12), torch.randn(4)
    # porj_linear(x + ctpe[t]) == porj_linear(x) + P_DTPE[t]: adding after the projection is exact
    assert torch.allclose(F.linear(x + ctpe[0, 40], weight, bias), F.linear(x, weight, bias) + table[40], atol=1e-5)
    same_width = torch.randn(1, 365, 4)
    assert torch.equal(ctpe_to_date_encoding(same_width, None, dim=4), same_width[0])
    assert ctpe_to_date_encoding(ctpe, None, dim=4) is None


def test_ctpe_in_the_s2_checkpoint_becomes_p_dtpe(source: SkySense, tmp_path: Path) -> None:
    exported = export_official(source)
    exported["s2"]["ctpe"] = torch.randn(1, 365, 128)  # the fusion's input width, as in SkySense++
    converted, report = convert_official(exported, config=paper_layout_config())
    projection = exported["fusion"]["fusion.porj_linear.weight"]
    assert torch.allclose(converted.date_encoding.weight, exported["s2"]["ctpe"][0] @ projection.T)
    assert "date_encoding.weight" not in report.not_filled


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_foreign_and_unsafe_checkpoints_are_refused(tmp_path: Path) -> None:
    torch.save({"backbone.something.else": torch.zeros(2)}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="unknown layout"):
        convert_official({"hr": tmp_path / "odd.pth"}, config=paper_layout_config())
    with (tmp_path / "code.pth").open("wb") as f:
        pickle.dump({"w": Path("x")}, f)  # any non-tensor object: weights_only refuses to unpickle it
    with pytest.raises(UserError, match="weights-only"):
        load_official(tmp_path / "code.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "odd.pth").read_bytes()[:50])
    with pytest.raises(UserError, match="corrupt"):
        load_official(tmp_path / "cut.pth")


def test_a_checkpoint_of_other_sizes_is_refused_with_the_sizes(source: SkySense) -> None:
    config = paper_layout_config()
    config.encoders["s1"].timm_kwargs["embed_dim"] = 16
    with pytest.raises(UserError, match="do not fit"):
        convert_official({"s1": export_official(source)["s1"]}, config=config.with_overrides(modalities=("s1",)))


def test_infer_swinv2_reads_the_sizes(source: SkySense) -> None:
    sizes = infer_swinv2(export_official(source)["hr"])
    assert sizes == {"embed_dim": 16, "patch_size": 4, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4],
                     "extra_norm_blocks": [[2, 1]]}
