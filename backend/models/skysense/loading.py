"""Which SkySense a model reference means (a folder, a bundled model's name, a registered configuration's
name) and loading it: what the SkySense jobs and their tile models (:mod:`backend.inference.skysense_model`)
share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import UserError
from ...hub.checksums import file_sha256
from .config import SkySenseConfig
from .model import CONFIG_NAME, WEIGHTS_NAME, SkySense
from .registry import BUNDLED_SKYSENSE, bundled_skysense_folder, create_skysense, list_skysense, skysense_config


@dataclass
class LoadedModel:
    model: SkySense
    name: str
    checkpoint_sha256: str | None
    warnings: list[str]



def resolve_model(spec: str) -> Path | str:
    """``spec`` as a SkySense folder (a path, or the name of a bundled model such as
    ``terrafuse-tiny-skysense``) or a registered configuration name; a clear error otherwise."""
    bundled = bundled_skysense_folder(spec)
    if bundled is not None:
        return bundled
    if Path(spec).is_dir():
        return Path(spec)
    if spec in list_skysense():
        return spec
    raise UserError(f"The model '{spec}' is neither a SkySense folder nor a known model "
                    f"({', '.join([*BUNDLED_SKYSENSE, *list_skysense()])})")


def model_config(spec: str) -> SkySenseConfig:
    """The configuration of the model ``spec`` without loading its weights (what the inputs must give)."""
    resolved = resolve_model(spec)
    if isinstance(resolved, str):
        return skysense_config(resolved)
    config_path = resolved / CONFIG_NAME
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path} cannot be read as a SkySense configuration: {exc}") from None
    return SkySenseConfig.from_json(data, str(config_path))


def load_model(spec: str, seed: int) -> LoadedModel:
    """A SkySense folder (``from_pretrained``; a bundled model by name) or a registered configuration
    built with random weights."""
    folder = resolve_model(spec)
    if isinstance(folder, Path):
        model = SkySense.from_pretrained(folder)
        warnings = []
        base = model.config.training.get("base_model")
        if base in list_skysense() and not model.config.training.get("base_checkpoint_sha256"):
            warnings.append(f"The head of this model was trained on the features of '{base}' with random weights: "
                            "it separates the classes it was shown, but a pretrained SkySense maps far better")
        return LoadedModel(model, str(folder.resolve()), file_sha256(folder / WEIGHTS_NAME), warnings)
    torch.manual_seed(seed)
    model = create_skysense(spec).eval()
    return LoadedModel(model, spec, None, [f"The model '{spec}' was built with random weights: its outputs show "
                                           "the pipeline, not land cover; load a trained SkySense folder"])
