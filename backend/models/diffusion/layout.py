"""Where the parts of a Stable-Diffusion-2-style diffusers folder lie, DiffusionSat's layout included.

A diffusers folder holds ``vae/``, ``unet/`` and ``scheduler/`` (``text_encoder/`` and ``tokenizer/``
optional). DiffusionSat's archives keep the fine-tuned UNet in a training checkpoint,
``checkpoint-150000/unet``, and its authors load that one (``SatUNet.from_pretrained(path +
'checkpoint-150000', subfolder="unet")`` in their notebook), whatever else the folder holds. Terrafuse does
the same: the newest ``checkpoint-<step>/unet`` when there is one, else ``unet/``; which one was taken is
logged and recorded in the backbone's provenance, and ``unet_folder`` (a path inside the model folder)
overrides the choice. Archives often wrap everything in one top folder, so the root is searched two levels
deep.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError

log = logging.getLogger("terrafuse.models")

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
    unet_choice: str = ""  # why this UNet folder: "newest checkpoint", "root", "chosen by the user"

    @property
    def unet_folder(self) -> str:
        """The UNet's folder relative to the root (``checkpoint-150000/unet``, ``unet``)."""
        return self.unet.relative_to(self.root).as_posix()

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


def unet_candidates(root: Path) -> list[str]:
    """The UNet folders of ``root`` with weights, in the order Terrafuse prefers them: training checkpoints
    newest first (as DiffusionSat's authors load them), then ``unet/``."""
    checkpoints = []
    for path in root.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and (path / "unet").is_dir() and _has_weights(path / "unet"):
            checkpoints.append((int(match.group(1)), f"{path.name}/unet"))
    found = [name for _, name in sorted(checkpoints, reverse=True)]
    if (root / "unet").is_dir() and _has_weights(root / "unet"):
        found.append("unet")
    return found


def _find_unet(root: Path, unet_folder: str | None) -> tuple[Path, str]:
    candidates = unet_candidates(root)
    if unet_folder:
        wanted = Path(unet_folder.strip("/"))
        target = (root / wanted).resolve()
        if wanted.is_absolute() or ".." in wanted.parts or root.resolve() not in target.parents:
            raise UserError(f"The UNet folder {unet_folder!r} must be a folder inside {root}")
        if not (target.is_dir() and _has_weights(target)):
            raise UserError(f"{root} has no UNet weights in {unet_folder!r}; it has: "
                            f"{', '.join(candidates) or 'none'}")
        return root / wanted, "chosen by the user"
    if not candidates:
        raise UserError(f"{root} has no UNet weights (neither unet/ nor checkpoint-<step>/unet/)")
    chosen = candidates[0]
    why = "newest training checkpoint, as DiffusionSat's authors load it" if chosen != "unet" else "the only UNet"
    if len(candidates) > 1:
        log.info("%s holds the UNets %s; taking %s (%s; choose another with unet_folder)", root,
                 ", ".join(candidates), chosen, why)
    return root / chosen, why


def find_layout(folder: Path, unet_folder: str | None = None) -> BackboneLayout:
    """The parts of the model in ``folder``; ``unet_folder`` overrides the choice of the UNet (see above)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"Model folder not found: {folder}")
    root = _find_root(folder)
    vae = root / "vae"
    if not _has_weights(vae):
        raise UserError(f"{vae} has no weights (config.json and a .safetensors or .bin file)")
    scheduler_config = root / "scheduler" / "scheduler_config.json"
    if not scheduler_config.is_file():
        raise UserError(f"{root} has no scheduler/scheduler_config.json: the noise schedule is unknown")
    text_encoder = root / "text_encoder"
    tokenizer = root / "tokenizer"
    has_text = text_encoder.is_dir() and _has_weights(text_encoder) and tokenizer.is_dir()
    unet, why = _find_unet(root, unet_folder)
    return BackboneLayout(root=root, vae=vae, unet=unet, scheduler_config=scheduler_config,
                          text_encoder=text_encoder if has_text else None, tokenizer=tokenizer if has_text else None,
                          unet_choice=why)
