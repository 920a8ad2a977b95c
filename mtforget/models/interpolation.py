"""Weight interpolation between a base model and its fine-tuned version.

``θ(α) = (1 − α)·θ_base + α·θ_ft``: α = 0 is the base, α = 1 the fine-tuned model. Sweeping α
trades what fine-tuning gained on its directions against what the other directions lost, with no
training at all (a mitigation in the spirit of WiSE-FT). Both state dicts must come from the same
architecture with the same vocabulary (take the base copy after language tokens were added), and
LoRA adapters must be merged first: interpolating a merged model interpolates its weight deltas.

The mitigation is :mod:`mtforget.mitigations.interpolation` (``eval.interpolation``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model``'s weights (to keep the base while the model trains in place)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def interpolate_state_dicts(base: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 − alpha)·base + alpha·finetuned`` for floating-point tensors; others from ``finetuned``.

    Integer buffers (position ids, counters) are not quantities to average. The mix is computed in
    float32 and cast back, so bfloat16 weights lose no more than one rounding.
    """
    if base.keys() != finetuned.keys():
        missing = sorted(base.keys() ^ finetuned.keys())
        raise ValueError(f"the state dicts differ in {len(missing)} keys, e.g. {missing[0]}")
    mixed: dict[str, torch.Tensor] = {}
    for key, ft in finetuned.items():
        b = base[key]
        if b.shape != ft.shape:
            raise ValueError(f"{key}: base shape {tuple(b.shape)} != fine-tuned shape {tuple(ft.shape)}")
        if ft.is_floating_point():
            mixed[key] = ((1 - alpha) * b.float() + alpha * ft.float()).to(ft.dtype)
        else:
            mixed[key] = ft.clone()
    return mixed


@torch.no_grad()
def load_interpolated(model: torch.nn.Module, base: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                      alpha: float) -> torch.nn.Module:
    """Load the interpolation at ``alpha`` into ``model`` in place (on its device); returns ``model``."""
    model.load_state_dict(interpolate_state_dicts(base, finetuned, alpha))
    return model


def interpolation_sweep(model: torch.nn.Module, base: dict[str, torch.Tensor], alphas: list[float],
                        evaluate: Callable[[torch.nn.Module, float], T]) -> dict[float, T]:
    """``evaluate(model, alpha)`` for the interpolation at each alpha of ``alphas``.

    ``model`` holds the fine-tuned weights on entry and again on return (also after an error),
    so whatever runs next sees the fine-tuned model.
    """
    finetuned = cpu_state_dict(model)
    results: dict[float, T] = {}
    try:
        for alpha in alphas:
            results[alpha] = evaluate(load_interpolated(model, base, finetuned, alpha), alpha)
    finally:
        with torch.no_grad():
            model.load_state_dict(finetuned)
    return results
