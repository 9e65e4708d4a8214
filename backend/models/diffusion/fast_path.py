"""The fast inference path of a frozen backbone: precision, memory layout, attention kernel and compilation.

Feature extraction costs one VAE encoding and K UNet calls per tile (SatDiFuser Sec. 3.1, K = 3
timesteps); everything here makes those calls cheaper without changing what they compute beyond
rounding:

- precision: the VAE encoder and the UNet run under ``torch.autocast`` in bfloat16 (float16 on GPUs
  without bfloat16) on CUDA, where tensor cores give several times float32's throughput; the weights stay
  float32 and the DDIM arithmetic too (:mod:`.inversion`). On the CPU the default stays float32: bfloat16
  did not measure faster on the bundled backbone (docs/performance.md);
- memory layout: ``channels_last`` (NHWC) for the convolutions, the layout cuDNN's tensor-core kernels
  want; on the CPU only when asked (it measured no faster there);
- attention: PyTorch's fused ``scaled_dot_product_attention`` (diffusers' ``AttnProcessor2_0``, which is
  diffusers' default with torch 2; :func:`use_sdpa` makes sure of it, e.g. after another processor was set);
- compilation: ``torch.compile`` of the repeated leaf blocks (ResNet blocks, attention, feed-forward) and
  of the VAE encoder, "regional compilation": small graphs compile in seconds, and the forward hooks that
  read the features stay outside the compiled code. If compiling or running a compiled block fails for any
  reason but a lack of memory, the backbone goes back to eager mode with a warning and the call is redone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ...errors import UserError

log = logging.getLogger("terrafuse.models")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: torch.compile's backend for ``InferenceSettings(compile=True)``: Inductor generates fused kernels
#: (Triton on CUDA, C++/OpenMP on the CPU, which needs a C++ compiler).
COMPILE_BACKEND = "inductor"
_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferenceSettings:
    """How the frozen backbone runs. ``precision``: "auto" (bfloat16 or float16 on CUDA, float32 on the
    CPU), "fp32", "bf16" or "fp16"; ``channels_last``: None for "on CUDA only"; ``compile``: regional
    ``torch.compile`` with a fall-back to eager mode."""

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"Precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype the backbone's matrix products run in under autocast, None for plain float32."""
    device = torch.device(device)
    if precision == "auto":
        if device.type != "cuda":
            # float32 on the CPU: bfloat16 measured 15-20% faster here, within the load's noise, but it moves
            # the features by 1-5% and its speed depends on the CPU's bf16 support (docs/performance.md)
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in _AUTOCAST_DTYPES:
        raise UserError(f"Precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return _AUTOCAST_DTYPES[precision]


def wants_channels_last(settings: InferenceSettings, device: torch.device | str) -> bool:
    if settings.channels_last is not None:
        return settings.channels_last
    return torch.device(device).type == "cuda"


def use_sdpa(unet: torch.nn.Module) -> int:
    """Give every attention of ``unet`` diffusers' ``AttnProcessor2_0`` (fused scaled-dot-product
    attention) unless it already has it; returns how many were changed (0 with diffusers' defaults)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = unet.attn_processors
    stale = [name for name, processor in processors.items() if not isinstance(processor, AttnProcessor2_0)]
    if stale:
        unet.set_attn_processor({name: processor if name not in stale else AttnProcessor2_0()
                                 for name, processor in processors.items()})
        log.info("attention of %d blocks set to scaled-dot-product attention", len(stale))
    return len(stale)


def set_channels_last(module: torch.nn.Module, enabled: bool) -> None:
    """Convolution weights in NHWC (``channels_last``) or back in NCHW."""
    module.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)


def _is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or (isinstance(exc, RuntimeError)
                                                             and "out of memory" in str(exc).lower())


@dataclass
class CompiledBlocks:
    """The modules whose ``forward`` was replaced by a compiled one; :meth:`revert` restores eager mode.
    ``failure`` holds the reason compilation was abandoned, if it was."""

    modules: list[torch.nn.Module] = field(default_factory=list)
    failure: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.modules) and self.failure is None

    def revert(self) -> None:
        for module in self.modules:
            module.__dict__.pop("forward", None)  # back to the class's forward
        self.modules = []


class _FallbackForward:
    """A compiled forward that, when compilation or the compiled code fails, reverts every compiled block
    of its backbone and answers with the eager forward. A failure of the eager forward is a real error and
    is raised; so is running out of memory (the engine halves its batch on it)."""

    def __init__(self, eager: Callable[..., Any], compiled: Callable[..., Any], blocks: CompiledBlocks) -> None:
        self.eager = eager
        self.compiled = compiled
        self.blocks = blocks

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.blocks.failure is not None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise
            output = self.eager(*args, **kwargs)  # raises if the block itself is broken
            self.blocks.failure = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log.warning("torch.compile failed (%s); the backbone runs in eager mode", self.blocks.failure)
            self.blocks.revert()
            return output


def compile_blocks(unet: torch.nn.Module, vae: torch.nn.Module | None = None, *,
                   backend: str | Callable[..., Any] = "inductor", mode: str | None = None) -> CompiledBlocks:
    """Compile the ``forward`` of ``unet``'s ResNet, attention and feed-forward blocks (and of the VAE's
    encoder), each with the fall-back of :class:`_FallbackForward`. Compilation itself happens lazily, at
    the first call of each block; a ``torch.compile`` that is missing or refuses at once reverts here."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    blocks = CompiledBlocks()
    targets = [m for m in unet.modules() if isinstance(m, (ResnetBlock2D, Attention, FeedForward))]
    if vae is not None:
        targets.append(vae.encoder)
    try:
        for module in targets:
            eager = module.forward
            compiled = torch.compile(eager, backend=backend, mode=mode, dynamic=None)
            module.forward = _FallbackForward(eager, compiled, blocks)  # type: ignore[method-assign]
            blocks.modules.append(module)
    except Exception as exc:  # noqa: BLE001 - any refusal of torch.compile means eager mode
        blocks.failure = f"{type(exc).__name__}: {exc}"
        log.warning("torch.compile is not available (%s); the backbone runs in eager mode", blocks.failure)
        blocks.revert()
    return blocks


class PreparedBackbone(Protocol):
    """What :func:`prepare_backbone` reads and sets on a backbone (:class:`.backbone.DiffusionBackbone`)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    channels_last: bool
    compiled: CompiledBlocks | None
    sdpa_checked: bool

    @property
    def device(self) -> torch.device: ...


def prepare_backbone(backbone: PreparedBackbone, settings: InferenceSettings) -> None:
    """Bring ``backbone`` to ``settings``: scaled-dot-product attention, the memory layout, and compiled
    blocks or not. Cheap when nothing changes, so every forward calls it (a cached backbone may have
    been prepared otherwise by an earlier job)."""
    if not backbone.sdpa_checked:
        use_sdpa(backbone.unet)
        backbone.sdpa_checked = True
    channels_last = wants_channels_last(settings, backbone.device)
    if backbone.channels_last != channels_last:
        set_channels_last(backbone.unet, channels_last)
        set_channels_last(backbone.vae, channels_last)
        backbone.channels_last = channels_last
    compiled = backbone.compiled
    if settings.compile and compiled is None:
        backbone.compiled = compile_blocks(backbone.unet, backbone.vae, backend=COMPILE_BACKEND)
    elif not settings.compile and compiled is not None:
        compiled.revert()
        backbone.compiled = None
