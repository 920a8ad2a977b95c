"""LoRA adapters over any Hugging Face model, through peft.

The default target modules are the attention and MLP projections of the architecture, found by
the names its linear layers carry (Bart/M2M/NLLB/Marian/mBART, Llama/Qwen/Mistral, T5, GPT-2
families), so a new model of a known family needs no configuration.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, TaskType, get_peft_model

from mtforget.errors import UsageError

# Leaf names of attention and MLP projections per family; whichever occur in a model are targeted.
PROJECTION_NAMES = (
    "q_proj", "k_proj", "v_proj", "out_proj", "o_proj",  # attention (Bart/M2M family, Llama family)
    "fc1", "fc2",  # MLP, Bart/M2M family
    "gate_proj", "up_proj", "down_proj",  # MLP, Llama/Qwen family
    "q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1",  # T5 family
    "c_attn", "c_proj", "c_fc",  # GPT-2 family
)


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """Projection names present as linear (or GPT-2 Conv1D) layers in ``model``, in a stable order."""
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"}
    found = [name for name in PROJECTION_NAMES if name in present]
    if not found:
        raise UsageError("finetune.lora.target_modules: the model has no known attention/MLP projection layers; "
                         f"name its linear layers (it has {', '.join(sorted(present)[:20]) or 'none'})")
    return found


def check_target_modules(model: torch.nn.Module, target_modules: list[str]) -> None:
    """Every name the user gave must match a linear layer: one that matches nothing would leave
    part of the intended adapters silently out (peft fails only when none matches at all)."""
    linear = [name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"]
    leaves = {name.rsplit(".", 1)[-1] for name in linear}
    missing = [t for t in target_modules if t not in leaves and not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:
        raise UsageError(f"finetune.lora.target_modules: {', '.join(map(repr, missing))} match no linear layer of "
                         f"the model (its linear layers are named {', '.join(sorted(leaves)[:20])})")


def apply_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float,
               target_modules: list[str] | None = None) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters; only the adapters are trainable afterwards.

    LayerDrop is switched off: with few layers a step could otherwise skip every adapter.
    """
    config = model.config
    for key in ("encoder_layerdrop", "decoder_layerdrop", "layerdrop"):
        if getattr(config, key, 0):
            setattr(config, key, 0.0)
    for module in model.modules():  # encoders/decoders copy the rate from the config at init
        if getattr(module, "layerdrop", 0):
            module.layerdrop = 0.0
    if target_modules:
        check_target_modules(model, target_modules)
    task = TaskType.SEQ_2_SEQ_LM if getattr(config, "is_encoder_decoder", False) else TaskType.CAUSAL_LM
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, task_type=task,
                      target_modules=target_modules or default_target_modules(model))
    return get_peft_model(model, lora)


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold the adapters into the base weights (a plain model again, for fast evaluation)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


@torch.no_grad()
def merge_survival(model: torch.nn.Module) -> float | None:
    """Of the base-weight entries that the adapters of ``model`` change, the share that still
    differs from the base once the update is folded into the weights in their own dtype (what
    :func:`merge_lora` gives and evaluation sees): updates smaller than the dtype's spacing at a
    weight round away in bfloat16. None for a model without adapters. One layer at a time, so the
    memory it takes is one layer's."""
    changed = survived = 0
    for module in model.modules():
        if not (hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")):
            continue
        weight = module.base_layer.weight
        for adapter in getattr(module, "active_adapters", []):
            if adapter not in getattr(module, "lora_A", {}):
                continue
            delta = module.get_delta_weight(adapter).to(torch.float32)
            merged = (weight.to(torch.float32) + delta).to(weight.dtype)
            moved = delta != 0
            changed += int(moved.sum())
            survived += int((moved & (merged != weight)).sum())
    return survived / changed if changed else None
