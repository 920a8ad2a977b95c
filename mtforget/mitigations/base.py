"""What a mitigation is: a small protocol that the trial recipe calls at fixed points.

A mitigation is one class with its settings' key and type, registered in
:data:`mtforget.mitigations.MITIGATIONS`. The study config gains its key from the registry, the
trial recipe runs every mitigation that is on, and results name it in their own column; no core
module names a mitigation. The recipe calls, in order:

1. :meth:`Mitigation.prepare` before fine-tuning, with the base model and the trial's data;
2. :meth:`Mitigation.extra_examples`: examples mixed into the fine-tuning examples;
3. :meth:`Mitigation.callbacks`: training-loop callbacks (a term of the loss, steps of its own);
4. :meth:`Mitigation.after_training` once the fine-tuned model is evaluated: analyses (e.g.
   evaluating other weights) and what ``result.json`` keeps about the mitigation.

Several mitigations combine: their examples are concatenated, their callbacks all run (at most
one may interleave steps of its own), their analyses are kept side by side.

Mitigation modules import PyTorch only inside their hooks: the study config reads the registry,
and a process that only schedules trials never loads PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mtforget.data.categories import NO_EXPOSURE, Exposure
from mtforget.data.corpus import Segment
from mtforget.data.splits import Example

if TYPE_CHECKING:  # at run time only annotations name them: the registry loads without PyTorch
    import torch

    from mtforget.evaluate.during_training import ForgettingProbe
    from mtforget.train.callbacks import TrainCallback
    from mtforget.train.loop import TrainOutcome


@dataclass(frozen=True)
class TrialContext:
    """What a mitigation may read of its trial before fine-tuning."""

    model: torch.nn.Module  # the base model, on its device, before adapters are added
    tokenizer: Any
    train_segments: tuple[Segment, ...]  # the corpus's training split
    languages: list[str]  # every study language
    pivot: str  # English, else the corpus's most frequent language
    directions: list[tuple[str, str]]  # the fine-tuning directions
    examples: list[Example]  # the fine-tuning examples
    batch_size: int  # finetune.batch_size
    max_length: int  # finetune.max_length
    seed: int
    is_main: bool  # the process that evaluates (the only one, unless under ``accelerate launch``)
    # Scores a fixed sample of directions on the model as it trains (None when the trial does not
    # sample, e.g. under a multi-process launch): see mtforget.evaluate.during_training.
    forgetting_probe: ForgettingProbe | None = None
    check_every: int = 0  # steps between sampled checks: eval.during_training.every, else finetune.eval_every


@dataclass(frozen=True)
class Evaluation:
    """The trial's scores after fine-tuning, and how to score other weights the same way."""

    base: dict  # per direction, as evaluate_directions returns it
    finetuned: dict
    evaluate: Callable[[torch.nn.Module, str], dict]  # (model, progress label) -> scores per direction
    category_means: Callable[[dict], dict]  # scores per direction -> per category, vs the base


class Mitigation:
    """One mitigation of forgetting; subclasses set the class attributes and override what they use."""

    name: ClassVar[str]  # registry key and results.csv column
    key: ClassVar[str]  # dotted study key of its settings, e.g. "finetune.replay"
    settings_type: ClassVar[Any]  # the pydantic type of those settings
    default: ClassVar[Any]  # their value when a study does not set them (the mitigation is off)
    short: ClassVar[str]  # how condition labels name it: "align=mid-alternate"
    # False for analyses that leave the fine-tuned model and its scores as they are (interpolation):
    # such a mitigation stays out of condition labels, so its trials pair with those without it.
    changes_training: ClassVar[bool] = True
    # Whether its settings enter a trial's identity while it is off. A mitigation added later
    # leaves them out, so adding it to mtforget keeps every finished trial.
    identity_when_off: ClassVar[bool] = False
    # Whether it reads the forgetting sampled during training (``TrialContext.forgetting_probe``):
    # the trial then samples even when ``eval.during_training.every`` is 0.
    needs_forgetting_probe: ClassVar[bool] = False
    # True when its training term reads the whole model, which FSDP shards over processes: a study
    # launched with FSDP that turns it on is refused up front, naming :attr:`key`.
    needs_whole_model: ClassVar[bool] = False
    # True when it can train on more than the fine-tuning directions (see :meth:`exposure`).
    exposes: ClassVar[bool] = False

    @classmethod
    def enabled(cls, settings: Any) -> bool:
        """Whether these settings turn the mitigation on."""
        return bool(settings)

    @classmethod
    def label(cls, settings: Any) -> str:
        """Its value in results.csv and condition labels: ``none`` when off."""
        return f"{settings:g}" if cls.enabled(settings) else "none"

    @classmethod
    def id_tag(cls, settings: Any) -> str:
        """What the readable part of a trial id appends when it is on."""
        return f"{cls.short}-{cls.label(settings)}"

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def exposure(self, context: TrialContext) -> Exposure:
        """What it trains on beyond the fine-tuning directions (directions replayed, languages
        copied or aligned), which decides the categories and exposure of the evaluated
        directions. Called before :meth:`prepare`, and before the forgetting probe exists."""
        return NO_EXPOSURE

    def prepare(self, context: TrialContext) -> None:
        """Called before fine-tuning, with the base model."""

    def extra_examples(self) -> list[Example]:
        """Examples to fine-tune on besides the trial's own."""
        return []

    def callbacks(self) -> list[TrainCallback]:
        """Training-loop callbacks."""
        return []

    def trained_layer(self) -> int | None:
        """A layer this mitigation trains in particular (1-based), which representation plots mark."""
        return None

    def after_training(self, model: torch.nn.Module, outcome: TrainOutcome, evaluation: Evaluation) -> dict:
        """Called on the evaluating process with the fine-tuned model (adapters merged); returns
        what ``result.json`` keeps about this mitigation."""
        return {}


def settings_of(config: Any, key: str) -> Any:
    """The value at dotted ``key`` of a study config (pydantic models, attribute by attribute)."""
    node = config
    for part in key.split("."):
        node = getattr(node, part)
    return node
