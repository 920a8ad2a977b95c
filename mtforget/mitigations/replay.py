"""Replay as a mitigation (``finetune.replay``): examples of other directions, or copies, mixed
into the fine-tuning data (sampled by :mod:`mtforget.data.replay`)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mtforget.data.categories import Exposure, parse_direction
from mtforget.data.languages import normalize_code
from mtforget.data.replay import ReplaySource, replay_examples, replay_size
from mtforget.errors import UsageError
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
    """`other_directions` (pairs of directions not fine-tuned on) or `copies` (monolingual
    copies)."""
    directions: list[str] | None = None
    """`other_directions`: the directions to rehearse, e.g. `[xe-xf, xf-xe]` (each then in
    category `replayed`; the others stay unseen); unset: every direction not fine-tuned on."""
    languages: list[str] | None = None
    """`copies`: the languages to copy; unset: every study language."""

    @field_validator("directions")
    @classmethod
    def _directions(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one direction like 'xe-xf', or remove the key")
            for d in value:
                parse_direction(d)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ReplayConfig:
        if self.directions is not None and self.source != "other_directions":
            raise ValueError("directions: replayed directions need source: other_directions (copies take languages)")
        if self.languages is not None and self.source != "copies":
            raise ValueError("languages: copied languages need source: copies (other directions take directions)")
        return self


class Replay(Mitigation):
    """``finetune.replay``: pairs of other directions (or copies) mixed into the fine-tuning data."""

    name = "replay"
    key = "finetune.replay"
    settings_type = ReplayConfig
    default = ReplayConfig()
    short = "replay"
    identity_when_off = True  # studies finished before mitigations were plug-ins keep their trials
    exposes = True

    @classmethod
    def enabled(cls, settings: ReplayConfig) -> bool:
        return bool(settings.fraction)

    @classmethod
    def label(cls, settings: ReplayConfig) -> str:
        """``none``, ``0.25`` (other directions), ``copies0.25``, and what a chosen subset holds:
        ``0.25 (34 directions)``, ``copies0.25 (xe,xf)``."""
        if not settings.fraction:
            return "none"
        label = f"{'copies' if settings.source == 'copies' else ''}{settings.fraction:g}"
        if settings.directions is not None:
            label += f" ({len(settings.directions)} directions)"
        if settings.languages is not None:
            label += f" ({','.join(settings.languages)})"
        return label

    @classmethod
    def id_tag(cls, settings: ReplayConfig) -> str:
        # The form trial ids had before mitigations were plug-ins: finished trials keep their ids.
        chosen = "-chosen" if settings.directions is not None or settings.languages is not None else ""
        return f"replay{'-copies' if settings.source == 'copies' else ''}{settings.fraction:g}{chosen}"

    def exposure(self, context: TrialContext) -> Exposure:
        """Samples the replayed examples: the directions they hold are ``replayed``, the languages
        copied are exposure."""
        config, languages = self.settings, context.languages
        chosen = None
        if config.directions is not None:
            chosen = [parse_direction(d) for d in config.directions]
            for src, tgt in chosen:
                if src not in languages or tgt not in languages:
                    raise UsageError(f"finetune.replay.directions: {src}-{tgt} is not a direction of the study's "
                                     f"languages ({', '.join(languages)})")
                if (src, tgt) in context.directions:
                    raise UsageError(f"finetune.replay.directions: {src}-{tgt} is a fine-tuning direction")
        if config.languages is not None:
            languages = [normalize_code(lang) for lang in config.languages]
            if unknown := [lang for lang in languages if lang not in context.languages]:
                raise UsageError(f"finetune.replay.languages: {unknown[0]!r} is not a study language "
                                 f"(they are {', '.join(context.languages)})")
        n = replay_size(config.fraction, len(context.examples))
        self.examples = replay_examples(context.train_segments, languages, context.directions, n, config.source,
                                        context.seed, chosen)
        if config.source == "copies":
            return Exposure(copied=frozenset(e.src_lang for e in self.examples))
        return Exposure(replayed=frozenset((e.src_lang, e.tgt_lang) for e in self.examples))

    def prepare(self, context: TrialContext) -> None:
        if not hasattr(self, "examples"):
            self.exposure(context)

    def extra_examples(self) -> list[Example]:
        return self.examples

    def after_training(self, model: torch.nn.Module, outcome: TrainOutcome, evaluation: Evaluation) -> dict:
        return {"source": self.settings.source, "fraction": self.settings.fraction, "examples": len(self.examples),
                "by_direction": dict(Counter(f"{e.src_lang}-{e.tgt_lang}" for e in self.examples))}
