"""The fusions compute what eq. 1-4 of SatDiFuser say, on synthetic features of a tiny UNet's layout."""

from __future__ import annotations

import pytest
import torch

from backend.models.fusion import (
    FUSIONS,
    GlobalWeightedFusion,
    LocalizedWeightedFusion,
    MoEFusion,
    create_fusion,
    scale_layouts,
)
from tests.backend.synthetic_features import random_features, tiny_feature_info

IMAGE_HW = (128, 192)


def test_layouts_group_blocks_by_level_finest_first() -> None:
    info = tiny_feature_info(timesteps=(1, 100, 200))
    layouts = scale_layouts(info)
    assert [layout.reduction for layout in layouts] == [8, 16, 32, 64]
    finest = layouts[0]
    assert finest.timesteps == (1, 100, 200)
    assert finest.blocks == ("up3.resnet.0", "up3.attn1.0", "up3.resnet.1", "up3.attn1.1")
    assert finest.block_chs == (8, 12, 8, 12)
    for t, timestep in enumerate(finest.timesteps):
        for b, block in enumerate(finest.blocks):
            assert info[finest.indices[t][b]]["name"] == f"t{timestep}/{block}"


def test_a_block_missing_at_one_timestep_is_refused() -> None:
    info = tiny_feature_info()
    with pytest.raises(ValueError, match="missing t100/up3.attn1.1"):
        scale_layouts([i for i in info if i["name"] != "t100/up3.attn1.1"])


def test_unknown_fusion_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="global, localized, moe"):
        create_fusion("concat", tiny_feature_info())


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_pyramid_has_one_level_per_scale_with_its_stride(name: str) -> None:
    info = tiny_feature_info()
    fusion = create_fusion(name, info, out_chs=16)
    pyramid = fusion(random_features(info, IMAGE_HW))
    assert fusion.pyramid_reductions == [8, 16, 32, 64]
    assert [tuple(level.shape) for level in pyramid] == [
        (2, 16, IMAGE_HW[0] // r, IMAGE_HW[1] // r) for r in fusion.pyramid_reductions]


def _projected(fusion: GlobalWeightedFusion | LocalizedWeightedFusion, features: list[torch.Tensor],
               scale: int) -> torch.Tensor:
    """Phi_s^l(F^l_{t,s}) for every (t, l) of one scale: (T_sel * L_sel, B, C, h, w), t-major."""
    layout = fusion.layouts[scale]
    return torch.stack([fusion.projections[scale][b](features[index])
                        for row in layout.indices for b, index in enumerate(row)])


def test_global_fusion_is_the_weighted_sum_of_eq1() -> None:
    info = tiny_feature_info()
    fusion = GlobalWeightedFusion(info, out_chs=8)
    with torch.no_grad():
        for logits in fusion.weight_logits:
            logits.normal_()
    features = random_features(info, IMAGE_HW)
    pyramid = fusion(features)
    for scale, weights in enumerate(fusion.weights()):
        assert weights.sum().item() == pytest.approx(1.0)
        expected = (weights.reshape(-1, 1, 1, 1, 1) * _projected(fusion, features, scale)).sum(0)
        torch.testing.assert_close(pyramid[scale], expected)


def test_global_fusion_can_select_one_block_and_timestep() -> None:
    info = tiny_feature_info()
    fusion = GlobalWeightedFusion(info, out_chs=8)
    with torch.no_grad():
        fusion.weight_logits[0].fill_(-50.0)
        fusion.weight_logits[0][1, 2] = 50.0  # timestep 100, block up3.resnet.1
    features = random_features(info, IMAGE_HW)
    selected = fusion.projections[0][2](features[fusion.layouts[0].indices[1][2]])
    torch.testing.assert_close(fusion(features)[0], selected)


def test_localized_fusion_weights_each_pixel_as_eq2() -> None:
    info = tiny_feature_info()
    fusion = LocalizedWeightedFusion(info, out_chs=8, gate_chs=8)
    with torch.no_grad():
        for gate in fusion.gates:
            gate.layers[-1].weight.normal_()
    features = random_features(info, IMAGE_HW)
    pyramid = fusion(features)
    for scale, weights in enumerate(fusion.last_weights):
        layout = fusion.layouts[scale]
        assert weights.shape[1] == len(layout.timesteps) * len(layout.blocks)
        torch.testing.assert_close(weights.sum(1), torch.ones_like(weights[:, 0]))
        assert weights.std(dim=(2, 3)).mean() > 1e-3  # varies over pixels: not one global weight
        expected = (weights.permute(1, 0, 2, 3).unsqueeze(2) * _projected(fusion, features, scale)).sum(0)
        torch.testing.assert_close(pyramid[scale], expected)


def test_moe_gates_keep_top_k_experts_per_pixel() -> None:
    info = tiny_feature_info()
    fusion = MoEFusion(info, out_chs=8)
    assert (fusion.num_experts, fusion.top_k) == (8, 2)  # Sec. 4.4
    fusion(random_features(info, IMAGE_HW))
    for gates in fusion.last_gates:
        assert ((gates > 0).sum(1) == 2).all()
        torch.testing.assert_close(gates.sum(1), torch.ones_like(gates[:, 0]))


def test_moe_concatenates_blocks_per_timestep_and_sums_timesteps() -> None:
    """Eq. 3-4: one shared MoE per scale on Concat_l F^l_{t,s}; with identical timesteps X_s = T * Y_s."""
    info = tiny_feature_info(timesteps=(1, 100))
    fusion = MoEFusion(info, out_chs=8, num_experts=4, top_k=1)
    features = random_features(info, IMAGE_HW)
    half = len(info) // 2
    same = features[:half] + features[:half]  # timestep 100 repeats timestep 1
    pyramid = fusion(same)
    for scale, layout in enumerate(fusion.layouts):
        joint = torch.cat([same[i] for i in layout.indices[0]], dim=1)
        single, gates = fusion.experts[scale](joint)
        torch.testing.assert_close(pyramid[scale], 2 * single)
        # top-1: each pixel is exactly one expert's output.
        chosen = gates.argmax(1)
        moe = fusion.experts[scale]
        hidden = moe.activation(moe.experts_in(joint))
        all_experts = moe.experts_out(hidden).view(joint.shape[0], 4, 8, *joint.shape[-2:])
        picked = all_experts.gather(1, chosen[:, None, None].expand(-1, 1, 8, -1, -1)).squeeze(1)
        torch.testing.assert_close(single, picked)


def test_moe_balance_loss_is_off_by_default_and_reaches_the_gate() -> None:
    info = tiny_feature_info()
    features = random_features(info, IMAGE_HW)
    plain = MoEFusion(info, out_chs=8)
    plain(features)
    assert plain.auxiliary_loss() is None
    balanced = MoEFusion(info, out_chs=8, balance_weight=0.01)
    balanced(features)
    loss = balanced.auxiliary_loss()
    assert loss is not None
    assert loss.item() > 0
    loss.backward()
    assert all(moe.gate.weight.grad.abs().sum() > 0 for moe in balanced.experts)


def test_fusion_config_rebuilds_the_same_architecture() -> None:
    info = tiny_feature_info()
    for name in FUSIONS:
        fusion = create_fusion(name, info, out_chs=8)
        again = create_fusion(name, info, **fusion.config())
        assert {k: v.shape for k, v in fusion.state_dict().items()} == {
            k: v.shape for k, v in again.state_dict().items()}
