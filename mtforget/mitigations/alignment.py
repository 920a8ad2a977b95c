"""Cross-lingual alignment as a mitigation (``finetune.alignment``): the objective of
:mod:`mtforget.train.alignment` trained beside translation.

Light at import (the study config reads the registry in a process that never loads PyTorch): the
objective is imported when a trial prepares it.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mtforget.data.categories import Exposure
from mtforget.data.languages import normalize_code
from mtforget.errors import UsageError
from mtforget.mitigations.base import Evaluation, Mitigation, TrialContext
from mtforget.train.callbacks import RunningMean, TrainCallback

if TYPE_CHECKING:
    import torch

    from mtforget.train.alignment import AlignmentObjective
    from mtforget.train.loop import TrainOutcome


class AlignmentConfig(BaseModel):
    """Cross-lingual alignment as an auxiliary loss (InfoNCE on mean-pooled middle-layer states).

    Pairs (each language with the pivot: English, else the most frequent language) come from the
    training split, for every study language or ``languages``, fine-tuned on or not.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = False
    """Train the alignment loss beside translation."""
    layer: Literal["middle"] | int = "middle"
    """The layer whose output is pooled: `middle` (of the encoder of an encoder-decoder, of the
    decoder stack of a decoder-only model) or a number counted from 1."""
    temperature: float = Field(0.1, gt=0)
    """InfoNCE's temperature."""
    schedule: Literal["alternate", "weighted"] = "alternate"
    """`alternate`: translation and alignment steps take turns (twice the optimizer steps);
    `weighted`: translation + weight × alignment in every step."""
    weight: float = Field(1.0, gt=0)
    """The alignment loss's weight (`weighted`), or the scale of its steps (`alternate`)."""
    pairs_per_language: int = Field(500, ge=1)
    """Parallel pairs per language (each with the pivot), from the training split."""
    batch_size: int | None = Field(None, ge=2)
    """Pairs per alignment batch; unset: `finetune.batch_size`."""
    languages: list[str] | None = None
    """The languages aligned with the pivot, fine-tuned on or not; unset: every study language."""

    @field_validator("layer")
    @classmethod
    def _layer(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError("a layer number counts from 1 (the first layer's output), or say 'middle'")
        return value


class AlignmentCallback(TrainCallback):
    """The objective in the training loop: its schedule, its weighted loss on its steps, and the
    mean unweighted loss at each log point (``align_loss``)."""

    needs_whole_model = True  # the alignment pass stops midway through the unwrapped model

    def __init__(self, objective: AlignmentObjective) -> None:
        self.objective = objective
        self.schedule = objective
        self.loss_mean = RunningMean()

    def extra_loss(self, model: torch.nn.Module, step: int) -> torch.Tensor | None:
        if self.objective.kind(step) == "translation":
            return None
        loss = self.objective.loss(model, step)
        self.loss_mean.add(loss)
        return self.objective.weight * loss

    def logged(self) -> dict[str, float]:
        mean = self.loss_mean.pop()
        return {} if mean is None else {"align_loss": mean}


class Alignment(Mitigation):
    """``finetune.alignment``: the alignment objective trained beside translation."""

    needs_whole_model = True
    exposes = True
    name = "alignment"
    key = "finetune.alignment"
    settings_type = AlignmentConfig
    default = AlignmentConfig()
    short = "align"
    identity_when_off = True  # studies finished before mitigations were plug-ins keep their trials

    @classmethod
    def enabled(cls, settings: AlignmentConfig) -> bool:
        return settings.enabled

    @classmethod
    def label(cls, settings: AlignmentConfig) -> str:
        """``none``, or layer and schedule: ``mid-alternate``, ``L1-weighted``."""
        if not settings.enabled:
            return "none"
        return f"{'mid' if settings.layer == 'middle' else f'L{settings.layer}'}-{settings.schedule}"

    def _languages(self, context: TrialContext) -> list[str]:
        """The languages aligned with the pivot: ``languages``, or every study language."""
        config, languages = self.settings, context.languages
        chosen = [normalize_code(lang) for lang in config.languages] if config.languages else languages
        for lang in chosen:
            if lang not in languages:
                raise UsageError(f"finetune.alignment.languages: {lang!r} is not a study language "
                                 f"(they are {', '.join(languages)})")
        return chosen

    def exposure(self, context: TrialContext) -> Exposure:
        """The aligned languages and the pivot they are aligned with."""
        return Exposure(aligned=frozenset([*self._languages(context), context.pivot]))

    def prepare(self, context: TrialContext) -> None:
        """Builds the objective; raises :class:`UsageError` naming the key for a language outside
        the study or a layer the model does not have."""
        from mtforget.models.hidden import is_encoder_decoder, resolve_layer
        from mtforget.train.alignment import AlignmentObjective, sample_alignment_pairs

        config, pivot = self.settings, context.pivot
        chosen = self._languages(context)
        try:
            layer = resolve_layer(context.model, config.layer)
        except ValueError as exc:
            raise UsageError(f"finetune.alignment.layer: {exc}") from None
        pairs = sample_alignment_pairs(context.train_segments, chosen, pivot, config.pairs_per_language,
                                       context.seed)
        if not pairs:
            raise UsageError(f"finetune.alignment: the training split has no pair of {pivot} with "
                             f"{', '.join(lang for lang in chosen if lang != pivot) or 'another language'}")
        self.pivot = pivot
        self.objective = AlignmentObjective(pairs, context.tokenizer, is_encoder_decoder(context.model), layer,
                                            config.temperature, config.schedule, config.weight,
                                            config.batch_size or context.batch_size, context.seed,
                                            context.max_length)

    def callbacks(self) -> list[TrainCallback]:
        return [AlignmentCallback(self.objective)]

    def trained_layer(self) -> int | None:
        return self.objective.layer

    def after_training(self, model: torch.nn.Module, outcome: TrainOutcome, evaluation: Evaluation) -> dict:
        objective = self.objective
        return {
            "label": objective.label, "layer": objective.layer, "schedule": objective.schedule,
            "temperature": objective.temperature, "weight": objective.weight, "batch_size": objective.batch_size,
            "pivot": self.pivot, "pairs": len(objective.pairs), "languages": sorted({p.lang for p in objective.pairs}),
            "pairs_per_language": dict(Counter(p.lang for p in objective.pairs)),
            "loss_curve": [{"step": h["step"], "align_loss": h["align_loss"]}
                           for h in outcome.history if "align_loss" in h],
            "final_loss": outcome.extra_losses.get("align_loss"),
        }
