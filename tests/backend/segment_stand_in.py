"""A head folder and a pixelwise stand-in model for segment tests that need no backbone.

The stand-in's logits depend on each pixel alone, so any tiling, blending and streaming must
reproduce the prediction made on the whole area at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backend.models.segmenter import SegmenterConfig

CLASSES = [{"id": 1, "name": "water", "colour": "#0000ff"}, {"id": 4, "name": "marsh & reed", "colour": "#00ff00"},
           {"id": 7, "name": "field", "colour": "#ff0000"}]


class PixelwiseModel(torch.nn.Module):
    """Class k scores -8 (mean band value - centre_k)^2: soft probabilities, one pixel at a time."""

    centres = torch.tensor([-0.5, 0.0, 0.5])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -8.0 * (images.mean(1, keepdim=True) - self.centres[None, :, None, None]) ** 2


class CountingModel(PixelwiseModel):
    """The pixelwise stand-in, counting the tiles it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.tiles = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.tiles += images.shape[0]
        return super().forward(images)


def write_head_config(folder: Path, tile_px: int = 64, bands: list[int] | None = None,
                      low: float = 0.0, high: float = 255.0) -> Path:
    """A head folder with only its config.json (the stand-in model replaces the weights)."""
    bands = bands or [1, 2, 3]
    config = SegmenterConfig(classes=CLASSES, feature_info=[], fusion="global", head="pixel",
                             backbone={"name": "stand-in", "sha256": "0" * 64}, bands=bands,
                             band_low=[low] * 3, band_high=[high] * 3, tile_px=tile_px)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_json()), encoding="utf-8")
    return folder


def use_stand_in(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module | None = None) -> None:
    """Make the segment job's tile model load ``model`` (the pixelwise stand-in by default)."""
    from backend.inference import tile_model

    provenance = {"backbone": "stand-in", "backbone_sha256": "1" * 64}
    monkeypatch.setattr(tile_model, "load_segmenter", lambda model_dir, backbone, device, settings=None:
                        (model or PixelwiseModel(), provenance, "0" * 64))


def smooth_image(height: int, width: int, bands: int = 3, dtype: Any = np.uint8, seed: int = 0) -> np.ndarray:
    """Smooth random fields (so that classes form regions) scaled to 0..255 in ``dtype``."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((bands, height // 16 + 2, width // 16 + 2))
    rows = np.linspace(0, coarse.shape[1] - 1.001, height)
    cols = np.linspace(0, coarse.shape[2] - 1.001, width)
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    image = (coarse[:, r0][:, :, c0] * (1 - fr) * (1 - fc) + coarse[:, r0 + 1][:, :, c0] * fr * (1 - fc)
             + coarse[:, r0][:, :, c0 + 1] * (1 - fr) * fc + coarse[:, r0 + 1][:, :, c0 + 1] * fr * fc)
    return (image * 255).astype(dtype)


def whole_image_prediction(image: np.ndarray, low: float = 0.0, high: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """Class ids and confidence of the stand-in on the whole image at once (3 bands)."""
    scaled = np.clip((image.astype(np.float32) - low) / (high - low), 0, 1) * 2 - 1
    probabilities = PixelwiseModel()(torch.from_numpy(scaled)[None]).softmax(1)[0].numpy()
    ids = np.array([c["id"] for c in CLASSES], dtype=np.uint8)
    return ids[probabilities.argmax(0)], probabilities.max(0)
