"""The bundled backbone: a small latent diffusion model of Stable Diffusion 2's architecture, trained here.

It exists so that Terrafuse works offline and out of the box: same parts as SD 2.1 and DiffusionSat (a
KL-VAE with 4 latent channels and 8x downsampling, a UNet2DConditionModel with ResNet, self- and
cross-attention blocks at 4 levels, a v-prediction noise schedule, a fixed prompt embedding), but a few
million parameters trained for minutes on a handful of open scenes. Its features are demo-grade, far
below DiffusionSat's; it is the default so that every flow runs, not because it is good.

This module holds the parts that the training script (``scripts/train_bundled_diffusion.py``) and the
tests share: the architecture, the two training stages and the writer of the diffusers folder. Data
fetching lives in the script: it runs ``pip download`` and is no part of the backend.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import Tensor

from .prompt import PROMPT_EMBEDDING_FILE, SATELLITE_PROMPT

BUNDLED_NAME = "terrafuse-tiny"
#: The folder name under resources/models/.
BUNDLED_FOLDER = "terrafuse-tiny-diffusion"

#: KL-VAE with SD's shape: 4 encoder blocks (3 downsamplings, 8x) and 4 latent channels, narrow widths.
BUNDLED_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (32, 64, 128, 128),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 256,
}
#: UNet with SD 2's block layout (3 CrossAttn down blocks + DownBlock2D, UpBlock2D + 3 CrossAttn up blocks),
#: linear projections as in SD 2, and a 64-d cross-attention context instead of OpenCLIP's 1024.
BUNDLED_UNET: dict[str, Any] = {
    "sample_size": 32, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64, 96, 128),
    "layers_per_block": 1, "cross_attention_dim": 64, "attention_head_dim": 8, "norm_num_groups": 16,
    "use_linear_projection": True,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
#: Stable Diffusion 2.1's noise schedule and prediction type.
BUNDLED_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "v_prediction",
    "timestep_spacing": "leading",
}
#: Tokens of the learned prompt embedding (CLIP has 77; the context is learned, so a few suffice).
PROMPT_TOKENS = 8


def _ddpm(config: dict[str, Any]) -> Any:
    """The training scheduler: DDPM with the same betas (DDIM-only keys such as set_alpha_to_one left out)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config)


@dataclass
class CropSampler:
    """Random RGB crops in [-1, 1] from a list of scenes (H, W, 3 float16), with flips, rot90 and a random
    2x zoom-out (area average of a twice larger window) so that one scene serves two resolutions."""

    scenes: list[np.ndarray]
    crop_px: int
    seed: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        if not self.scenes:
            raise ValueError("no scenes to sample crops from")
        # Larger scenes are drawn more often, in proportion to their area.
        areas = np.array([s.shape[0] * s.shape[1] for s in self.scenes], dtype=np.float64)
        self.weights = areas / areas.sum()

    def _crop(self) -> np.ndarray:
        scene = self.scenes[self.rng.choice(len(self.scenes), p=self.weights)]
        height, width = scene.shape[:2]
        zoom = 2 if min(height, width) >= 2 * self.crop_px and self.rng.random() < 0.5 else 1
        size = self.crop_px * zoom
        size = min(size, height, width)
        y = int(self.rng.integers(0, height - size + 1))
        x = int(self.rng.integers(0, width - size + 1))
        crop = scene[y:y + size, x:x + size].astype(np.float32)
        if zoom == 2 and size == 2 * self.crop_px:
            crop = crop.reshape(self.crop_px, 2, self.crop_px, 2, 3).mean(axis=(1, 3))
        elif size != self.crop_px:  # a scene smaller than the crop: stretched, rare
            tensor = torch.from_numpy(crop).permute(2, 0, 1)[None]
            crop = F.interpolate(tensor, size=(self.crop_px, self.crop_px), mode="bilinear",
                                 align_corners=False)[0].permute(1, 2, 0).numpy()
        crop = np.rot90(crop, k=int(self.rng.integers(0, 4)))
        if self.rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.ascontiguousarray(crop)

    def batch(self, size: int) -> Tensor:
        """(size, 3, crop_px, crop_px) float32."""
        return torch.from_numpy(np.stack([self._crop() for _ in range(size)])).permute(0, 3, 1, 2).contiguous()


@dataclass
class StageLog:
    """Losses of one training stage: every ``log_every`` steps the mean since the last entry."""

    name: str
    steps_planned: int
    steps_done: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "steps_planned": self.steps_planned, "steps_done": self.steps_done,
                "seconds": round(self.seconds, 1), "losses": [[s, round(v, 5)] for s, v in self.losses],
                **{k: round(v, 5) for k, v in self.extra.items()}}


def _run_stage(log: StageLog, step_fn: Callable[[int], float], max_seconds: float | None, log_every: int,
               report: Callable[[str], None]) -> None:
    """Run ``step_fn`` for the planned steps (or until ``max_seconds``), logging running means."""
    start = time.monotonic()
    window: list[float] = []
    for step in range(1, log.steps_planned + 1):
        window.append(step_fn(step))
        log.steps_done = step
        if step % log_every == 0 or step == log.steps_planned:
            log.losses.append((step, float(np.mean(window))))
            report(f"{log.name} step {step}/{log.steps_planned}: loss {log.losses[-1][1]:.4f} "
                   f"({time.monotonic() - start:.0f} s)")
            window = []
        if max_seconds is not None and time.monotonic() - start > max_seconds:
            if window:
                log.losses.append((step, float(np.mean(window))))
            report(f"{log.name}: time budget reached after {step} steps")
            break
    log.seconds = time.monotonic() - start


def _cosine_lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * step / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train_vae(sampler: CropSampler, *, steps: int, batch_size: int, learning_rate: float, kl_weight: float,
              device: torch.device, max_seconds: float | None = None, log_every: int = 25,
              report: Callable[[str], None] = print, config: dict[str, Any] | None = None) -> tuple[Any, StageLog]:
    """Stage 1: the KL-VAE on L1 reconstruction plus a small KL term (no perceptual or GAN loss: no
    pretrained network is at hand offline, and blur is acceptable for features)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**(config or BUNDLED_VAE)).to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=1e-4)
    log = StageLog("vae", steps)

    def step_fn(step: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, steps, learning_rate)
        images = sampler.batch(batch_size).to(device)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        l1 = (recon - images).abs().mean()
        loss = l1 + kl_weight * posterior.kl().mean() / images[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return float(l1.detach())

    _run_stage(log, step_fn, max_seconds, log_every, report)
    return vae.eval().requires_grad_(False), log


@torch.no_grad()
def latent_scaling_factor(vae: Any, sampler: CropSampler, device: torch.device, batches: int = 8) -> float:
    """1 / std of the latent means, as Stable Diffusion chose 0.18215: unit-variance latents for the UNet."""
    latents = [vae.encode(sampler.batch(8).to(device)).latent_dist.mean for _ in range(batches)]
    return float(1.0 / torch.cat(latents).std())


def train_unet(vae: Any, scaling_factor: float, sampler: CropSampler, *, steps: int, batch_size: int,
               learning_rate: float, device: torch.device, max_seconds: float | None = None, log_every: int = 25,
               seed: int = 0, report: Callable[[str], None] = print,
               config: dict[str, Any] | None = None) -> tuple[Any, Tensor, StageLog]:
    """Stage 2: the UNet on frozen VAE latents with SD 2.1's v-prediction objective (target:
    ``DDPMScheduler.get_velocity``), uniform random timesteps, and a prompt embedding learned with it."""
    from diffusers import UNet2DConditionModel

    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**(config or BUNDLED_UNET)).to(device).train()
    prompt = torch.nn.Parameter(torch.randn(1, PROMPT_TOKENS, unet.config.cross_attention_dim,
                                            generator=generator).to(device))
    scheduler = _ddpm(BUNDLED_SCHEDULER)
    optimizer = torch.optim.AdamW([*unet.parameters(), prompt], lr=learning_rate, weight_decay=1e-4)
    log = StageLog("unet", steps)

    def step_fn(step: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, steps, learning_rate)
        with torch.no_grad():
            latents = vae.encode(sampler.batch(batch_size).to(device)).latent_dist.sample() * scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps)
        context = prompt.expand(latents.shape[0], -1, -1)
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=context).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), prompt], 1.0)
        optimizer.step()
        return float(loss.detach())

    _run_stage(log, step_fn, max_seconds, log_every, report)
    return unet.eval().requires_grad_(False), prompt.detach().cpu(), log


@torch.no_grad()
def evaluate(vae: Any, unet: Any, prompt: Tensor, scaling_factor: float, sampler: CropSampler,
             device: torch.device, batches: int = 4, batch_size: int = 8) -> dict[str, float]:
    """Held-out figures for the model card: VAE L1 and PSNR (on [-1, 1] images), v-loss at fixed timesteps."""
    scheduler = _ddpm(BUNDLED_SCHEDULER)
    generator = torch.Generator().manual_seed(1234)
    l1, mse, v_losses = [], [], {t: [] for t in (1, 100, 200, 500, 900)}
    for _ in range(batches):
        images = sampler.batch(batch_size).to(device)
        mean = vae.encode(images).latent_dist.mean
        recon = vae.decode(mean).sample.clamp(-1, 1)
        l1.append(float((recon - images).abs().mean()))
        mse.append(float(((recon - images) / 2).pow(2).mean()))
        latents = mean * scaling_factor
        context = prompt.to(device).expand(latents.shape[0], -1, -1)
        for t, values in v_losses.items():
            noise = torch.randn(latents.shape, generator=generator).to(device)
            steps = torch.full((latents.shape[0],), t, dtype=torch.long, device=device)
            pred = unet(scheduler.add_noise(latents, noise, steps), steps, encoder_hidden_states=context).sample
            values.append(float(F.mse_loss(pred, scheduler.get_velocity(latents, noise, steps))))
    figures = {"heldout_vae_l1": float(np.mean(l1)), "heldout_vae_psnr_db": float(-10 * np.log10(np.mean(mse)))}
    figures.update({f"heldout_v_loss_t{t}": float(np.mean(v)) for t, v in v_losses.items()})
    return figures


def save_backbone(folder: Path, vae: Any, unet: Any, prompt: Tensor, scaling_factor: float,
                  training_log: dict[str, Any]) -> list[Path]:
    """Write the diffusers folder the loader reads: vae/, unet/, scheduler/ and the prompt embedding
    (``prompt_embedding.safetensors``, the "folder" source of :mod:`.prompt`), plus training_log.json."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    vae.register_to_config(scaling_factor=scaling_factor)
    vae.to("cpu").save_pretrained(folder / "vae", safe_serialization=True)
    unet.to("cpu").save_pretrained(folder / "unet", safe_serialization=True)
    DDIMScheduler(**BUNDLED_SCHEDULER).save_pretrained(folder / "scheduler")
    save_file({"prompt_embedding": prompt.float().contiguous()}, str(folder / PROMPT_EMBEDDING_FILE),
              metadata={"prompt": SATELLITE_PROMPT})
    # safetensors creates files readable by their owner only; the folder ships to every user of the plugin.
    (folder / PROMPT_EMBEDDING_FILE).chmod(0o644)
    (folder / "training_log.json").write_text(json.dumps(training_log, indent=1), encoding="utf-8")
    return sorted(p for p in folder.rglob("*") if p.is_file())


def folder_size_mb(folder: Path, suffix: str = ".safetensors") -> float:
    return sum(p.stat().st_size for p in folder.rglob(f"*{suffix}")) / 1e6


def iter_stage_figures(training_log: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(label, value) pairs of a training log, in the order the model card lists them."""
    for stage in training_log.get("stages", []):
        losses = stage.get("losses") or [[0, float("nan")]]
        yield (f"{stage['name']}: steps", f"{stage['steps_done']} of {stage['steps_planned']} planned")
        yield (f"{stage['name']}: wall time", f"{stage['seconds'] / 60:.1f} min")
        yield (f"{stage['name']}: loss first / last logged", f"{losses[0][1]:.4f} / {losses[-1][1]:.4f}")
