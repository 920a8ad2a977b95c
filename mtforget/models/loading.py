"""Loading encoder-decoder translation checkpoints: safetensors only, no remote code by default."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

from mtforget.errors import UsageError


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_seq2seq(path: str | Path, trust_remote_code: bool = False):
    """Load an encoder-decoder model and its tokenizer from a local directory or a hub id.

    Weights load from safetensors only (``use_safetensors=True``): a pickle checkpoint is refused,
    since unpickling runs arbitrary code. Returns ``(model, tokenizer)`` with the model in float32
    on the CPU; callers move it.
    """
    where = str(path)
    local = Path(where)
    if local.exists():
        if not (local / "config.json").is_file():
            raise UsageError(f"model.path: {where} is not a model directory (no config.json)")
        if not any(local.glob("*.safetensors")):
            raise UsageError(f"model.path: {where} has no .safetensors weights (other formats are refused)")
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"model.path: cannot load a model config from {where!r} ({_first_line(exc)})") from None
    if not getattr(config, "is_encoder_decoder", False):
        raise UsageError(
            f"model.path: {where} is a {config.model_type} model; this version supports encoder-decoder "
            "translation models (M2M-100 style language tokens)"
        )
    model = AutoModelForSeq2SeqLM.from_pretrained(
        where, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    model.eval()
    return model, tokenizer


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters; ``parameters()`` already counts tied weights once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
