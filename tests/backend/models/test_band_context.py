"""The band context beside the backbone's features: the context channels, the branch's fit, and a SatDiFuser
head that reads them (save, load, decode, forward)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.models.band_context import BandContextBranch, BandContextConfig, band_context
from backend.models.segmenter import SatDiFuser

FEATURE_INFO = [{"name": "t1/up0.resnet.0", "timestep": 1, "kind": "resnet", "level": 0, "num_chs": 8,
                 "reduction": 8},
                {"name": "t1/up1.resnet.0", "timestep": 1, "kind": "resnet", "level": 1, "num_chs": 6,
                 "reduction": 4}]
CLASSES = [{"id": 0, "name": "water", "colour": "#0000ff"}, {"id": 1, "name": "field", "colour": "#ffff00"}]


def test_context_holds_the_bands_their_box_means_and_spread() -> None:
    values = torch.rand(1, 2, 20, 24)
    context = band_context(values, windows_px=(3, 5), spread_px=3)
    assert context.shape == (1, 2 * 4, 20, 24)
    torch.testing.assert_close(context[:, :2], values)
    # Away from the edges, a box mean is the plain mean of the window.
    torch.testing.assert_close(context[0, 2, 10, 10], values[0, 0, 9:12, 9:12].mean())
    torch.testing.assert_close(context[0, 5, 10, 10], values[0, 1, 8:13, 8:13].mean())
    torch.testing.assert_close(context[0, 6, 10, 10], values[0, 0, 9:12, 9:12].std(unbiased=False), atol=1e-5,
                               rtol=1e-4)


def test_context_of_a_constant_tile_is_constant_to_its_edges() -> None:
    """Reflect padding: no zero padding darkens a tile's border, and a flat tile has no spread."""
    context = band_context(torch.full((1, 1, 9, 9), 0.25), windows_px=(7,), spread_px=7)
    torch.testing.assert_close(context[0, :2], torch.full((2, 9, 9), 0.25))
    assert float(context[0, 2].abs().max()) < 1e-4


def test_config_refuses_even_windows_and_round_trips() -> None:
    with pytest.raises(ValueError, match="odd"):
        BandContextConfig((1, 2), windows_px=(4,))
    config = BandContextConfig((1, 2, 3), (0.0, 0.0, 0.0), (1.0, 2.0, 3.0))
    assert BandContextConfig.from_json(config.to_json()) == config
    assert config.channels == 3 * (2 + len(config.windows_px))


def test_branch_fit_separates_classes_and_freezes() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=generator) * 3 + 10  # far from standardised: the fit scales
    y = (x[:, 2] > 10).long()
    branch = BandContextBranch(5, 2)
    branch.fit(x, y)
    logits = branch(x.T.reshape(1, 5, 20, 20))
    accuracy = float((logits.argmax(1).flatten() == y).float().mean())
    assert accuracy > 0.95
    assert not any(p.requires_grad for p in branch.parameters())
    torch.testing.assert_close(branch.shift, x.mean(0))


def _model(channels: int) -> SatDiFuser:
    torch.manual_seed(0)
    context = BandContextConfig(tuple(range(1, channels + 1)), (0.0,) * channels, (1.0,) * channels)
    return SatDiFuser.create(FEATURE_INFO, CLASSES, "global", "pixel", fusion_kwargs={"out_chs": 8},
                             band_context=context, tile_px=32)


def _features(hw: int = 32) -> list[torch.Tensor]:
    return [torch.randn(1, 8, hw // 8, hw // 8), torch.randn(1, 6, hw // 4, hw // 4)]


def test_a_new_head_adds_nothing_to_the_fitted_branch() -> None:
    """Zero-initialised logits: before training, the model is the branch alone (a linear model on the bands)."""
    model = _model(3)
    context = band_context(torch.rand(1, 3, 32, 32))
    targets = np.zeros((32, 32), dtype=np.int64)
    targets[:, 16:] = 1
    model.prefit([[*_features(), context]], [targets], torch.ones(2))
    logits = model.decode([*_features(), context], (32, 32))
    torch.testing.assert_close(logits, model.band_branch(context))


def test_head_with_band_context_saves_and_loads(tmp_path: Path) -> None:
    model = _model(4).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        model.band_branch.shift.fill_(0.3)
    model.save_pretrained(tmp_path / "head")
    loaded = SatDiFuser.from_pretrained(tmp_path / "head")
    assert loaded.config.band_context["bands"] == [1, 2, 3, 4]
    features = [*_features(), band_context(torch.rand(1, 4, 32, 32))]
    torch.testing.assert_close(loaded.decode(features, (32, 32)), model.decode(features, (32, 32)))


def test_paper_head_has_no_branch_and_reads_features_alone() -> None:
    model = SatDiFuser.create(FEATURE_INFO, CLASSES, "global", "pixel", fusion_kwargs={"out_chs": 8})
    assert model.band_branch is None
    assert model.config.band_context == {}
    assert model.decode(_features(), (32, 32)).shape == (1, 2, 32, 32)


def test_forward_without_bands_is_refused(tiny_backbone) -> None:
    from backend.models.diffusion import DiffusionFeatureExtractor

    extractor = DiffusionFeatureExtractor(tiny_backbone, timesteps=(1,))
    context = BandContextConfig((1, 2, 3, 4), (0.0,) * 4, (1.0,) * 4)
    model = SatDiFuser.create(extractor.feature_info, CLASSES, "global", "pixel", extractor=extractor,
                              band_context=context).eval()
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with pytest.raises(ValueError, match="pass bands"):
        model(images)
    with torch.inference_mode():
        logits = model(images, bands=torch.rand(1, 4, 64, 64))
    assert logits.shape == (1, 2, 64, 64)


def _separable_tiles(count: int = 3) -> tuple[list[list[torch.Tensor]], list[np.ndarray]]:
    """Tiles whose class is the sign of band 1 (the backbone features are noise)."""
    generator = torch.Generator().manual_seed(1)
    features, targets = [], []
    for _ in range(count):
        bands = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
        target = (bands[0, 0] > 0).long().numpy()
        features.append([torch.randn(1, 8, 4, 4, generator=generator), torch.randn(1, 6, 8, 8, generator=generator),
                         band_context(bands)])
        targets.append(target)
    return features, targets


def test_no_epoch_is_a_candidate_of_the_early_stopping() -> None:
    """A head that only spoils the fitted branch is not kept: the inner split picks the state before epoch 1."""
    from backend.training.loop import TrainingSettings, train_decoder

    features, targets = _separable_tiles()
    model = _model(3)
    settings = TrainingSettings(epochs=6, learning_rate=50.0, batch_size=1, patience=2, warmup_epochs=0)
    history = train_decoder(model, features, targets, settings, torch.device("cpu"), stopping_targets=targets)
    assert history.best_epoch == -1
    assert len(history.losses) >= 1
    with torch.no_grad():
        torch.testing.assert_close(model.decode(features[0], (32, 32)), model.band_branch(features[0][-1]))


def test_a_budget_of_no_epoch_trains_the_branch_only() -> None:
    from backend.training.loop import TrainingSettings, train_decoder

    features, targets = _separable_tiles()
    model = _model(3)
    history = train_decoder(model, features, targets, TrainingSettings(epochs=5), torch.device("cpu"),
                            epochs_to_run=0)
    assert history.losses == []
    with torch.no_grad():
        predicted = model.decode(features[0], (32, 32)).argmax(1)[0].numpy()
    assert (predicted == targets[0]).mean() > 0.95
