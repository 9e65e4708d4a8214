"""The segment tile model: a real SatDiFuser head on a tiny random backbone, loaded from its files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.inference.tile_model import TileModelSpec, load_tile_model, model_sha256
from tests.backend.conftest import write_untrained_head


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_head(tmp_path_factory.mktemp("tile-model"))


def test_segment_tile_model_gives_the_heads_probabilities(head: Path) -> None:
    from backend.hub.checksums import file_sha256
    from backend.models.cache import BACKBONES
    from backend.models.segmenter import SatDiFuser, read_config

    spec = TileModelSpec("segment", {"model": str(head), "backbone": None})
    assert pickle.loads(pickle.dumps(spec)) == spec
    model = load_tile_model(spec, "cpu")
    batch = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    probabilities = model(batch)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    reference = SatDiFuser.from_pretrained(head, BACKBONES.get(read_config(head).backbone["source"], "cpu"))
    with torch.inference_mode():
        expected = reference(torch.from_numpy(batch)).softmax(1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert pickle.loads(pickle.dumps(probabilities)).shape == probabilities.shape
    assert model.provenance["head_sha256"] == file_sha256(head / "head.safetensors") == model_sha256(spec)
    assert model.provenance["backbone_sha256"] == read_config(head).backbone["sha256"]


def test_a_spec_names_a_known_job() -> None:
    with pytest.raises(ValueError, match="job must be one of segment, classify, prototypes"):
        TileModelSpec("detect", {})


def test_the_specs_precision_reaches_the_backbone(head: Path) -> None:
    """The segment job's ``precision`` travels in the spec (to the actors of a cluster too) and sets how the
    backbone runs: bf16 autocast gives probabilities close to, but not the same as, float32's."""
    batch = np.random.default_rng(1).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    outputs = {}
    for precision in ("fp32", "bf16"):
        spec = TileModelSpec("segment", {"model": str(head), "backbone": None, "precision": precision,
                                         "compile": False})
        model = load_tile_model(spec, "cpu")
        assert model.model.extractor.settings.precision == precision
        outputs[precision] = model(batch)
    assert not np.array_equal(outputs["fp32"], outputs["bf16"])
    np.testing.assert_allclose(outputs["fp32"], outputs["bf16"], atol=0.1)
