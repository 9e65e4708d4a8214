"""Official SkySense checkpoints -> this implementation.

THE MAPPING IS INFERRED, NOT CHECKED AGAINST A REAL CHECKPOINT. It rests on public sources: the SkySense
README (``skysense_model_backbone_hr.pth`` holds an mmcls SwinV2 under ``backbone.``, with ``mask_token``
left over; ``skysense_model_backbone_s2.pth`` holds an mmseg ViT without prefix plus ``ctpe``), the
parameter list of the HR checkpoint published by a third party (mmcls SwinV2-H: embed 352, heads 8-16-32-64,
``norm3`` after blocks 6, 12, 18 of stage 3, final ``norm3``), and SkySense++'s code and configuration, which
loads ``skysense_model_backbone_{hr,s2,s1}.pth``, ``skysense_model_head_{s2,s1}.pth`` (a 1x1 convolution and
a 4x pixel shuffle, ``decoder.0``) and ``skysense_model_fusion.pth`` (``porj_linear`` 2816 -> 1024,
``cls_token``, 24 mmseg encoder layers) and adds ``ctpe`` (1 x 365 x 2816) before that projection.

Every rule is in the tables below (official regex -> this implementation's key); each checkpoint may carry
any of its listed prefixes. Two rules change values, not only names:

- SwinV2 patch merging: mmcls gathers each 2x2 neighbourhood with ``nn.Unfold`` (channel-major order), timm
  concatenates the four pixels (x00, x10, x01, x11, pixel-major), so the reduction's input columns are
  permuted (:func:`unfold_to_timm_merge`).
- ViT position embedding: mmseg's has a slot for the class token that the official configuration drops
  before the first layer (``with_cls_token=False``); timm's ViT built without a class token has no slot,
  so the slot is removed.

``ctpe`` lives in the fusion's input space; P_DTPE is added after the projection, so it becomes
``ctpe @ W^T`` with W the projection's weight (exact, since the projection is linear). ``porj_linear`` is
copied into the projection of every modality whose features have its input width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import UserError
from .config import SkySenseConfig, official_conventions, paper_config
from .model import SkySense

Rule = tuple[str, str]  # (official key template, this implementation's key template)

#: What each {placeholder} of a template matches.
PLACEHOLDERS = {
    "n": r"\d+", "s": r"\d+", "b": r"\d+",
    "wb": r"weight|bias",
    "norm": r"norm[123]",
    "down": r"reduction\.weight|norm\.weight|norm\.bias",
    "attn": r"logit_scale|q_bias|v_bias|cpb_mlp\.0\.weight|cpb_mlp\.0\.bias|cpb_mlp\.2\.weight|qkv\.weight"
            r"|proj\.weight|proj\.bias",
}

#: mmcls SwinTransformerV2 (skysense_model_backbone_hr.pth) -> timm SwinTransformerV2.
HR_RULES: tuple[Rule, ...] = (
    ("patch_embed.projection.{wb}", "patch_embed.proj.{wb}"),
    ("patch_embed.norm.{wb}", "patch_embed.norm.{wb}"),
    ("stages.{s}.downsample.{down}", "layers.{s}.downsample.{down}"),
    ("stages.{s}.blocks.{b}.attn.w_msa.{attn}", "layers.{s}.blocks.{b}.attn.{attn}"),
    ("stages.{s}.blocks.{b}.{norm}.{wb}", "layers.{s}.blocks.{b}.{norm}.{wb}"),
    ("stages.{s}.blocks.{b}.ffn.layers.0.0.{wb}", "layers.{s}.blocks.{b}.mlp.fc1.{wb}"),
    ("stages.{s}.blocks.{b}.ffn.layers.1.{wb}", "layers.{s}.blocks.{b}.mlp.fc2.{wb}"),
    ("norm3.{wb}", "norm.{wb}"),
)
HR_DROPPED = (r"mask_token", r".*relative_coords_table", r".*relative_position_index", r"norm[012]\.(weight|bias)")

#: mmseg VisionTransformer (skysense_model_backbone_s2.pth / _s1.pth) -> timm VisionTransformer.
VIT_RULES: tuple[Rule, ...] = (
    ("patch_embed.projection.{wb}", "patch_embed.proj.{wb}"),
    ("pos_embed", "pos_embed"),
    ("layers.{n}.ln1.{wb}", "blocks.{n}.norm1.{wb}"),
    ("layers.{n}.ln2.{wb}", "blocks.{n}.norm2.{wb}"),
    ("layers.{n}.attn.attn.in_proj_{wb}", "blocks.{n}.attn.qkv.{wb}"),
    ("layers.{n}.attn.attn.out_proj.{wb}", "blocks.{n}.attn.proj.{wb}"),
    ("layers.{n}.ffn.layers.0.0.{wb}", "blocks.{n}.mlp.fc1.{wb}"),
    ("layers.{n}.ffn.layers.1.{wb}", "blocks.{n}.mlp.fc2.{wb}"),
    ("ln1.{wb}", "norm.{wb}"),  # only in checkpoints trained with final_norm=True
)
VIT_DROPPED = (r"cls_token", r"ctpe")  # ctpe is read apart, see ctpe_to_date_encoding

#: UPHead (skysense_model_head_s2.pth / _s1.pth) -> ModalityAdapter.up.
HEAD_RULES: tuple[Rule, ...] = (("decoder.0.{wb}", "up.0.{wb}"),)

#: The fusion transformer (skysense_model_fusion.pth) -> TemporalFusion.
FUSION_RULES: tuple[Rule, ...] = (
    ("cls_token", "extra_token"),
    ("layers.{n}.ln1.{wb}", "layers.{n}.norm1.{wb}"),
    ("layers.{n}.ln2.{wb}", "layers.{n}.norm2.{wb}"),
    ("layers.{n}.attn.attn.in_proj_{wb}", "layers.{n}.self_attn.in_proj_{wb}"),
    ("layers.{n}.attn.attn.out_proj.{wb}", "layers.{n}.self_attn.out_proj.{wb}"),
    ("layers.{n}.ffn.layers.0.0.{wb}", "layers.{n}.linear1.{wb}"),
    ("layers.{n}.ffn.layers.1.{wb}", "layers.{n}.linear2.{wb}"),
)
FUSION_DROPPED = (r"porj_linear\.(weight|bias)", r"ctpe")  # read apart: folded into the adapters / P_DTPE


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{PLACEHOLDERS[p]})" for i, p in enumerate(parts))
    return re.compile(regex)


def rename(key: str, rules: tuple[Rule, ...], reverse: bool = False) -> str | None:
    """``key`` renamed by the first matching rule (official -> ours, or ours -> official when ``reverse``)."""
    for official, ours in rules:
        source, target = (ours, official) if reverse else (official, ours)
        match = _pattern(source).fullmatch(key)
        if match:
            return target.format(**match.groupdict())
    return None


@dataclass(frozen=True)
class Layout:
    """One official checkpoint: the prefixes it may carry, its rules, the keys it drops on purpose, and where
    its converted keys go in :class:`SkySense`."""

    prefixes: tuple[str, ...]
    rules: tuple[Rule, ...]
    dropped: tuple[str, ...]
    target: str  # prefix inside SkySense, "{m}" replaced by the modality


LAYOUTS = {
    "hr": Layout(("backbone.", "backbone_gep.", "backbone_hr.", ""), HR_RULES, HR_DROPPED, "encoders.hr.backbone."),
    "s2": Layout(("backbone_s2.", "backbone.", ""), VIT_RULES, VIT_DROPPED, "encoders.s2.backbone."),
    "s1": Layout(("backbone_s1.", "backbone.", ""), VIT_RULES, VIT_DROPPED, "encoders.s1.backbone."),
    "head_s2": Layout(("head_s2.", "backbone.", ""), HEAD_RULES, (), "adapters.s2."),
    "head_s1": Layout(("head_s1.", "backbone.", ""), HEAD_RULES, (), "adapters.s1."),
    "fusion": Layout(("fusion.", "necks.", ""), FUSION_RULES, FUSION_DROPPED, "fusion."),
}


@dataclass
class ConversionReport:
    converted: dict[str, list[str]] = field(default_factory=dict)  # checkpoint -> our keys written
    ignored: dict[str, list[str]] = field(default_factory=dict)  # checkpoint -> official keys left out
    not_filled: list[str] = field(default_factory=list)  # our keys no checkpoint provided (kept at init)
    notes: list[str] = field(default_factory=list)


def unfold_to_timm_merge(weight: Tensor) -> Tensor:
    """Patch-merging reduction weight (out, 4C): mmcls ``nn.Unfold`` order (c, kh, kw) -> timm order
    (kw, kh, c), i.e. the neighbours x00, x10, x01, x11 each as a block of C channels."""
    out, four_c = weight.shape
    return weight.reshape(out, four_c // 4, 2, 2).permute(0, 3, 2, 1).reshape(out, four_c)


def timm_to_unfold_merge(weight: Tensor) -> Tensor:
    """The inverse of :func:`unfold_to_timm_merge`."""
    out, four_c = weight.shape
    return weight.reshape(out, 2, 2, four_c // 4).permute(0, 3, 2, 1).reshape(out, four_c)


def load_official(path: str | Path) -> dict[str, Tensor]:
    """A ``.pth`` state dict, read with ``torch.load(weights_only=True)`` (never unpickling code); a
    ``model`` / ``state_dict`` wrapper is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for corrupt or pickled-code files
        raise UserError(f"Cannot read {path.name} as a weights-only PyTorch checkpoint (corrupt, truncated or "
                        f"containing code): {type(exc).__name__}: {str(exc)[:200]}") from None
    for key in ("model", "state_dict", "module"):
        if isinstance(data, Mapping) and key in data and isinstance(data[key], Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise UserError(f"{path.name} does not hold a state dict of tensors")
    return dict(data)


def _strip_prefix(state: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> tuple[dict[str, Tensor], list[str]]:
    for prefix in prefixes:
        if prefix and any(k.startswith(prefix) for k in state):
            kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            return kept, sorted(k for k in state if not k.startswith(prefix))
    return dict(state), []


def map_keys(state: Mapping[str, Tensor], part: str) -> tuple[dict[str, Tensor], list[str]]:
    """Apply one layout's table: official state dict -> (keys of the target submodule, ignored keys).
    Raises :class:`UserError` for keys no rule knows (another architecture)."""
    layout = LAYOUTS[part]
    stripped, others = _strip_prefix(state, layout.prefixes)
    out: dict[str, Tensor] = {}
    ignored = list(others)
    unknown = []
    for key, value in stripped.items():
        if any(re.fullmatch(p, key) for p in layout.dropped):
            ignored.append(key)
            continue
        new_key = rename(key, layout.rules)
        if new_key is None:
            unknown.append(key)
            continue
        if part == "hr" and new_key.endswith("downsample.reduction.weight"):
            value = unfold_to_timm_merge(value)
        if part in ("s2", "s1") and new_key == "pos_embed" and _has_class_slot(value):
            value = value[:, 1:]
        out[new_key] = value
    if unknown:
        raise UserError(f"The {part} checkpoint has {len(unknown)} weights of an unknown layout (e.g. "
                        f"{', '.join(sorted(unknown)[:3])}): not an official SkySense {part} checkpoint")
    return out, sorted(ignored)


def _has_class_slot(pos_embed: Tensor) -> bool:
    n = pos_embed.shape[1]
    return int(round((n - 1) ** 0.5)) ** 2 == n - 1 and int(round(n**0.5)) ** 2 != n


def export_official(model: SkySense, with_prefixes: bool = True) -> dict[str, dict[str, Tensor]]:
    """This implementation's weights in the official layouts (the inverse of the tables), one state dict per
    checkpoint: ``hr``, ``s2``, ``s1``, ``head_s2``, ``head_s1``, ``fusion``. Used to test the round trip."""
    own = model.state_dict()
    exported: dict[str, dict[str, Tensor]] = {}
    for part, layout in LAYOUTS.items():
        sub = {k[len(layout.target):]: v for k, v in own.items() if k.startswith(layout.target)}
        if not sub:
            continue
        prefix = layout.prefixes[0] if with_prefixes else ""
        out: dict[str, Tensor] = {}
        for key, value in sub.items():
            official = rename(key, layout.rules, reverse=True)
            if official is None:
                continue  # derived buffers (relative position tables, masks) are not saved officially
            if part == "hr" and key.endswith("downsample.reduction.weight"):
                value = timm_to_unfold_merge(value)
            if part in ("s2", "s1") and key == "pos_embed":
                value = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
            out[prefix + official] = value.clone()
        if part in ("s2", "s1"):
            out[prefix + "cls_token"] = torch.zeros(1, 1, sub["pos_embed"].shape[-1])  # unused: with_cls_token=False
        if part == "fusion":
            proj = next((m for m in ("hr", "s2", "s1") if f"adapters.{m}.proj.weight" in own), None)
            if proj is not None:
                out[prefix + "porj_linear.weight"] = own[f"adapters.{proj}.proj.weight"].clone()
                out[prefix + "porj_linear.bias"] = own[f"adapters.{proj}.proj.bias"].clone()
        if part.startswith("head_") and not out:
            continue
        exported[part] = out
    return exported


def ctpe_to_date_encoding(ctpe: Tensor, projection_weight: Tensor | None, dim: int) -> Tensor | None:
    """P_DTPE (365, d) from the official ``ctpe`` (1, 365, C): copied when C = d, else mapped through the
    fusion's input projection (P = ctpe W^T); None when neither is possible."""
    table = ctpe.reshape(-1, ctpe.shape[-1])
    if table.shape[-1] == dim:
        return table.clone()
    if projection_weight is not None and projection_weight.shape[1] == table.shape[-1]:
        return table @ projection_weight.T
    return None


def convert_official(checkpoints: Mapping[str, str | Path | Mapping[str, Tensor]], config: SkySenseConfig | None = None,
                     ) -> tuple[SkySense, ConversionReport]:
    """Build a SkySense with the weights of the official checkpoints given.

    ``checkpoints`` maps any of ``hr``, ``s2``, ``s1``, ``head_s2``, ``head_s1``, ``fusion`` to a ``.pth``
    path (or an already loaded state dict). The model has ``config`` (default: ``skysense-paper`` keeping
    only the modalities given), set to the official conventions (P_DTPE on Sentinel-2 only, the official input
    statistics, no learned prototype region: :func:`~.config.official_conventions`); weights no checkpoint
    provides (the prototypes, unconverted adapters) keep their initial values and are listed in the report.
    """
    unknown = sorted(set(checkpoints) - set(LAYOUTS))
    if unknown:
        raise ValueError(f"unknown checkpoint parts {unknown}; known: {sorted(LAYOUTS)}")
    states = {part: dict(src) if isinstance(src, Mapping) else load_official(src) for part, src in checkpoints.items()}
    if config is None:
        given = [m for m in ("hr", "s2", "s1") if m in states]
        config = paper_config().with_overrides(modalities=given or None)
    config = official_conventions(config)
    model = SkySense(config)
    own = model.state_dict()
    report = ConversionReport()
    new_state: dict[str, Tensor] = {}
    for part, state in states.items():
        layout = LAYOUTS[part]
        modality = part.removeprefix("head_")
        if part != "fusion" and modality not in config.encoders:
            raise UserError(f"A {part} checkpoint was given but the configuration has no {modality} encoder")
        mapped, ignored = map_keys(state, part)
        keys = [layout.target + k for k in mapped]
        new_state.update(zip(keys, mapped.values()))
        report.converted[part] = sorted(keys)
        report.ignored[part] = ignored

    fusion = states.get("fusion")
    projection = None
    if fusion is not None:
        stripped, _ = _strip_prefix(fusion, LAYOUTS["fusion"].prefixes)
        if "porj_linear.weight" in stripped:
            projection = stripped["porj_linear.weight"]
            for m in config.modalities:
                key = f"adapters.{m}.proj.weight"
                if own[key].shape == projection.shape:
                    new_state[key] = projection.clone()
                    new_state[f"adapters.{m}.proj.bias"] = stripped["porj_linear.bias"].clone()
                    report.converted["fusion"].extend([key, f"adapters.{m}.proj.bias"])
                else:
                    report.notes.append(f"porj_linear {tuple(projection.shape)} does not fit the {m} projection "
                                        f"{tuple(own[key].shape)}; that projection keeps its initial weights")
    ctpe = next((v for state in states.values() for k, v in state.items() if k == "ctpe" or k.endswith(".ctpe")),
                None)
    if ctpe is not None:
        table = ctpe_to_date_encoding(ctpe, projection, config.dim)
        if table is None or table.shape != own["date_encoding.weight"].shape:
            report.notes.append(f"ctpe {tuple(ctpe.shape)} could not be mapped to P_DTPE (needs the fusion's "
                                "porj_linear); P_DTPE keeps its initial values")
        else:
            new_state["date_encoding.weight"] = table
            report.converted.setdefault("ctpe", []).append("date_encoding.weight")

    wrong = sorted(k for k, v in new_state.items() if k not in own or own[k].shape != v.shape)
    if wrong:
        details = ", ".join(f"{k} {tuple(new_state[k].shape)} vs "
                            f"{tuple(own[k].shape) if k in own else 'absent'}" for k in wrong[:3])
        raise UserError(f"The checkpoints do not fit the {config.name} configuration: {len(wrong)} weights differ "
                        f"({details}); pass a configuration of the checkpoint's sizes")
    report.not_filled = sorted(k for k in own if k not in new_state and not _is_derived_buffer(k))
    model.load_state_dict(new_state, strict=False)
    return model.eval(), report


def _is_derived_buffer(key: str) -> bool:
    return key.endswith(("relative_coords_table", "relative_position_index", "attn.k_bias", "attn_mask"))


def infer_swinv2(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """timm keyword arguments of an official HR checkpoint's SwinV2 (embed width, depths, heads) and its
    extra-norm blocks, read from the tensors' names and shapes."""
    stripped, _ = _strip_prefix(state, LAYOUTS["hr"].prefixes)
    depths: dict[int, int] = {}
    heads: dict[int, int] = {}
    extra = []
    for key, value in stripped.items():
        match = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", key)
        if not match:
            continue
        stage, block, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        depths[stage] = max(depths.get(stage, 0), block + 1)
        if rest == "attn.w_msa.logit_scale":
            heads[stage] = int(value.shape[0])
        if rest == "norm3.weight":
            extra.append([stage, block])
    stages = sorted(depths)
    return {"embed_dim": int(stripped["patch_embed.projection.weight"].shape[0]),
            "patch_size": int(stripped["patch_embed.projection.weight"].shape[-1]),
            "depths": [depths[s] for s in stages], "num_heads": [heads[s] for s in stages],
            "extra_norm_blocks": sorted(extra)}
