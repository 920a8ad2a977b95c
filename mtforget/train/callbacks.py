"""Hooks into the training loop: what a mitigation (or a test, or a monitor) adds to training
without the loop naming it.

The loop (:func:`mtforget.train.loop.train`) calls every callback at fixed points of each
optimizer step. Every hook has a default that does nothing, so a callback overrides only what it
needs:

- :meth:`TrainCallback.on_train_start` sees the model before any step (and before a resumed
  run's state is loaded, so it sees the weights the run started from);
- :meth:`TrainCallback.extra_loss` adds a term to the step's loss (an auxiliary objective, a
  penalty), already weighted; :meth:`TrainCallback.logged` says what to log about it;
- :meth:`TrainCallback.on_loss` sees the step's whole loss before it is checked and
  back-propagated, and may replace it (fault injection);
- :meth:`TrainCallback.on_steps_start` sees the model once the run is ready (resumed or not),
  before its first step;
- :meth:`TrainCallback.on_step_end` runs after the optimizer step, and may stop the run
  (:meth:`TrainState.stop`);
- :meth:`TrainCallback.on_dev_check` sees each dev-loss check;
- :meth:`TrainCallback.on_train_end` sees the final model, after the best dev weights are back;
- :meth:`TrainCallback.state_dict` / :meth:`TrainCallback.load_state_dict` carry a callback's own
  state through a resumable checkpoint.

Hooks from ``on_steps_start`` on get the run's :class:`TrainState`: its outcome (whose history is
saved with every checkpoint, so what a callback records there survives a resume) and the tokens
trained on so far. Under FSDP the model the hooks get during training is sharded; a hook that
translates or reads every weight does it inside :meth:`TrainState.whole_model`.

A callback may also own optimizer steps of its own, interleaved with the translation steps (the
alternating schedule of cross-lingual alignment): it then provides a :class:`StepSchedule`. At
most one callback of a run may do so.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # mitigations subclass TrainCallback in processes that never load PyTorch
    import torch

# What one optimizer step trains on: a translation batch, the schedule owner's own objective, or both.
StepKind = Literal["translation", "own", "both"]


class StepSchedule(Protocol):
    """How a callback's own steps interleave with the translation steps."""

    def total_steps(self, translation_steps: int) -> int:
        """Optimizer steps for ``translation_steps`` translation batches."""

    def translation_steps_done(self, steps: int) -> int:
        """Translation batches consumed by the first ``steps`` optimizer steps."""

    def kind(self, step: int) -> StepKind:
        """What optimizer step ``step`` (1-based) trains on."""


@dataclass
class TrainState:
    """What callbacks see of a run between steps."""

    outcome: Any  # the run's TrainOutcome (steps so far, history, best dev step)
    total_steps: int
    count_tokens: Callable[[], int] = field(repr=False)
    stop_reason: str | None = None
    # Under FSDP: the whole model with the current weights, gathered on every process for a block.
    gather: Callable[[], AbstractContextManager] | None = field(default=None, repr=False)

    def whole_model(self, model: torch.nn.Module) -> AbstractContextManager[torch.nn.Module]:
        """A block in which the model the hooks got (``model``) can be read whole: itself, or under
        FSDP the whole weights gathered on every process (a collective: every process enters it
        at the same points)."""
        return self.gather() if self.gather is not None else nullcontext(model)

    def tokens(self) -> int:
        """Source and target tokens of the translation batches so far (padding excluded); it
        waits for the device, so call it at checks, not every step."""
        return self.count_tokens()

    def stop(self, reason: str) -> None:
        """End the run after this step; ``reason`` is kept in the outcome."""
        self.stop_reason = reason


class TrainCallback:
    """A training-loop hook; see the module docstring for when each method runs."""

    # True when extra_loss reads the whole model's parameters: sharded engines (FSDP, DeepSpeed)
    # do not hold them in one process, so the loop refuses to run such a callback under them.
    needs_whole_model: bool = False
    # The interleaving of this callback's own steps, or None when it adds to translation steps only.
    schedule: StepSchedule | None = None

    def on_train_start(self, model: torch.nn.Module) -> None:
        """Called once, with the unwrapped model, before the first step."""

    def extra_loss(self, model: torch.nn.Module, step: int) -> torch.Tensor | None:
        """A weighted term to add to step ``step``'s loss (the unwrapped model), or None."""
        return None

    def logged(self) -> dict[str, float]:
        """Values to log at a log point (means since the last one); emptied by the call."""
        return {}

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss of step ``step`` to check and back-propagate (the same one by default)."""
        return loss

    def on_steps_start(self, model: torch.nn.Module, state: TrainState) -> None:
        """Called once before the first step of this call (``state.outcome.steps`` is 0 unless the
        run resumed), with the unwrapped model."""

    def on_step_end(self, step: int, model: torch.nn.Module, state: TrainState) -> None:
        """Called after the optimizer step of ``step``, with the unwrapped model."""

    def on_dev_check(self, step: int, model: torch.nn.Module, dev_loss: float, state: TrainState) -> None:
        """Called after each dev-loss check."""

    def on_train_end(self, model: torch.nn.Module, state: TrainState) -> None:
        """Called once training ends, with the final weights in ``model`` (unwrapped)."""

    def state_dict(self) -> dict:
        """What this callback must get back when a run resumes (saved with every resumable
        checkpoint when a callback overrides it, and given to :meth:`load_state_dict` before
        :meth:`on_steps_start`)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take back what :meth:`state_dict` returned when the checkpoint was saved."""

    @property
    def checkpointed(self) -> bool:
        """Whether this callback has state of its own to save with a checkpoint."""
        return type(self).state_dict is not TrainCallback.state_dict


class TranslationOnly:
    """The schedule without interleaved steps: every optimizer step is a translation step."""

    def total_steps(self, translation_steps: int) -> int:
        return translation_steps

    def translation_steps_done(self, steps: int) -> int:
        return steps

    def kind(self, step: int) -> StepKind:
        return "translation"


def step_schedule(callbacks: list[TrainCallback]) -> StepSchedule:
    """The schedule of the one callback that interleaves steps of its own, or translation only."""
    owners = [c for c in callbacks if c.schedule is not None]
    if len(owners) > 1:
        raise ValueError(f"{len(owners)} callbacks interleave steps of their own; at most one can "
                         f"({', '.join(type(c).__name__ for c in owners)})")
    return owners[0].schedule if owners else TranslationOnly()


class RunningMean:
    """The mean of the values added since the last :meth:`pop`, kept on the device: a callback's
    ``logged`` syncs with the device only at log points."""

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self._n = 0

    def add(self, value: torch.Tensor) -> None:
        """Add a detached copy of ``value``."""
        self._sum = value.detach() if self._sum is None else self._sum + value.detach()
        self._n += 1

    def pop(self) -> float | None:
        """The mean since the last call (None when nothing was added), and start again."""
        if not self._n:
            return None
        mean = (self._sum / self._n).item()
        self._sum, self._n = None, 0
        return mean
