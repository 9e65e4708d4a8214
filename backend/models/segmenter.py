"""SatDiFuser (Fig. 2): a frozen diffusion feature extractor, a fusion (eq. 1-4) and a task head.

Only the fusion and the head train, so only they are saved: a folder with ``head.safetensors`` and a
``config.json`` sidecar that says everything needed to use the weights again (classes with names and
colours, the backbone's name, source and sha256, the feature configuration, the bands and their
normalisation, metrics, the date), in the manner of diffusers' ``save_pretrained`` /
``from_pretrained``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import Tensor, nn

from .. import __version__
from ..errors import UserError
from .band_context import BandContextBranch, BandContextConfig, band_context, prefit_branch
from .fusion import FEATURE_INFO_KEYS, FeatureFusion, create_fusion
from .heads import Head, create_head
from .saved_folder import save_model_files

if TYPE_CHECKING:
    from .diffusion import DiffusionBackbone, DiffusionFeatureExtractor
    from .diffusion.fast_path import InferenceSettings

log = logging.getLogger("terrafuse.models")

HEAD_WEIGHTS_NAME = "head.safetensors"
HEAD_CONFIG_NAME = "config.json"
CONFIG_FORMAT = "terrafuse-head"
CONFIG_FORMAT_VERSION = 1


@dataclass
class SegmenterConfig:
    """The ``config.json`` of a saved head. Bands are 1-based raster band indices, fed as R, G, B;
    ``band_low`` / ``band_high`` map each band linearly to [-1, 1] (values outside are clipped)."""

    classes: list[dict[str, Any]]  # {"id": int (value in the class raster), "name": str, "colour": "#rrggbb"}
    feature_info: list[dict[str, Any]]
    fusion: str
    head: str
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, Any] = field(default_factory=dict)  # name, source, sha256
    #: How the features were read (DiffusionFeatureExtractor.describe()): inversion "reuse" or "paper" with its
    #: steps, metadata "none" (DiffusionSat's zeros) or "tile", the UNet folder. Empty: reuse, none.
    features: dict[str, Any] = field(default_factory=dict)
    timesteps: list[int] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)
    bands: list[int] = field(default_factory=list)
    band_low: list[float] = field(default_factory=list)
    band_high: list[float] = field(default_factory=list)
    normalisation: str = "per-band 2nd-98th percentile over the training area, scaled to [-1, 1]"
    tile_px: int = 512
    #: The raster's own bands beside the features (:mod:`.band_context`): BandContextConfig.to_json() plus
    #: "branch" (BandContextBranch.config()). Empty: the paper's head, on the backbone's features alone.
    band_context: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    software: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, "format_version": CONFIG_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "config") -> SegmenterConfig:
        if data.get("format") != CONFIG_FORMAT:
            raise UserError(f"{where} is not a Terrafuse head configuration")
        if int(data.get("format_version", 0)) > CONFIG_FORMAT_VERSION:
            raise UserError(f"{where} was written by a newer Terrafuse (format {data['format_version']}); update")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise UserError(f"{where} is incomplete: {exc}") from None

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]


class SatDiFuser(nn.Module):
    """``forward(images)``: images (B, 3, H, W) in [-1, 1] -> logits (B, classes, H, W) (or (B, classes)
    for a classification head). :meth:`decode` runs the trainable part on features computed earlier,
    which is how training reuses cached features.

    With a band context (``config.band_context``), ``forward`` also takes every band of the tile scaled to
    [-1, 1] (``bands``, (B, C, H, W)), and the logits are the head's plus those of a per-pixel branch on
    the bands and their local context (:mod:`.band_context`); :meth:`decode` then takes that context as the
    last entry of ``features``.

    The extractor is kept outside the module tree: ``parameters()``, ``state_dict()`` and
    :meth:`save_pretrained` cover the fusion and the head only.
    """

    def __init__(self, fusion: FeatureFusion, head: Head, config: SegmenterConfig,
                 extractor: DiffusionFeatureExtractor | None = None,
                 band_branch: BandContextBranch | None = None) -> None:
        super().__init__()
        self.fusion = fusion
        self.head = head
        self.band_branch = band_branch
        self.config = config
        object.__setattr__(self, "extractor", extractor)

    @property
    def context_config(self) -> BandContextConfig | None:
        """How the band context is read, or None for a head on the backbone's features alone."""
        return BandContextConfig.from_json(self.config.band_context) if self.config.band_context else None

    @classmethod
    def create(cls, feature_info: Sequence[dict[str, Any]], classes: Sequence[dict[str, Any]],
               fusion: str = "global", head: str = "pixel", *, fusion_kwargs: dict[str, Any] | None = None,
               head_kwargs: dict[str, Any] | None = None, extractor: DiffusionFeatureExtractor | None = None,
               band_context: BandContextConfig | None = None, branch_kwargs: dict[str, Any] | None = None,
               **config: Any) -> SatDiFuser:
        """A new, untrained model for ``feature_info``; ``config`` fills the other SegmenterConfig fields;
        ``band_context`` adds the per-pixel branch on the bands (``branch_kwargs``: its hidden_chs, dropout)."""
        if len({c["name"] for c in classes}) != len(classes):
            raise ValueError("class names must be unique")
        fusion_module = create_fusion(fusion, feature_info, **(fusion_kwargs or {}))
        head_module = create_head(head, fusion_module.pyramid_chs, len(classes), **(head_kwargs or {}))
        info = [{k: entry[k] for k in FEATURE_INFO_KEYS} for entry in feature_info]
        if extractor is not None and "features" not in config:
            config["features"] = extractor.describe()
        branch = None
        if band_context is not None:
            branch = BandContextBranch(band_context.channels, len(classes), **(branch_kwargs or {}))
            config["band_context"] = {**band_context.to_json(), "branch": branch.config()}
            zero_last_layer(head_module)
        settings = SegmenterConfig(
            classes=[dict(c) for c in classes], feature_info=info, fusion=fusion, head=head,
            fusion_kwargs=fusion_module.config(), head_kwargs=head_module.config(), **config,
        )
        return cls(fusion_module, head_module, settings, extractor, branch)

    def forward(self, images: Tensor, metadata: Tensor | None = None, bands: Tensor | None = None) -> Tensor:
        """Inference: features, then fusion and head under the extractor's autocast precision (the
        backbone's fast path, :mod:`.diffusion.fast_path`); float32 logits. ``metadata`` (B, 7): each image's
        DiffusionSat metadata, for a head whose features were read with metadata "tile"; ``bands``
        (B, C, H, W): the tile's bands of ``config.band_context``, scaled, for a head with a band context."""
        from .diffusion.fast_path import autocast_dtype

        if self.extractor is None:
            raise RuntimeError("no feature extractor attached: call attach_backbone() or use decode()")
        features = list(self.extractor(images, metadata))
        context = self.context_config
        if context is not None:
            if bands is None:
                raise ValueError("this head reads the raster's bands beside the features: pass bands")
            features.append(band_context(bands.to(images.device), context.windows_px, context.spread_px))
        device = features[0].device
        dtype = autocast_dtype(self.extractor.settings.precision, device)
        if dtype is None:
            return self.decode(features, tuple(images.shape[-2:]))
        with torch.autocast(device.type, dtype=dtype):
            return self.decode(features, tuple(images.shape[-2:])).float()

    def decode(self, features: Sequence[Tensor], image_hw: tuple[int, int]) -> Tensor:
        """Fusion then head on the extractor's features (the trainable part); with a band branch, the last
        entry of ``features`` is the band context and the branch's logits are added."""
        if self.band_branch is None:
            return self.head(self.fusion(features), image_hw)
        logits = self.head(self.fusion(features[:-1]), image_hw)
        extra = self.band_branch(features[-1])
        if tuple(extra.shape[-2:]) != tuple(image_hw):
            extra = F.interpolate(extra, size=tuple(image_hw), mode="bilinear", align_corners=False)
        return logits + extra

    def prefit(self, features: Sequence[Sequence[Tensor]], targets: Sequence[Any], class_weight: Tensor) -> bool:
        """Before the head trains: fit the band branch on the labelled pixels of the tiles (``features[i]``'s
        last entry is tile i's band context, ``targets[i]`` its (H, W) classes, negative where unlabelled).
        True when the model then predicts (its head starts at zero), so that "no epoch" is a candidate."""
        if self.band_branch is None:
            return False
        return prefit_branch(self.band_branch, [tile[-1] for tile in features], targets, class_weight,
                             next(self.head.parameters()).device)

    def auxiliary_loss(self) -> Tensor | None:
        """The fusion's extra loss term of the last forward pass (MoE balancing), or None."""
        return self.fusion.auxiliary_loss()

    def attach_backbone(self, backbone: DiffusionBackbone, settings: InferenceSettings | None = None) -> None:
        """Build the extractor this head was trained with on ``backbone``; another backbone is refused.
        ``settings``: how the backbone runs (default: the fast path's defaults for its device)."""
        from .diffusion import DiffusionFeatureExtractor

        check_backbone(self.config, backbone)
        reading = self.config.features
        if backbone.metadata_embedding is not None and "metadata" not in reading:
            log.warning("The head does not record how its features were read; %s now runs with DiffusionSat's "
                        "metadata embedding (its no-metadata zeros): a head trained before that should be "
                        "retrained", backbone.name)
        extractor = DiffusionFeatureExtractor(backbone, timesteps=self.config.timesteps, blocks=self.config.blocks,
                                              levels=self.config.levels, settings=settings,
                                              inversion=reading.get("inversion", "reuse"),
                                              inversion_steps=reading.get("inversion_steps"),
                                              metadata=reading.get("metadata", "none"))
        check_feature_info(self.config.feature_info, extractor.feature_info)
        object.__setattr__(self, "extractor", extractor)

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``head.safetensors`` and ``config.json`` into ``folder``, each whole under a temporary name
        renamed into place; other files there are kept, and a folder holding another model is refused."""
        from safetensors.torch import save

        self.config.created = self.config.created or datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        self.config.software = {"terrafuse": __version__, "torch": torch.__version__}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        weights = save(state, metadata={"format": "pt", "fusion": self.config.fusion, "head": self.config.head})
        config = json.dumps(self.config.to_json(), indent=2).encode("utf-8")
        return save_model_files(folder, "head", {HEAD_WEIGHTS_NAME: weights, HEAD_CONFIG_NAME: config})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], backbone: DiffusionBackbone | None = None,
                        settings: InferenceSettings | None = None) -> SatDiFuser:
        """Load a saved head; with ``backbone`` (whose sha256 must match), attach its feature extractor,
        run with ``settings`` (precision, channels_last, compile; default: the fast path's defaults)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        config = read_config(folder)
        if backbone is not None:
            check_backbone(config, backbone)
        try:
            fusion = create_fusion(config.fusion, config.feature_info, **config.fusion_kwargs)
            head = create_head(config.head, fusion.pyramid_chs, len(config.classes), **config.head_kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(f"The head in {folder} has a configuration this version cannot build: {exc}") from None
        branch = None
        if config.band_context:
            try:
                context = BandContextConfig.from_json(config.band_context)
                branch = BandContextBranch(context.channels, len(config.classes),
                                           **config.band_context.get("branch", {}))
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(f"The head in {folder} has a band context this version cannot build: {exc}") \
                    from None
        model = cls(fusion, head, config, band_branch=branch)
        weights = Path(folder) / HEAD_WEIGHTS_NAME
        try:
            state = load_file(str(weights))
            model.load_state_dict(state, strict=True)
        except FileNotFoundError:
            raise UserError(f"{folder} has no {HEAD_WEIGHTS_NAME}") from None
        except (OSError, RuntimeError, SafetensorError) as exc:
            raise UserError(f"The head weights {weights} are corrupt, truncated or do not fit its config.json "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from None
        model.eval()
        if backbone is not None:
            model.attach_backbone(backbone, settings)
        return model


def zero_last_layer(head: nn.Module) -> None:
    """Zero the head's last convolution (its logits), so a head beside a fitted band branch starts by adding
    nothing to it."""
    last = [m for m in head.modules() if isinstance(m, nn.Conv2d)][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


def read_config(folder: str | os.PathLike[str]) -> SegmenterConfig:
    path = Path(folder) / HEAD_CONFIG_NAME
    if not Path(folder).is_dir():
        raise UserError(f"Head folder not found: {folder}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} is not a Terrafuse head folder: it has no {HEAD_CONFIG_NAME}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot read {path}: {exc}") from None
    return SegmenterConfig.from_json(data, str(path))


def check_backbone(config: SegmenterConfig, backbone: DiffusionBackbone) -> None:
    """A head's fusion was trained on one backbone's features; any other backbone is refused."""
    expected = config.backbone.get("sha256")
    if expected != backbone.sha256:
        raise UserError(
            f"This head was trained on the backbone {config.backbone.get('name')!r} (sha256 {str(expected)[:12]}), "
            f"but the loaded backbone is {backbone.name!r} (sha256 {backbone.sha256[:12]}); load the backbone "
            "the head was trained with, or train a new head")


def check_feature_info(saved: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]]) -> None:
    def key(info: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(info[k] for k in FEATURE_INFO_KEYS)

    if [key(i) for i in saved] != [key(i) for i in current]:
        raise UserError("The backbone's features differ from those the head was trained on "
                        f"({len(saved)} saved, {len(current)} now); the head needs its own backbone version")


