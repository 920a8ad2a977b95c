"""The dtypes a model's weights load in (``model.dtype``)."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """The dtype ``model.dtype`` names; ``auto`` is bfloat16 on a CUDA GPU that supports it
    (``device``, else whether CUDA is available), float32 elsewhere."""
    if name != "auto":
        return DTYPES[name]
    cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    return torch.bfloat16 if cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
