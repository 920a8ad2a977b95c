"""A forgetting budget (``finetune.forgetting_budget``): training stops at the first check where
the sampled forgetting (see :mod:`mtforget.evaluate.during_training`) exceeds ``max_drop`` points
in a watched category, and the trial keeps the weights of the last check within the budget.

Checks come every ``eval.during_training.every`` steps, or at every dev check
(``finetune.eval_every``) when that is 0. The kept weights are a CPU copy taken at each check
within the budget; when the best dev checkpoint (which training restores) comes from before the
last such check, it is kept instead, being within the budget too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from mtforget.data.categories import CATEGORIES, UNSEEN
from mtforget.errors import UsageError
from mtforget.mitigations.base import Evaluation, Mitigation, TrialContext
from mtforget.train.callbacks import TrainCallback, TrainState

if TYPE_CHECKING:
    import torch

    from mtforget.evaluate.during_training import ForgettingProbe
    from mtforget.train.loop import TrainOutcome

class BudgetConfig(BaseModel):
    """How much forgetting a trial may afford before training stops."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_drop: float | None = Field(None, gt=0)
    """Points of the metric a watched category may lose (sampled during training) before training
    stops; unset: no budget."""
    category: Literal[CATEGORIES] | None = None  # type: ignore[valid-type]
    """The category to watch; unset: every unseen category the sample has."""
    metric: Literal["chrf"] = "chrf"
    """The metric the budget is counted in."""


def over_budget(deltas: dict[str, float], categories: list[str], max_drop: float, step: int) -> str | None:
    """Why a check at ``step`` with per-category changes ``deltas`` is over the budget (the watched
    category that fell most, by more than ``max_drop``), or None when it is within."""
    worst = min(categories, key=lambda c: deltas[c])
    if -deltas[worst] > max_drop:
        return f"{worst} chrF fell {-deltas[worst]:.2f} points at step {step}, more than the budget of {max_drop:g}"
    return None


def watched_categories(category: str | None, sampled: list[str]) -> list[str]:
    """The categories a budget watches: ``category``, or every unseen one of the sample; exit 2
    when the sample has none of them."""
    watched = [category] if category else [c for c in UNSEEN if c in sampled]
    missing = [c for c in watched if c not in sampled]
    if not watched or missing:
        raise UsageError(f"finetune.forgetting_budget.category: the sample has no direction in "
                         f"{', '.join(missing) or 'an unseen category'} (it has {', '.join(sampled)})")
    return watched


class BudgetStop(TrainCallback):
    """Stops the run when a watched category's sampled change falls below ``-max_drop``."""

    def __init__(self, probe: ForgettingProbe, every: int, categories: list[str], max_drop: float) -> None:
        self.probe, self.every, self.categories, self.max_drop = probe, every, categories, max_drop
        self.kept: dict | None = None
        self.kept_step = 0
        self.stopped_at: int | None = None
        self.reason: str | None = None
        self.restored: str | None = None

    def on_steps_start(self, model: torch.nn.Module, state: TrainState) -> None:
        with state.whole_model(model) as whole:
            self.probe.start(whole, state)
            if self.kept is None:  # a resumed run has the weights of its last check back (load_state_dict)
                self._keep(whole, state.outcome.steps)

    def state_dict(self) -> dict:
        # The weights of the last check within the budget: a resumed run restores these, not the
        # weights it resumed from, which no check may have seen.
        return {"kept": self.kept, "kept_step": self.kept_step}

    def load_state_dict(self, state: dict) -> None:
        self.kept, self.kept_step = state["kept"], state["kept_step"]

    def on_step_end(self, step: int, model: torch.nn.Module, state: TrainState) -> None:
        if step % self.every:
            return
        with state.whole_model(model) as whole:
            reason = over_budget(self.probe.deltas(whole, step), self.categories, self.max_drop, step)
            if reason:
                self.stopped_at, self.reason = step, reason
                state.stop(f"forgetting budget: {self.reason}")
            else:
                self._keep(whole, step)

    def on_train_end(self, model: torch.nn.Module, state: TrainState) -> None:
        if self.stopped_at is None:
            return
        best = state.outcome.best_step
        if best is not None and best <= self.kept_step:
            self.restored = f"best dev checkpoint (step {best})"
            return
        model.load_state_dict(self.kept, strict=False)
        self.restored = f"last check within the budget (step {self.kept_step})"

    def _keep(self, model: torch.nn.Module, step: int) -> None:
        # The trainable weights only (the rest does not change): for LoRA, the adapters.
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.kept = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in trainable}
        self.kept_step = step


class ForgettingBudget(Mitigation):
    """``finetune.forgetting_budget``: stop before forgetting exceeds ``max_drop``."""

    name = "forgetting_budget"
    key = "finetune.forgetting_budget"
    settings_type = BudgetConfig
    default = BudgetConfig()
    short = "budget"
    needs_forgetting_probe = True

    @classmethod
    def enabled(cls, settings: BudgetConfig) -> bool:
        return settings.max_drop is not None

    @classmethod
    def label(cls, settings: BudgetConfig) -> str:
        if settings.max_drop is None:
            return "none"
        return f"{settings.max_drop:g}" + (f"@{settings.category}" if settings.category else "")

    def prepare(self, context: TrialContext) -> None:
        probe = context.forgetting_probe
        if probe is None:
            raise UsageError("finetune.forgetting_budget: needs the sampled evaluation during training")
        watched = watched_categories(self.settings.category, probe.categories)
        self.stop = BudgetStop(probe, context.check_every, watched, self.settings.max_drop)

    def callbacks(self) -> list[TrainCallback]:
        return [self.stop]

    def after_training(self, model: torch.nn.Module, outcome: TrainOutcome, evaluation: Evaluation) -> dict:
        stop = self.stop
        return {"max_drop": self.settings.max_drop, "metric": self.settings.metric, "categories": stop.categories,
                "every": stop.every, "stopped": stop.stopped_at is not None, "stopped_at": stop.stopped_at,
                "reason": stop.reason, "kept": stop.restored}
