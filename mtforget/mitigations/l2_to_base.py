"""An L2 penalty that pulls the fine-tuned weights back towards the weights training started from
(L2-SP, Li et al. 2018): ``weight × Σ ‖θ − θ₀‖²`` over the trainable parameters, added to every
optimizer step's loss. Forgetting is a drift of shared weights; the penalty makes drifting cost.

θ₀ is what the trainable parameters held when training started: the base weights in full
fine-tuning; with LoRA, the adapters' initial values (B = 0, so the penalty keeps the weight
delta small).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from mtforget.mitigations.base import Mitigation
from mtforget.train.callbacks import RunningMean, TrainCallback

if TYPE_CHECKING:
    import torch


class L2Penalty(TrainCallback):
    """The penalty as a training-loop term."""

    needs_whole_model = True  # it reads every trainable parameter, which sharded engines split

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.start: dict[str, torch.Tensor] = {}
        self.drift_mean = RunningMean()

    def on_train_start(self, model: torch.nn.Module) -> None:
        self.start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def extra_loss(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        drift = sum(((p - self.start[name]) ** 2).sum() for name, p in model.named_parameters()
                    if name in self.start)
        self.drift_mean.add(drift)
        return self.weight * drift

    def logged(self) -> dict[str, float]:
        mean = self.drift_mean.pop()
        return {} if mean is None else {"l2_drift": mean}


class L2ToBase(Mitigation):
    """``finetune.l2_to_base``: the penalty's weight; 0 = off."""

    needs_whole_model = True
    name = "l2_to_base"
    key = "finetune.l2_to_base"
    settings_type = Annotated[float, Field(ge=0)]
    default = 0.0
    short = "l2"

    def callbacks(self) -> list[TrainCallback]:
        return [L2Penalty(self.settings)]
