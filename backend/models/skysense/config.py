"""SkySense configurations: one dataclass per model size, saved as ``config.json`` next to the weights.

A configuration says which timm backbone each modality's spatial encoder is (Sec. 3.2, "Spatial Feature
Extraction"), how its features reach the fusion's width ``d``, the fusion transformer's depth and heads,
the geo-context prototype set's shape (N_R x N_p x d) and the region grid that picks a region from a
location. The sizes of the paper's model are in :data:`PAPER_SIZES`; a tiny size runs on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ...errors import UserError

#: The modalities of the paper, in the order their time steps are concatenated in F_T (eq. 1).
MODALITIES = ("hr", "s2", "s1")
#: Which modality's grid the fused feature lives on when several are given (the first one present).
GRID_PRIORITY = ("s2", "s1", "hr")
#: The length of the day-of-year encoding P_DTPE (eq. 2).
DAYS_PER_YEAR = 365

#: Sentinel-2 bands in the order the paper's encoder reads them (Sec. 3.1: B2-8, B8A, B11-12).
S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
#: Sentinel-1 polarisations in the paper's order.
S1_BANDS = ("VV", "VH")
#: The high-resolution optical bands (the official checkpoint reads R, G, B).
HR_BANDS = ("R", "G", "B")

#: Input statistics of the official pipeline, per band, applied as (x / scale - mean) / std.
#: High resolution: ImageNet's mean and std of 8-bit RGB (SkySense++'s ``modal_norm_dict['hr']``, the same group's
#: public code; the SkySense repository itself was not readable here). Sentinel-2 (the 10 bands of S2_BANDS, L2A
#: digital numbers) and Sentinel-1 (VV, VH backscatter in dB): SkySense++'s ``modal_norm_dict['s2']`` and
#: ``['s1']``, a documented choice for SkySense's own S2 / S1 checkpoints, whose training statistics are not public.
OFFICIAL_STATISTICS: dict[str, dict[str, Any]] = {
    "hr": {"scale": 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
           "source": "ImageNet mean and std (official SkySense pipeline)"},
    "s2": {"scale": 1.0,
           "mean": [884.29673756, 1144.16202635, 1297.47289228, 1624.90992062, 2194.6423161, 2422.21248945,
                    2517.76053101, 2581.64687018, 2368.51236873, 1805.06846033],
           "std": [1155.15170768, 1183.6292542, 1368.11351514, 1370.265037, 1355.55390699, 1416.51487101,
                   1474.78900051, 1439.3086061, 1455.52084939, 1343.48379601],
           "source": "SkySense++ public Sentinel-2 statistics (L2A digital numbers)"},
    "s1": {"scale": 1.0, "mean": [-12.54847273, -20.19237134], "std": [5.25697717, 5.91150917],
           "source": "SkySense++ public Sentinel-1 statistics (VV, VH in dB)"},
}

CONFIG_FORMAT = "terrafuse-skysense"
CONFIG_FORMAT_VERSION = 1


@dataclass
class EncoderConfig:
    """One modality's spatial encoder g_i and the adapter that brings its features to width ``d``.

    ``timm_name`` is any timm model name; ``timm_kwargs`` are its constructor overrides (JSON values only).
    ``up_scale`` / ``up_chs`` describe the official ``head_s2`` / ``head_s1`` (a 1x1 convolution to
    ``up_scale**2 * up_chs`` channels and a pixel shuffle); ``up_scale = 1`` leaves it out.
    ``extra_norm_blocks`` lists (stage, block) pairs of a SwinV2 that end with an extra LayerNorm, as the
    SwinV2-H of the official high-resolution checkpoint does every sixth block of its third stage.
    ``date_encoding``: whether P_DTPE (eq. 2) is added to this modality's tokens; the official model adds its
    calendar-time encoding to Sentinel-2 only (``use_ctpe`` on the S2 branch), Terrafuse's own models to every
    dated modality. ``normalisation``: the input statistics the weights were trained with
    (``{"scale", "mean", "std", "source"}``: x' = (x / scale - mean) / std per band); empty for Terrafuse's own
    models, which normalise each band by its 2nd and 98th percentile over the area.
    ``band_mask``: the encoder takes rasters that lack some of ``bands`` (Landsat for a Sentinel-2 encoder,
    :mod:`.sensors`): its backbone reads ``2 * len(bands)`` channels, the bands (zero where missing, after
    normalisation) followed by one presence channel per band (1 present, 0 missing). The patch embedding is
    linear, so the presence channels add a learned embedding per missing band to every token: a "missing
    band" token bias, trained by band dropout (:mod:`.pretraining`).
    """

    timm_name: str
    bands: list[str]
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    up_scale: int = 1
    up_chs: int = 0
    extra_norm_blocks: list[list[int]] = field(default_factory=list)
    temporal: bool = True  # a time series (B, T, C, H, W); False: one image (B, C, H, W)
    date_encoding: bool = True
    normalisation: dict[str, Any] = field(default_factory=dict)
    band_mask: bool = False

    @property
    def in_chans(self) -> int:
        """The bands the input holds (missing ones zero-filled)."""
        return len(self.bands)

    @property
    def backbone_chans(self) -> int:
        """The channels the timm backbone reads: the bands, then their presence mask with ``band_mask``."""
        return 2 * len(self.bands) if self.band_mask else len(self.bands)


@dataclass
class SkySenseConfig:
    """A whole SkySense: encoders per modality, fusion, geo-context prototypes, an optional head."""

    name: str
    encoders: dict[str, EncoderConfig]
    dim: int  # d, the fusion width; the fused per-pixel feature after eq. 3 has 2 d channels
    fusion_depth: int
    fusion_heads: int
    fusion_mlp_ratio: float = 4.0
    region_grid: tuple[int, int] = (64, 64)  # (rows of latitude, columns of longitude); N_R = rows * cols
    prototypes_per_region: int = 100  # N_p
    classes: list[dict[str, Any]] = field(default_factory=list)  # {"id", "name", "colour"}; empty: no head
    description: str = ""
    #: Per modality, the band normalisation the head was trained with ({"p2": [...], "p98": [...]}): applied
    #: again when the model classifies, so that training and prediction see the same values.
    normalisation: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: What the head's training recorded: inputs, labels, metrics, settings (empty without a trained head).
    training: dict[str, Any] = field(default_factory=dict)
    #: The head's band context (``..band_context``): the cells' band values of ``modalities`` (each series
    #: averaged over its valid dates) with their local means and spread, read by a per-cell branch beside
    #: the linear head. Empty: the head reads F_fus alone.
    band_context: dict[str, Any] = field(default_factory=dict)
    #: The regions whose prototypes were learned (pretraining or learning on an area), sorted; None: not
    #: recorded (models saved before Terrafuse recorded it). No official file carries prototypes.
    prototype_regions: list[int] | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.encoders) - set(MODALITIES))
        if unknown or not self.encoders:
            raise ValueError(f"encoders must be a non-empty subset of {MODALITIES}, got {sorted(self.encoders)}")
        if self.dim % self.fusion_heads:
            raise ValueError(f"dim {self.dim} is not divisible by fusion_heads {self.fusion_heads}")
        self.region_grid = (int(self.region_grid[0]), int(self.region_grid[1]))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.encoders)

    @property
    def num_regions(self) -> int:
        return self.region_grid[0] * self.region_grid[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["region_grid"] = list(self.region_grid)
        return {"format": CONFIG_FORMAT, "format_version": CONFIG_FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "config") -> SkySenseConfig:
        if data.get("format") != CONFIG_FORMAT:
            raise UserError(f"{where} is not a Terrafuse SkySense configuration")
        if int(data.get("format_version", 0)) > CONFIG_FORMAT_VERSION:
            raise UserError(f"{where} was written by a newer Terrafuse (format {data['format_version']}); update")
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        try:
            values["encoders"] = {m: EncoderConfig(**e) for m, e in values["encoders"].items()}
            values["region_grid"] = tuple(values.get("region_grid", (64, 64)))
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where} is incomplete or invalid: {exc}") from None

    def with_overrides(self, **overrides: Any) -> SkySenseConfig:
        """A copy with fields replaced; ``modalities=("s2",)`` keeps only those encoders."""
        modalities = overrides.pop("modalities", None)
        config = replace(self, **overrides)
        if modalities is not None:
            missing = sorted(set(modalities) - set(config.encoders))
            if missing:
                raise ValueError(f"{config.name} has no encoder for {missing}")
            config = replace(config, encoders={m: config.encoders[m] for m in MODALITIES if m in modalities})
        return config


def official_conventions(config: SkySenseConfig) -> SkySenseConfig:
    """``config`` as the official checkpoints were trained: P_DTPE on Sentinel-2 only, the official input
    statistics per modality (:data:`OFFICIAL_STATISTICS`), and no learned prototypes (no file carries them)."""
    for name, encoder in config.encoders.items():
        encoder.date_encoding = name == "s2"
        stats = OFFICIAL_STATISTICS.get(name)
        if stats is not None and len(stats["mean"]) == len(encoder.bands):
            encoder.normalisation = {k: (list(v) if isinstance(v, list) else v) for k, v in stats.items()}
    config.prototype_regions = []
    return config


def _vit(name: str, bands: tuple[str, ...], **kwargs: Any) -> EncoderConfig:
    """A ViT encoder as the official checkpoints use it: no class token in the sequence, no final norm,
    any input size (the position embedding is resampled)."""
    timm_kwargs = {"global_pool": "avg", "final_norm": False, "dynamic_img_size": True, "drop_path_rate": 0.0}
    timm_kwargs["class_token"] = False  # the official ViTs drop the class token before the first layer
    timm_kwargs.update(kwargs.pop("timm_kwargs", {}))
    return EncoderConfig(timm_name=name, bands=list(bands), timm_kwargs=timm_kwargs, **kwargs)


def tiny_config() -> SkySenseConfig:
    """Small timm backbones for tests and the bundled model: ResNet-18 for high resolution, 4-block
    ViT-Tiny (patch 4) for Sentinel-2 and Sentinel-1, d = 64, a 2-layer fusion, 8 x 8 regions x 16
    prototypes."""
    vit_kwargs = {"patch_size": 4, "img_size": 16, "depth": 4}
    return SkySenseConfig(
        name="skysense-tiny",
        encoders={
            "hr": EncoderConfig(timm_name="resnet18", bands=list(HR_BANDS), temporal=False),
            "s2": _vit("vit_tiny_patch16_224", S2_BANDS, timm_kwargs=vit_kwargs, up_scale=4, up_chs=64),
            "s1": _vit("vit_tiny_patch16_224", S1_BANDS, timm_kwargs=vit_kwargs, up_scale=4, up_chs=64),
        },
        dim=64, fusion_depth=2, fusion_heads=4, region_grid=(8, 8), prototypes_per_region=16,
        description="Tiny SkySense for tests and the bundled model (random or self-supervised weights)",
    )


def paper_config() -> SkySenseConfig:
    """The sizes of the paper (Sec. 4.1) and of the released checkpoints.

    High resolution: SwinV2-H (embed 352, depths 2-2-18-2, heads 8-16-32-64, window 8, an extra
    LayerNorm after blocks 6, 12 and 18 of the third stage), built with timm's ``SwinTransformerV2``;
    timm registers no SwinV2-H, so the ``swinv2_base_window8_256`` entry is resized by keyword. The
    2816-channel stage-4 output (stride 32) is the fusion input, as in the official pipeline.
    Sentinel-2 and Sentinel-1: ViT-L (1024 wide, 24 layers, 16 heads) with 4 px patches on 16 px tiles,
    each followed by the official 4x pixel-shuffle head to 2816 channels. Fusion: d = 1024, 24 layers,
    16 heads (the official fusion checkpoint's sizes). Regions: 4096 (64 x 64 cells), 100 prototypes each.
    """
    swin_kwargs = {"embed_dim": 352, "depths": [2, 2, 18, 2], "num_heads": [8, 16, 32, 64], "window_size": 8,
                   "img_size": 512, "strict_img_size": False, "dynamic_img_size": True, "drop_path_rate": 0.0}
    vit_kwargs = {"patch_size": 4, "img_size": 16}
    return official_conventions(SkySenseConfig(
        name="skysense-paper",
        encoders={
            "hr": EncoderConfig(timm_name="swinv2_base_window8_256", bands=list(HR_BANDS), timm_kwargs=swin_kwargs,
                                extra_norm_blocks=[[2, 5], [2, 11], [2, 17]], temporal=False),
            "s2": _vit("vit_large_patch16_224", S2_BANDS, timm_kwargs=vit_kwargs, up_scale=4, up_chs=2816),
            "s1": _vit("vit_large_patch16_224", S1_BANDS, timm_kwargs=vit_kwargs, up_scale=4, up_chs=2816),
        },
        dim=1024, fusion_depth=24, fusion_heads=16, region_grid=(64, 64), prototypes_per_region=100,
        description="SkySense as in the paper (2 billion parameters with the prototypes); official weights "
                    "load through backend.models.skysense.convert",
    ))


CONFIGS = {"skysense-tiny": tiny_config, "skysense-paper": paper_config}
