"""Multi-scale, multi-timestep features of a diffusion UNet's decoder (SatDiFuser Sec. 3.1).

The image is encoded into its clean latent (the mean of the VAE's latent distribution times
``vae.config.scaling_factor``), inverted with DDIM to the chosen timesteps (default {1, 100, 200},
Sec. 4.2) and, at each inversion call, the outputs of the UNet decoder's blocks are read with forward
hooks: ResNet blocks (R_{t,s}), self-attention (A_{t,s}, ``attn1``) and optionally cross-attention
(C_{t,s}, ``attn2``), at the 4 scales of the up blocks. Attention outputs (B, HW, C) are put back on
their grid (B, C, H, W), as the paper does "to maintain consistency with the ResNet outputs".

Two readings of "the features at timestep t" (``inversion``):

- ``"reuse"`` (the default, fast): no UNet call is wasted: the features of timestep ``t_k`` come from
  inversion call ``k``, the UNet at timestep ``t_k`` on the latent ``z_(t_(k-1))`` (see :mod:`.inversion`),
  so K timesteps cost K calls. The last call's output is only needed to reach a latent that nothing reads,
  so with ``stop_early`` it stops as soon as the last hooked block has run.
- ``"paper"``: SatDiFuser's reading (Sec. 3.1: "employ DDIM inversion to trace a reverse noise path ... then
  run the denoising diffusion model on these noisy latents"): DDIM inversion from the clean latent over
  ``inversion_steps`` even steps up to ``t_K`` (the chosen timesteps are always among the steps, see
  :func:`~.inversion.inversion_grid`) gives ``z_(t_k)``; the features of ``t_k`` come from one more UNet call
  at ``t_k`` on ``z_(t_k)`` (stopped early). Cost: ``len(grid) + K`` UNet calls, at least 2K.

DiffusionSat backbones are conditioned on metadata (``metadata``): ``"none"`` is DiffusionSat's own zeros
(folded into the UNet at load, free); ``"tile"`` takes each tile's normalised metadata (B, 7) in
``forward`` (see :mod:`.metadata`). How the calls run (autocast precision, channels_last, compiled blocks)
is the :class:`~.fast_path.InferenceSettings` of the extractor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch import Tensor

from ...errors import UserError
from .backbone import DiffusionBackbone
from .fast_path import InferenceSettings, autocast_dtype, prepare_backbone
from .inversion import INVERSION_MODES, check_timesteps, ddim_invert, inversion_grid
from .metadata import METADATA_MODES, metadata_conditioning

log = logging.getLogger("terrafuse.models")

FEATURE_KINDS = ("resnet", "attn1", "attn2")


class _StopUNet(Exception):
    """Raised by a hook to end a UNet call whose remaining layers produce nothing we read."""


class DiffusionFeatureExtractor(torch.nn.Module):
    """``forward(images) -> list[Tensor]``, one tensor per entry of :attr:`feature_info`, in that order.

    ``images``: (B, 3, H, W) in [-1, 1], any H and W: they are padded (replicating the border) to a
    multiple of :attr:`input_multiple_px` (64 for Stable Diffusion: 8 latent px times 3 downsamplings),
    and every feature is cropped back to ``ceil(H / reduction) x ceil(W / reduction)``.

    ``feature_info`` entries: ``name`` ("t100/up1.attn1.0"), ``timestep``, ``kind`` ("resnet", "attn1",
    "attn2"), ``level`` (the index of the UNet up block: 0 coarsest .. 3 finest), ``num_chs``,
    ``reduction`` (stride in image pixels: 64, 32, 16, 8 for Stable Diffusion) and ``module`` (its path in
    the UNet). Outputs are contiguous float32 tensors outside autograd's inference mode, so heads can train
    on them; the backbone itself stays frozen and runs under ``torch.inference_mode``. The backbone is not
    a sub-module: ``parameters()`` and ``state_dict()`` of the extractor are empty.

    ``settings`` chooses precision, memory layout and compilation (:mod:`.fast_path`); ``stop_early`` and
    ``reuse_inversion_calls`` are only ever turned off to measure what they save (the benchmark's
    straightforward path): without reuse, the inversion's K calls run first and K more calls on the same
    latents and timesteps give the features, 2K calls for the same features.
    """

    def __init__(self, backbone: DiffusionBackbone, timesteps: Sequence[int] = (1, 100, 200),
                 blocks: Sequence[str] = ("resnet", "attn1"), levels: Sequence[int] = (0, 1, 2, 3),
                 *, stop_early: bool = True, reuse_inversion_calls: bool = True,
                 settings: InferenceSettings | None = None, inversion: str = "reuse",
                 inversion_steps: int | None = None, metadata: str = "none") -> None:
        super().__init__()
        self.backbone = backbone
        self.settings = settings or InferenceSettings()
        self.reuse_inversion_calls = reuse_inversion_calls
        self.timesteps = check_timesteps(timesteps, backbone.num_train_timesteps)
        if inversion not in INVERSION_MODES:
            raise UserError(f"The feature reading must be one of {', '.join(INVERSION_MODES)}; got {inversion!r}")
        if metadata not in METADATA_MODES:
            raise UserError(f"The metadata mode must be one of {', '.join(METADATA_MODES)}; got {metadata!r}")
        if metadata == "tile" and backbone.metadata_embedding is None:
            raise UserError(f"The backbone {backbone.name} has no metadata embedding (only DiffusionSat has one): "
                            "use metadata 'none'")
        self.inversion = inversion
        self.metadata = metadata
        paper = inversion == "paper"
        self.inversion_steps_requested = int(inversion_steps) if paper and inversion_steps is not None else None
        self.inversion_grid = inversion_grid(self.timesteps, inversion_steps) if paper else self.timesteps
        self.inversion_steps = len(self.inversion_grid)
        unknown = sorted(set(blocks) - set(FEATURE_KINDS))
        if unknown or not blocks:
            raise UserError(f"Feature blocks must be among {', '.join(FEATURE_KINDS)}; got {list(blocks)}")
        self.blocks = tuple(kind for kind in FEATURE_KINDS if kind in blocks)
        up_blocks = backbone.unet.up_blocks
        if not levels or any(not 0 <= int(level) < len(up_blocks) for level in levels):
            raise UserError(f"Feature levels must lie in 0..{len(up_blocks) - 1}; got {list(levels)}")
        self.levels = tuple(sorted({int(level) for level in levels}))
        self.stop_early = stop_early
        self.num_unet_calls = 0
        self._sites = self._find_sites()
        if not self._sites:
            raise UserError(f"The UNet has no {'/'.join(self.blocks)} blocks at levels {list(self.levels)}")
        self.feature_info: list[dict[str, Any]] = [
            {"name": f"t{t}/{site['key']}", "timestep": t,
             **{key: site[key] for key in ("kind", "level", "num_chs", "reduction", "module")}}
            for t in self.timesteps for site in self._sites
        ]

    @property
    def calls_per_batch(self) -> int:
        """UNet calls per batch of images: K for "reuse", len(grid) + K for "paper" (2K for the
        straightforward path without reuse)."""
        if self.inversion == "paper" or not self.reuse_inversion_calls:
            return self.inversion_steps + len(self.timesteps)
        return len(self.timesteps)

    def describe(self) -> dict[str, Any]:
        """What a head's sidecar and an output's provenance record about how the features were read."""
        return {"inversion": self.inversion, "inversion_steps": self.inversion_steps_requested,
                "inversion_grid": list(self.inversion_grid), "unet_calls_per_batch": self.calls_per_batch,
                "metadata": self.metadata, "unet_folder": self.backbone.unet_folder}

    @property
    def input_multiple_px(self) -> int:
        return self.backbone.latent_downsampling * self.backbone.unet_downsampling

    def _grid_divisors(self) -> list[int]:
        """Per up block: latent pixels per pixel of its grid (8, 4, 2, 1 for Stable Diffusion)."""
        up_blocks = self.backbone.unet.up_blocks
        has_upsampler = [getattr(block, "upsamplers", None) is not None for block in up_blocks]
        return [2 ** sum(has_upsampler[i:]) for i in range(len(up_blocks))]

    def _find_sites(self) -> list[dict[str, Any]]:
        """The hooked modules of the chosen levels and kinds, in the order the UNet runs them."""
        sites: list[dict[str, Any]] = []
        divisors = self._grid_divisors()
        for level in self.levels:
            block = self.backbone.unet.up_blocks[level]
            attentions = getattr(block, "attentions", None) or []
            for j, resnet in enumerate(block.resnets):
                common = {"level": level, "reduction": divisors[level] * self.backbone.latent_downsampling,
                          "grid_div": divisors[level]}
                if "resnet" in self.blocks:
                    sites.append({"key": f"up{level}.resnet.{j}", "kind": "resnet", "num_chs": resnet.out_channels,
                                  "module": f"up_blocks.{level}.resnets.{j}", **common, "_module": resnet})
                if j >= len(attentions):
                    continue
                transformer_blocks = getattr(attentions[j], "transformer_blocks", [])
                for kind in ("attn1", "attn2"):
                    for b, transformer_block in enumerate(transformer_blocks):
                        attention = getattr(transformer_block, kind, None)
                        if kind not in self.blocks or attention is None:
                            continue
                        suffix = f".{b}" if len(transformer_blocks) > 1 else ""
                        sites.append({"key": f"up{level}.{kind}.{j}{suffix}", "kind": kind,
                                      "num_chs": attention.to_out[0].out_features,
                                      "module": f"up_blocks.{level}.attentions.{j}.transformer_blocks.{b}.{kind}",
                                      **common, "_module": attention})
        public = [{k: v for k, v in site.items() if k != "_module"} for site in sites]
        self._modules_of_sites = [site["_module"] for site in sites]
        return public

    @contextmanager
    def _hooks(self, store: dict[int, Tensor], latent_hw: tuple[int, int], stop: list[bool]) -> Iterator[None]:
        """Record every site's output into ``store``; while ``stop[0]``, end the UNet call as soon as the
        last site has run (whichever it is in the UNet's order)."""
        handles = []
        sites = len(self._sites)

        def recorder(index: int, grid_div: int):
            def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
                tensor = output[0] if isinstance(output, tuple) else output
                if tensor.ndim == 3:  # attention: (B, HW, C) -> (B, C, H, W)
                    h, w = latent_hw[0] // grid_div, latent_hw[1] // grid_div
                    tensor = tensor.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], h, w)
                store[index] = tensor
                if stop[0] and len(store) == sites:
                    raise _StopUNet()
            return hook

        try:
            for index, (site, module) in enumerate(zip(self._sites, self._modules_of_sites)):
                handles.append(module.register_forward_hook(recorder(index, site["grid_div"])))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _autocast(self, dtype: torch.dtype | None) -> Any:
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.backbone.device.type, dtype=dtype)

    def encode_latents(self, images: Tensor) -> Tensor:
        """Clean latents: the VAE posterior's mean times ``scaling_factor`` (Sec. 3.1, "clean latents z"),
        float32. In half precision the encoder runs under autocast; should a float16 encoder overflow (the
        reason SD's VAE configs say ``force_upcast``), the batch is encoded again in float32."""
        vae = self.backbone.vae
        dtype = autocast_dtype(self.settings.precision, self.backbone.device)
        with torch.inference_mode():
            images = images.to(device=self.backbone.device, dtype=vae.dtype)
            if self.backbone.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with self._autocast(dtype):
                latents = vae.encode(images).latent_dist.mean.float()
            if dtype is not None and not bool(torch.isfinite(latents).all()):
                log.warning("the VAE encoder overflowed in %s; this batch is encoded in float32", dtype)
                latents = vae.encode(images).latent_dist.mean.float()
            shift = getattr(vae.config, "shift_factor", None)
            if shift is not None:
                latents = latents - shift
            return latents * vae.config.scaling_factor

    def _pad(self, images: Tensor) -> Tensor:
        multiple = self.input_multiple_px
        height, width = images.shape[-2:]
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
        return images

    def _conditioning(self, metadata: Tensor | None, batch: int) -> Any:
        """The metadata hook for this batch: the tile's metadata, or DiffusionSat's zeros when they were not
        folded into the UNet; nothing otherwise."""
        embedding = self.backbone.metadata_embedding
        if self.metadata == "tile":
            if metadata is None:
                raise UserError("This feature extractor reads the tiles' metadata (metadata 'tile'), but none "
                                "was given")
            return metadata_conditioning(self.backbone.unet, embedding, metadata, self.backbone.metadata_zero_term)
        if metadata is not None:
            raise ValueError("metadata given to an extractor in metadata mode 'none'")
        if embedding is not None and self.backbone.metadata_zero_term is None:
            zeros = torch.zeros(batch, embedding.num_metadata)
            return metadata_conditioning(self.backbone.unet, embedding, zeros, None)
        return nullcontext()

    def forward(self, images: Tensor, metadata: Tensor | None = None) -> list[Tensor]:
        """Features of ``images``; ``metadata`` (B, 7), DiffusionSat's normalised values per image, only in
        metadata mode "tile"."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        prepare_backbone(self.backbone, self.settings)
        unet = self.backbone.unet
        dtype = autocast_dtype(self.settings.precision, self.backbone.device)
        per_call: list[dict[int, Tensor]] = []
        with torch.inference_mode():
            latents = self.encode_latents(self._pad(images))
            prompt = self.backbone.prompt_embedding.expand(latents.shape[0], -1, -1)
            stop = [False]
            store: dict[int, Tensor] = {}
            last_call = len(self.timesteps) - 1

            def unet_call(sample: Tensor, timestep: int, record: bool) -> Tensor | None:
                store.clear()
                # A call whose output nothing reads stops once its blocks have run: the last one of the reuse
                # path, and every feature call of the paper's reading.
                stop[0] = record and self.stop_early and (self.inversion == "paper" or len(per_call) == last_call)
                self.num_unet_calls += 1
                t = torch.tensor(timestep, device=sample.device, dtype=torch.long)
                try:
                    with self._autocast(dtype):
                        output = unet(sample.to(unet.dtype), t, encoder_hidden_states=prompt, return_dict=False)[0]
                except _StopUNet:
                    output = None
                if record:
                    per_call.append(dict(store))
                store.clear()
                return output

            with self._hooks(store, tuple(latents.shape[-2:]), stop), \
                    self._conditioning(metadata, latents.shape[0]):
                if self.inversion == "paper":  # z_(t_k) by DDIM inversion, then the UNet at t_k on it
                    trajectory = ddim_invert(latents, self.inversion_grid, lambda z, t: unet_call(z, t, False),
                                             self.backbone.alphas_cumprod, self.backbone.prediction_type)
                    by_step = dict(zip(self.inversion_grid, trajectory))
                    for t in self.timesteps:
                        unet_call(by_step[t], t, True)
                elif self.reuse_inversion_calls:
                    ddim_invert(latents, self.timesteps, lambda z, t: unet_call(z, t, True),
                                self.backbone.alphas_cumprod, self.backbone.prediction_type)
                else:  # the straightforward path: the inversion first, then one more call per timestep
                    trajectory = ddim_invert(latents, self.timesteps, lambda z, t: unet_call(z, t, False),
                                             self.backbone.alphas_cumprod, self.backbone.prediction_type)
                    for sample, t in zip([latents.float(), *trajectory[:-1]], self.timesteps):
                        unet_call(sample, t, True)
        features = []
        for call in per_call:
            for index, site in enumerate(self._sites):
                h, w = math.ceil(height / site["reduction"]), math.ceil(width / site["reduction"])
                # A copy outside inference mode: a normal tensor that autograd may save for backward.
                features.append(call[index][..., :h, :w].to(torch.float32, memory_format=torch.contiguous_format,
                                                              copy=True))
        return features
