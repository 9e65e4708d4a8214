"""SkySense (the ``classify`` and ``prototypes`` jobs) as a :class:`~.spec.TileModel`, so that the
same batches run in this process or in a Ray actor.

A batch is a dict of numpy arrays as :meth:`backend.raster.stack.InputStack.read_batch` gives them (the
modalities' tiles, ``{m}_doy`` and ``{m}_valid`` of series, ``lonlat`` of the tile centres, which picks
each tile's prototype region) plus ``grid_hw``, the fused grid (a tuple, shared by every tile). The
outputs are a dict of numpy arrays holding only what the job's writers read (``spec.params["outputs"]``):
``logits`` and, when polygons are pooled, ``features`` (F_fus, eq. 3) for classify;
``prototype_similarity`` (eq. 11) and ``region`` for prototypes. Floating outputs are float32.

Spec parameters: ``model`` (a SkySense folder, absolute path) or ``config`` (a registered configuration
built with random weights from ``seed``), ``seed`` and ``outputs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .spec import TileModelSpec

#: What each job's writers read from the model's outputs by default.
SKYSENSE_OUTPUTS: dict[str, tuple[str, ...]] = {"classify": ("logits",),
                                                "prototypes": ("prototype_similarity", "region")}


def skysense_spec(job: str, model: str, seed: int, outputs: Sequence[str] | None = None) -> TileModelSpec:
    """The spec of SkySense ``model`` (a folder or a registered configuration's name) for ``job``."""
    folder = Path(model)
    params: dict[str, Any] = {"seed": int(seed), "outputs": list(outputs or SKYSENSE_OUTPUTS[job])}
    if folder.is_dir():
        params["model"] = str(folder.resolve())
    else:
        params["config"] = str(model)
    return TileModelSpec(job, params)


class SkySenseTileModel:
    """SkySense on ``device``: dict batches of numpy arrays in, the ``outputs`` it was asked for out (numpy)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, outputs: Sequence[str],
                 provenance: dict[str, Any] | None = None) -> None:
        self.model = model
        self.device = torch.device(device)
        self.outputs = tuple(outputs)
        self.provenance: dict[str, Any] = dict(provenance or {})
        self.max_batch: int | None = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        grid_hw = tuple(int(n) for n in batch["grid_hw"])
        inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
                  for k, v in batch.items() if k != "grid_hw"}
        with torch.inference_mode():
            out = self.model(inputs, grid_hw=grid_hw)
            return {k: _to_numpy(out[k]) for k in self.outputs}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.cpu().numpy()


def load_skysense(spec: TileModelSpec, device: torch.device) -> SkySenseTileModel:
    """The loader registered for ``"classify"`` and ``"prototypes"``: the model as the jobs load it
    (:func:`backend.models.skysense.loading.load_model`), on ``device``."""
    from ..models.skysense.loading import load_model

    reference = spec.params.get("model") or spec.params.get("config")
    if not reference:
        raise ValueError(f"a {spec.job} spec needs a model folder or a configuration name; got {spec.params}")
    loaded = load_model(str(reference), int(spec.params.get("seed") or 0))
    outputs = spec.params.get("outputs") or SKYSENSE_OUTPUTS[spec.job]
    provenance = {"model": loaded.name, "checkpoint_sha256": loaded.checkpoint_sha256}
    return SkySenseTileModel(loaded.model.to(device).eval(), device, outputs, provenance)
