"""A named backbone's configuration: where its files come from and how SatDiFuser uses it (what the
registry, :mod:`.registry`, resolves a name to and what a loaded :class:`.backbone.DiffusionBackbone` keeps)."""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_KINDS = ("folder", "hub", "zip")


@dataclass(frozen=True)
class BackboneConfig:
    """A named backbone: where its files come from and how SatDiFuser uses it."""

    name: str
    source: str  # a folder, a hub repository id, or a zip file (absolute, or a name under models_dir())
    source_kind: str  # one of SOURCE_KINDS
    revision: str | None = None  # hub revision (branch, tag or commit)
    timesteps: tuple[int, ...] = (1, 100, 200)  # SatDiFuser Sec. 4.2
    tile_px: int = 512  # the resolution the model was trained at
    #: The ground sample distance (m) of the imagery it was pretrained on, where that was one resolution:
    #: train resamples to it by default (and the head records it). None: pretrained on many resolutions
    #: (DiffusionSat, conditioned on the GSD; the bundled model) or on photographs (Stable Diffusion).
    gsd_m: float | None = None
    latent_downsampling: int = 8  # image pixels per latent pixel
    prediction_type: str | None = None  # expected scheduler prediction type; None: whatever the scheduler says
    homepage: str = ""
    licence: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if self.source_kind not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {self.source_kind!r}")
