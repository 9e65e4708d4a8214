"""Where the parts of a Stable-Diffusion-2-style diffusers folder lie, DiffusionSat's layout included.

A diffusers folder holds ``vae/``, ``unet/`` and ``scheduler/`` (``text_encoder/`` and ``tokenizer/``
optional). DiffusionSat's archives keep the fine-tuned UNet in a training checkpoint,
``checkpoint-150000/unet``; a folder without ``unet/`` uses its newest ``checkpoint-<step>/unet``.
Archives often wrap everything in one top folder, so the root is searched two levels deep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class BackboneLayout:
    root: Path
    vae: Path
    unet: Path
    scheduler_config: Path
    text_encoder: Path | None
    tokenizer: Path | None

    def weight_files(self) -> list[str]:
        """The files that define the features (VAE and UNet weights and configs), relative to ``root``.

        The text encoder is left out: it only makes the fixed prompt embedding, which is cached under
        this hash.
        """
        names = []
        for folder in (self.vae, self.unet):
            for path in sorted(folder.iterdir()):
                if path.is_file() and (path.suffix == ".json" or path.name.endswith(_WEIGHT_SUFFIXES)):
                    names.append(path.relative_to(self.root).as_posix())
        return names


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(
        p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir() if p.is_file()
    )


def _find_root(folder: Path) -> Path:
    if (folder / "vae").is_dir():
        return folder
    for depth_pattern in ("*/vae", "*/*/vae"):
        found = sorted(p.parent for p in folder.glob(depth_pattern) if p.is_dir())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"{folder} holds several diffusion models ({', '.join(map(str, found))}); pick one")
    raise UserError(f"{folder} is not a diffusers model folder: it has no vae/ folder")


def _find_unet(root: Path) -> Path:
    if (root / "unet").is_dir() and _has_weights(root / "unet"):
        return root / "unet"
    checkpoints = []
    for path in root.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and (path / "unet").is_dir() and _has_weights(path / "unet"):
            checkpoints.append((int(match.group(1)), path / "unet"))
    if not checkpoints:
        raise UserError(f"{root} has no UNet weights (neither unet/ nor checkpoint-<step>/unet/)")
    return max(checkpoints)[1]


def find_layout(folder: Path) -> BackboneLayout:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"Model folder not found: {folder}")
    root = _find_root(folder)
    vae = root / "vae"
    if not _has_weights(vae):
        raise UserError(f"{vae} has no weights (config.json and a .safetensors file)")
    scheduler_config = root / "scheduler" / "scheduler_config.json"
    if not scheduler_config.is_file():
        raise UserError(f"{root} has no scheduler/scheduler_config.json: the noise schedule is unknown")
    text_encoder = root / "text_encoder"
    tokenizer = root / "tokenizer"
    has_text = text_encoder.is_dir() and _has_weights(text_encoder) and tokenizer.is_dir()
    return BackboneLayout(root=root, vae=vae, unet=_find_unet(root), scheduler_config=scheduler_config,
                          text_encoder=text_encoder if has_text else None, tokenizer=tokenizer if has_text else None)
