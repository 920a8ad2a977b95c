"""Replay as a mitigation (``finetune.replay``): examples of other directions, or copies, mixed
into the fine-tuning data (sampled by :mod:`mtforget.data.replay`)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from mtforget.data.replay import ReplaySource, replay_examples, replay_size
from mtforget.data.splits import Example
from mtforget.mitigations.base import Evaluation, Mitigation, TrialContext

if TYPE_CHECKING:
    import torch

    from mtforget.train.loop import TrainOutcome


class ReplayConfig(BaseModel):
    """Replay mixed into the fine-tuning examples: other directions, or monolingual copies."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    fraction: float = Field(0.0, ge=0)
    """Replay examples added, as a share of `finetune.size`; 0: off."""
    source: ReplaySource = "other_directions"
    """`other_directions` (pairs of every direction not fine-tuned on) or `copies` (monolingual
    copies)."""


class Replay(Mitigation):
    """``finetune.replay``: pairs of other directions (or copies) mixed into the fine-tuning data."""

    name = "replay"
    key = "finetune.replay"
    settings_type = ReplayConfig
    default = ReplayConfig()
    short = "replay"
    identity_when_off = True  # studies finished before mitigations were plug-ins keep their trials

    @classmethod
    def enabled(cls, settings: ReplayConfig) -> bool:
        return bool(settings.fraction)

    @classmethod
    def label(cls, settings: ReplayConfig) -> str:
        """``none``, ``0.25`` (other directions) or ``copies0.25``."""
        if not settings.fraction:
            return "none"
        return f"{'copies' if settings.source == 'copies' else ''}{settings.fraction:g}"

    @classmethod
    def id_tag(cls, settings: ReplayConfig) -> str:
        # The form trial ids had before mitigations were plug-ins: finished trials keep their ids.
        return f"replay{'-copies' if settings.source == 'copies' else ''}{settings.fraction:g}"

    def prepare(self, context: TrialContext) -> None:
        n = replay_size(self.settings.fraction, len(context.examples))
        self.examples = replay_examples(context.train_segments, context.languages, context.directions, n,
                                        self.settings.source, context.seed)

    def extra_examples(self) -> list[Example]:
        return self.examples

    def after_training(self, model: torch.nn.Module, outcome: TrainOutcome, evaluation: Evaluation) -> dict:
        return {"source": self.settings.source, "fraction": self.settings.fraction, "examples": len(self.examples),
                "by_direction": dict(Counter(f"{e.src_lang}-{e.tgt_lang}" for e in self.examples))}
