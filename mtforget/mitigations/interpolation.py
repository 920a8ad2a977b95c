"""Weight interpolation with the base as a mitigation (``eval.interpolation``): an analysis after
training (:mod:`mtforget.models.interpolation`) that leaves the trial's own scores as they are.

Light at import (the study config reads the registry in a process that never loads PyTorch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import AfterValidator

from mtforget.mitigations.base import Evaluation, Mitigation, TrialContext

if TYPE_CHECKING:
    import torch

    from mtforget.train.loop import TrainOutcome


def _strictly_between(alphas: list[float]) -> list[float]:
    for alpha in alphas:
        if not 0 < alpha < 1:
            raise ValueError(f"{alpha} is not strictly between 0 (the base) and 1 (the fine-tuned "
                             "model); both ends are evaluated anyway")
    return alphas


class Interpolation(Mitigation):
    """``eval.interpolation``: α values strictly between 0 (base) and 1 (fine-tuned); each
    interpolated model is evaluated like the fine-tuned one."""

    name = "interpolation"
    key = "eval.interpolation"
    settings_type = Annotated[list[float], AfterValidator(_strictly_between)]
    default: ClassVar[list[float]] = []
    short = "interpolation"
    changes_training = False
    identity_when_off = True  # studies finished before mitigations were plug-ins keep their trials

    @classmethod
    def label(cls, settings: list[float]) -> str:
        return ",".join(f"{alpha:g}" for alpha in sorted(set(settings))) if settings else "none"

    def prepare(self, context: TrialContext) -> None:
        from mtforget.models.interpolation import cpu_state_dict

        # The base weights, kept on the CPU (before LoRA renames the parameters).
        self.base_state = cpu_state_dict(context.model) if context.is_main else None

    def after_training(self, model: torch.nn.Module, outcome: TrainOutcome, evaluation: Evaluation) -> dict:
        from mtforget.models.interpolation import interpolation_sweep

        alphas = sorted(set(self.settings))
        evals = interpolation_sweep(model, self.base_state, alphas,
                                    lambda m, alpha: evaluation.evaluate(m, f"evaluate α={alpha:g}"))
        evals = {0.0: evaluation.base, **evals, 1.0: evaluation.finetuned}  # both ends are evaluated already
        return {"points": [{"alpha": alpha, "categories": evaluation.category_means(evals[alpha])}
                           for alpha in evals]}
