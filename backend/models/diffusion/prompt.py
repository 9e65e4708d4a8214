"""The fixed text condition of the UNet: one prompt embedding computed once per backbone.

SatDiFuser feeds the UNet a fixed prompt; its embedding depends only on the text encoder, so it is
computed once with CLIPTextModel + CLIPTokenizer, saved as ``prompt_embedding.safetensors`` in
Terrafuse's cache under the backbone's sha256, and later runs never load the text encoder. A folder may
also ship the file itself (a bundled backbone without text encoder). Without either, the embedding is
zeros of the UNet's ``cross_attention_dim``, with a warning: the features then differ from the paper's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from ...atomic_files import write_bytes
from ...errors import UserError
from ...hub.paths import cache_dir

log = logging.getLogger("terrafuse.models")

SATELLITE_PROMPT = "A satellite image"
PROMPT_EMBEDDING_FILE = "prompt_embedding.safetensors"
#: CLIP's context length: the token count of the zero embedding when no text encoder is at hand.
CLIP_TOKENS = 77


def prompt_cache_path(sha256: str) -> Path:
    return cache_dir() / "backbones" / sha256 / PROMPT_EMBEDDING_FILE


def _read_embedding(path: Path, prompt: str) -> Tensor | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as stored:
            if (stored.metadata() or {}).get("prompt") != prompt:
                return None
            return stored.get_tensor("prompt_embedding")
    except (OSError, ValueError, KeyError) as exc:  # a truncated cache file is recomputed, not fatal
        log.warning("ignoring unreadable prompt embedding %s: %s", path, exc)
        return None


def _write_embedding(path: Path, embedding: Tensor, prompt: str) -> None:
    from safetensors.torch import save

    try:
        write_bytes(path, save({"prompt_embedding": embedding.contiguous()}, metadata={"prompt": prompt}))
    except OSError as exc:
        log.warning("could not cache the prompt embedding in %s: %s", path, exc)


def encode_prompt(text_encoder_dir: Path, tokenizer_dir: Path, prompt: str) -> Tensor:
    """CLIP's last hidden state for ``prompt`` padded to the tokenizer's length, shape (1, tokens, dim).

    This is what diffusers' Stable Diffusion pipelines feed the UNet (SD 2's converted text encoders
    already end at the penultimate OpenCLIP layer).
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    # Local folders only (local_files_only): nothing is downloaded here, so no revision to pin.
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)  # nosec B615
    text_encoder = CLIPTextModel.from_pretrained(  # nosec B615
        str(text_encoder_dir), torch_dtype=torch.float32, local_files_only=True).eval()
    tokens = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = text_encoder(tokens.input_ids).last_hidden_state
    return hidden.clone()


def load_prompt_embedding(root: Path, text_encoder_dir: Path | None, tokenizer_dir: Path | None, sha256: str,
                          cross_attention_dim: int, prompt: str = SATELLITE_PROMPT) -> tuple[Tensor, str]:
    """The embedding (1, tokens, cross_attention_dim) in float32 on the CPU, and where it came from:
    ``"folder"``, ``"cache"``, ``"text_encoder"`` or ``"zeros"``."""
    candidates = ((root / PROMPT_EMBEDDING_FILE, "folder"), (prompt_cache_path(sha256), "cache"))
    embedding, source = None, ""
    for path, where in candidates:
        if path.is_file():
            embedding = _read_embedding(path, prompt)
            if embedding is not None:
                source = where
                break
    if embedding is None and text_encoder_dir is not None and tokenizer_dir is not None:
        log.info("computing the prompt embedding of %r with the text encoder (once)", prompt)
        embedding, source = encode_prompt(text_encoder_dir, tokenizer_dir, prompt), "text_encoder"
        _write_embedding(prompt_cache_path(sha256), embedding, prompt)
    if embedding is None:
        log.warning("%s has no text encoder and no cached prompt embedding: the UNet gets a zero prompt "
                    "embedding, so its features differ from those of the paper", root)
        return torch.zeros(1, CLIP_TOKENS, cross_attention_dim), "zeros"
    if embedding.ndim != 3 or embedding.shape[0] != 1 or embedding.shape[-1] != cross_attention_dim:
        raise UserError(f"The prompt embedding of {root} has shape {tuple(embedding.shape)}, but the UNet "
                        f"expects (1, tokens, {cross_attention_dim}): the text encoder belongs to another model")
    return embedding.float(), source
