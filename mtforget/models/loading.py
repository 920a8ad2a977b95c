"""Loading translation checkpoints (encoder-decoder or decoder-only): safetensors only, no remote
code by default, and the language control that fits each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from mtforget.errors import UsageError
from mtforget.hub import require_hub
from mtforget.models.control import Control
from mtforget.models.dtypes import resolve_dtype
from mtforget.models.instruction import InstructionControl
from mtforget.models.language import LanguageTokens


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path: str | Path, trust_remote_code: bool = False, gradient_checkpointing: bool = False,
               dtype: str = "auto", revision: str | None = None):
    """Load an encoder-decoder or decoder-only model and its tokenizer, by local path or hub id.

    Weights load from safetensors only (``use_safetensors=True``): a pickle checkpoint is refused,
    since unpickling runs arbitrary code. ``dtype`` is ``model.dtype``: ``auto`` is bfloat16 on a
    GPU that supports it, float32 otherwise (see :func:`mtforget.models.dtypes.resolve_dtype`);
    the model stays on the CPU and callers move it. ``revision`` (a hub model's commit) pins what
    is loaded; a local directory has none.
    """
    where = str(path)
    local = Path(where)
    if local.exists():
        if revision is not None:
            raise UsageError(f"model.revision: {where} is a local directory, which has no revision; remove the key")
        if not (local / "config.json").is_file():
            raise UsageError(f"model.path: {where} is not a model directory (no config.json)")
        if not any(local.glob("*.safetensors")):
            raise UsageError(f"model.path: {where} has no .safetensors weights (other formats are refused)")
    elif local.is_absolute() or where.startswith(("./", "../", "~")):
        raise UsageError(f"model.path: {where} does not exist")
    else:
        _require_cached_or_hub(where, trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        raise UsageError(f"model.path: cannot load a model config from {where!r} ({_first_line(exc)})") from None
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(where, use_safetensors=True, trust_remote_code=trust_remote_code,
                                     dtype=resolve_dtype(dtype), revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError, SafetensorError) as exc:  # a damaged weight file is the user's to fix too
        raise UsageError(f"model.path: cannot load {where!r} as a translation model ({_first_line(exc)})") from None
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.eval()
    return model, tokenizer


# How each architecture is steered: ``(model, tokenizer, languages, names, max_length)`` -> the
# control and the language tokens it added.
ControlFactory = Callable[[Any, Any, list[str], dict[str, str], int], tuple[Control, list[str]]]
CONTROLS: dict[str, ControlFactory] = {
    "encoder-decoder": LanguageTokens.for_model,
    "decoder-only": InstructionControl.for_model,
}


def make_control(model, tokenizer, languages: list[str], names: dict[str, str] | None = None,
                 max_length: int = 128) -> tuple[Control, list[str]]:
    """The language control that fits the model, and the language tokens it had to add.

    Encoder-decoder models get language tokens in their own family's spelling (missing ones are
    added, embeddings resized); decoder-only models get instructions, through the chat template
    when the tokenizer has one. ``max_length`` caps each side in tokens, special tokens included:
    the source and the target of an encoder-decoder, the prompt and the answer of a decoder-only
    model (whose sequence is therefore up to twice as long).
    """
    architecture = "encoder-decoder" if getattr(model.config, "is_encoder_decoder", False) else "decoder-only"
    return CONTROLS[architecture](model, tokenizer, languages, names or {}, max_length)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters; ``parameters()`` already counts tied weights once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _require_cached_or_hub(name: str, trust_remote_code: bool) -> None:
    """A hub id must be in the local cache or the hub must answer: otherwise fail at once, not
    after the hub client's half a minute of retries."""
    try:
        AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=True)
        return
    except (OSError, ValueError):
        pass
    require_hub("model.path", name)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
