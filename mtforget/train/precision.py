"""The arithmetic of fine-tuning: which dtype the trainable weights and the optimizer keep, which
type the forward and backward passes multiply in, and a count of how many weights training moved.

``finetune.precision`` (:data:`PRECISIONS`):

- ``fp32`` (what ``auto`` means): float32 master weights. The trainable parameters and AdamW's
  states are float32 whatever dtype the model was loaded in; when it was loaded in a half type
  (``model.dtype``: bfloat16 on a GPU), the forward and backward passes run under autocast in that
  type, as Hugging Face Trainer with ``bf16=True`` on float32 weights, FSDP ``MixedPrecision`` and
  DeepSpeed bf16 do. An update of 1e-5 is far below a bfloat16 weight's rounding step, and only
  float32 keeps it. Frozen weights (LoRA's base) stay as loaded. float16 autocast scales the loss
  (a ``GradScaler``) so that small gradients do not underflow.
- ``bf16``: pure bfloat16. The weights, gradients and AdamW states stay bfloat16 and every step
  rounds its update into the weights: most updates at fine-tuning learning rates round away.
  Recorded as such; kept for comparison with runs that trained so.
- ``bf16-kahan``: bfloat16 weights and states, and AdamW with Kahan summation (torch-optimi, the
  ``lowmem`` extra): a bfloat16 buffer per weight keeps what the rounding of each update dropped
  and adds it back at the next step, so the updates add up as in float32 for 10 bytes per
  parameter instead of 16.

After training, :meth:`PrecisionPlan.restore` casts every trainable weight back to the dtype it
had before training, so that the fine-tuned model is evaluated with the same arithmetic as its base.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mtforget.errors import UsageError
from mtforget.models.dtypes import DTYPE_NAMES

PRECISIONS = ("auto", "fp32", "bf16", "bf16-kahan")
# Entries of a tensor compared one by one for the weights-changed count; a larger tensor is
# compared on an evenly strided sample of this many entries (its standard error stays under 0.2%).
CHANGE_SAMPLE = 65_536


# Bytes each parameter holds between steps of full fine-tuning in each precision (weights,
# gradients, AdamW's two moments, and Kahan's compensation), before activations; LoRA holds the
# frozen weights as loaded (2 bytes in bfloat16) and these for its adapters only.
STATE_BYTES = {"fp32": 4 + 4 + 8, "bf16": 2 + 2 + 4, "bf16-kahan": 2 + 2 + 4 + 2}


@dataclass(frozen=True)
class PrecisionPlan:
    """How one training run keeps and multiplies its weights (see the module's doc)."""

    mode: str  # fp32 | bf16 | bf16-kahan: what ran
    weights: torch.dtype  # dtype of the trainable parameters and the optimizer states while training
    autocast: torch.dtype | None  # forward and backward under autocast in this type, or None

    def optimizer(self, parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """AdamW over ``parameters``: torch's, or torch-optimi's with Kahan summation."""
        if self.mode != "bf16-kahan":
            return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
        optimi = _optimi()
        # torch's AdamW defaults (optimi's own are betas 0.99, eps 1e-6 and weight decay 1e-2), so
        # that the two modes differ only in how the update is added to the weights. No Triton
        # kernels: the PyTorch path runs on every device.
        return optimi.AdamW(parameters, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                            kahan_sum=True, triton=False)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler | None:
        """A loss scaler for float16 autocast (None otherwise)."""
        return torch.amp.GradScaler(device.type) if self.autocast == torch.float16 else None

    @contextlib.contextmanager
    def autocasting(self, device: torch.device) -> Iterator[None]:
        """Autocast in the plan's type on ``device`` (nothing when it has none)."""
        with torch.autocast(device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            yield

    def apply(self, model: torch.nn.Module, uniform: bool = False) -> dict[str, torch.dtype]:
        """Cast the trainable parameters to :attr:`weights`, and with ``uniform`` the frozen ones
        too (FSDP flattens a module's parameters into one tensor of one dtype; sharded, frozen
        float32 weights cost 4 bytes per parameter over the number of processes). Returns each
        cast parameter's dtype before."""
        before = {}
        for name, param in model.named_parameters():
            if (param.requires_grad or uniform) and param.is_floating_point():
                before[name] = param.dtype
                # Master weights widen a half type and never narrow a wider one (a float64 model
                # trains in float64).
                target = torch.promote_types(param.dtype, self.weights) if self.mode == "fp32" else self.weights
                if param.dtype != target:
                    param.data = param.data.to(target)
        return before

    @staticmethod
    def restore(model: torch.nn.Module, before: dict[str, torch.dtype]) -> None:
        """Cast the parameters named in ``before`` back to their dtype there."""
        for name, param in model.named_parameters():
            dtype = before.get(name)
            if dtype is not None and param.dtype != dtype:
                param.data = param.data.to(dtype)


def plan_precision(model: torch.nn.Module, precision: str = "auto", bf16_autocast: bool = False) -> PrecisionPlan:
    """The plan for training ``model`` (as loaded) in ``precision`` (:data:`PRECISIONS`).

    ``bf16_autocast`` puts a float32-loaded model under bfloat16 autocast too (pre-training on
    hardware that multiplies bfloat16 natively). The half-precision modes train the weights in
    bfloat16 and need a model loaded in it; anything else is a UsageError naming the key.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"finetune.precision: unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    loaded = _loaded_dtype(model)
    if precision in ("auto", "fp32"):
        half = loaded if loaded in (torch.bfloat16, torch.float16) else None
        return PrecisionPlan("fp32", torch.float32, half or (torch.bfloat16 if bf16_autocast else None))
    if loaded != torch.bfloat16:
        raise UsageError(f"finetune.precision: {precision} trains the weights in bfloat16, but the model was "
                         f"loaded in {DTYPE_NAMES.get(loaded, loaded)}; set model.dtype: bfloat16 or "
                         "finetune.precision: fp32")
    if precision == "bf16-kahan":
        _optimi()
    return PrecisionPlan(precision, torch.bfloat16, None)


def _loaded_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype most of the model's floating-point weights have."""
    counts: dict[torch.dtype, int] = {}
    for param in model.parameters():
        if param.is_floating_point():
            counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _optimi():
    try:
        import optimi
    except ImportError:
        raise UsageError("finetune.precision: bf16-kahan needs torch-optimi: pip install 'mtforget[lowmem]'") from None
    return optimi


class WeightChanges:
    """Counts the trainable entries that training changed, against a snapshot taken before it.

    The snapshot keeps every entry of a tensor up to :data:`CHANGE_SAMPLE` entries and an evenly
    strided sample of that many of a larger one, on the CPU in the tensor's own dtype: a few MB
    for any model. Values are compared in float32, so a bfloat16 weight that a float32 master
    weight still equals counts as unchanged.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.snapshot = {name: _sample(param).cpu().clone() for name, param in model.named_parameters()
                         if param.requires_grad and param.is_floating_point()}

    def fraction(self, model: torch.nn.Module) -> float | None:
        """The share of snapshotted entries whose value differs now (each tensor weighted by its
        size); None without trainable weights, or when a tensor is no longer whole (sharded)."""
        changed = total = 0.0
        params = dict(model.named_parameters())
        for name, before in self.snapshot.items():
            param = params.get(name)
            if param is None:
                return None
            now = _sample(param).detach().cpu()
            if now.shape != before.shape:
                return None
            changed += (now.float() != before.float()).float().mean().item() * param.numel()
            total += param.numel()
        return changed / total if total else None


def _sample(param: torch.Tensor) -> torch.Tensor:
    flat = param.detach().reshape(-1)
    stride = max(1, math.ceil(flat.numel() / CHANGE_SAMPLE))
    return flat[::stride]
