"""Every fusion with every head, in the manner of segmentation_models_pytorch's base model tester:
forward, backward, any tile size that is a multiple of 8 latent pixels, save/load round trip."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch

from backend.errors import UserError
from backend.models.fusion import MoEFusion
from backend.models.heads import HEADS, LinearHead, PixelHead, UPerNetHead, create_head
from backend.models.heads.upernet import PyramidPoolingModule
from backend.models.segmenter import HEAD_WEIGHTS_NAME, SatDiFuser, read_config
from tests.backend.synthetic_features import random_features, tiny_feature_info

CLASSES = [{"id": 1, "name": "water", "colour": "#1f78b4"}, {"id": 2, "name": "forest", "colour": "#33a02c"},
           {"id": 5, "name": "built", "colour": "#e31a1c"}]
SMALL_HEADS: dict[str, dict[str, Any]] = {"linear": {}, "pixel": {"hidden_chs": 8}, "upernet": {"decoder_chs": 8}}
IMAGE_HW = (128, 192)


class BaseFusionHeadTester:
    fusion: ClassVar[str]
    fusion_kwargs: ClassVar[dict[str, Any]] = {"out_chs": 8}

    def model(self, head: str, seed: int = 0) -> SatDiFuser:
        torch.manual_seed(seed)
        return SatDiFuser.create(tiny_feature_info(), CLASSES, self.fusion, head, fusion_kwargs=self.fusion_kwargs,
                                 head_kwargs=SMALL_HEADS[head], backbone={"name": "tiny", "sha256": "ab" * 32},
                                 tile_px=128)

    @staticmethod
    def expected_shape(head: str, batch: int, image_hw: tuple[int, int]) -> tuple[int, ...]:
        return (batch, len(CLASSES)) if HEADS[head].task == "classification" else (batch, len(CLASSES), *image_hw)

    @pytest.mark.parametrize("head", sorted(HEADS))
    def test_forward(self, head: str) -> None:
        model = self.model(head)
        logits = model.decode(random_features(model.config.feature_info, IMAGE_HW, batch=2), IMAGE_HW)
        assert tuple(logits.shape) == self.expected_shape(head, 2, IMAGE_HW)
        assert torch.isfinite(logits).all()

    @pytest.mark.parametrize("head", sorted(HEADS))
    def test_backward_reaches_every_parameter(self, head: str) -> None:
        model = self.model(head).train()
        features = random_features(model.config.feature_info, IMAGE_HW, batch=2)
        logits = model.decode(features, IMAGE_HW)
        (logits * torch.randn_like(logits)).sum().backward()
        for name, parameter in self.parameters_that_must_learn(model):
            assert parameter.grad is not None, f"{name} gets no gradient"
            assert parameter.grad.abs().sum() > 0, f"{name} gets a zero gradient"
        assert all(f.grad is None for f in features)  # the backbone's features stay constants

    def parameters_that_must_learn(self, model: SatDiFuser) -> list[tuple[str, torch.nn.Parameter]]:
        return list(model.named_parameters())

    @pytest.mark.parametrize("image_hw", [(64, 64), (64, 320), (192, 128), (100, 72)])
    @pytest.mark.parametrize("head", ["pixel", "upernet"])
    def test_any_tile_size(self, head: str, image_hw: tuple[int, int]) -> None:
        model = self.model(head).eval()
        with torch.no_grad():
            logits = model.decode(random_features(model.config.feature_info, image_hw, batch=1), image_hw)
        assert tuple(logits.shape) == self.expected_shape(head, 1, image_hw)

    @pytest.mark.parametrize("head", sorted(HEADS))
    def test_save_load_round_trip(self, head: str, tmp_path: Path) -> None:
        model = self.model(head).eval()
        model.config.metrics = {"miou": 0.5}
        features = random_features(model.config.feature_info, IMAGE_HW, batch=2, seed=3)
        with torch.no_grad():
            before = model.decode(features, IMAGE_HW)
        model.save_pretrained(tmp_path / "head")
        assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["config.json", HEAD_WEIGHTS_NAME]
        loaded = SatDiFuser.from_pretrained(tmp_path / "head")
        assert not loaded.training
        with torch.no_grad():
            after = loaded.decode(features, IMAGE_HW)
        assert torch.equal(before, after)
        assert loaded.config == model.config
        # A second model with other weights differs: the round trip compares something real.
        with torch.no_grad():
            other = self.model(head, seed=1).eval().decode(features, IMAGE_HW)
        assert not torch.equal(other, after)


class TestGlobalFusion(BaseFusionHeadTester):
    fusion = "global"


class TestLocalizedFusion(BaseFusionHeadTester):
    fusion = "localized"
    fusion_kwargs: ClassVar[dict[str, Any]] = {"out_chs": 8, "gate_chs": 8}


class TestMoEFusion(BaseFusionHeadTester):
    """Top-k routing zeroes the gradient of experts no pixel was routed to; those are checked apart."""

    fusion = "moe"

    def parameters_that_must_learn(self, model: SatDiFuser) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if ".experts_" not in n]

    def test_routed_experts_learn_and_unrouted_stay_still(self) -> None:
        model = self.model("pixel").train()
        fusion = model.fusion
        assert isinstance(fusion, MoEFusion)
        logits = model.decode(random_features(model.config.feature_info, IMAGE_HW, batch=2), IMAGE_HW)
        (logits * torch.randn_like(logits)).sum().backward()
        hidden, out = fusion.hidden_chs, fusion.out_chs
        # The finest scale routes 2 x 2 x 16 x 24 pixel-timesteps: every expert is chosen somewhere.
        assert (fusion.last_gates[0] > 0).sum(dim=(0, 2, 3)).min() > 0
        for moe, gates in zip(fusion.experts, fusion.last_gates):
            load = (gates > 0).sum(dim=(0, 2, 3))
            for expert in range(fusion.num_experts):
                grads = [moe.experts_in.weight.grad[expert * hidden:(expert + 1) * hidden],
                         moe.experts_out.weight.grad[expert * out:(expert + 1) * out]]
                routed = bool(load[expert] > 0)
                assert all(bool(g.abs().sum() > 0) == routed for g in grads), (expert, load.tolist())
            assert moe.gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [LinearHead, PixelHead, UPerNetHead])
def test_heads_accept_a_single_level(cls: type) -> None:
    head = cls([8], 3)
    out = head([torch.randn(2, 8, 4, 4)], (32, 32))
    assert out.shape[:2] == (2, 3)


def test_pyramid_pooling_runs_on_a_one_pixel_map() -> None:
    """The coarsest level of a 64 px tile is 1x1, smaller than the 6x6 bins."""
    ppm = PyramidPoolingModule(8, 4).train()
    out = ppm(torch.randn(1, 8, 1, 1))
    assert out.shape == (1, 4, 1, 1)


def test_linear_head_on_the_coarsest_level_only() -> None:
    head = create_head("linear", [8, 16], 3, levels="coarsest")
    assert head.classifier[-1].in_features == 16
    with pytest.raises(ValueError, match="levels"):
        create_head("linear", [8, 16], 3, levels="middle")


def test_unknown_head_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="linear, upernet, pixel"):
        create_head("mlp", [8], 2)


def _saved(tmp_path: Path) -> Path:
    model = SatDiFuser.create(tiny_feature_info(), CLASSES, "global", "pixel", fusion_kwargs={"out_chs": 8},
                              head_kwargs={"hidden_chs": 8}, backbone={"name": "tiny-a", "sha256": "a" * 64})
    return model.save_pretrained(tmp_path / "head")


def test_a_head_for_another_backbone_is_refused_naming_both(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    other = SimpleNamespace(name="tiny-b", sha256="b" * 64)
    with pytest.raises(UserError, match=r"'tiny-a' \(sha256 aaaaaaaaaaaa\).*'tiny-b' \(sha256 bbbbbbbbbbbb\)"):
        SatDiFuser.from_pretrained(folder, backbone=other)


def test_truncated_weights_are_a_user_error(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    weights = folder / HEAD_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(UserError, match="corrupt, truncated"):
        SatDiFuser.from_pretrained(folder)


def test_a_folder_without_config_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a Terrafuse head folder"):
        read_config(tmp_path)
    with pytest.raises(UserError, match="not found"):
        read_config(tmp_path / "missing")


def test_saving_over_a_head_replaces_its_files_and_nothing_else(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    model = SatDiFuser.from_pretrained(folder)
    model.config.metrics = {"overall_accuracy": 0.9}
    model.save_pretrained(folder)
    assert read_config(folder).metrics == {"overall_accuracy": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head"]  # no partial or old folder left
    # A folder of the user's files is refused by the jobs (backend/output_folder.py) unless they overwrite;
    # the head itself replaces its own two files and touches nothing else.
    (folder / "README.md").write_text("my notes")
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "head.safetensors"]
    assert (folder / "README.md").read_text() == "my notes"
    # A folder holding another model (a diffusers unet/: a config.json without Terrafuse's marker) is refused.
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(UserError, match="holds a model Terrafuse did not write"):
        model.save_pretrained(tmp_path / "unet")
