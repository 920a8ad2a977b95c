"""Cross-lingual alignment as an auxiliary training objective ("mid-align", Liu & Niehues 2025).

A sentence and its pivot-language translation, each fed without any prompt, should have close
mean-pooled states after a middle layer. The loss is InfoNCE on cosine similarity: the non-pivot
sentence is the anchor and must retrieve its own translation among the pivot sentences of the
batch (in-batch negatives); gradients flow through both sides. Pairs come from the training
split, for every study language, including languages that the fine-tuning never sees: that is
where the transfer to unseen languages comes from.

The training loop asks this object what each optimizer step is (:meth:`AlignmentObjective.kind`)
and for the alignment loss of a step (:meth:`AlignmentObjective.loss`):

- ``alternate``: translation and alignment steps alternate, T A T A …, so the number of optimizer
  steps doubles (as the authors train: each translation step is followed by an alignment step);
- ``weighted``: every step optimises ``translation + weight × alignment``.

The alignment batch of a step is a pure function of (seed, step), like the translation batches,
so a resumed run sees the same pairs. The forward stops at the alignment layer
(:func:`~mtforget.models.hidden.layer_states`), so only parameters at or below it receive
alignment gradients.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from mtforget.data.corpus import Segment
from mtforget.data.languages import normalize_code
from mtforget.errors import UsageError
from mtforget.models.hidden import encode_sentences, is_encoder_decoder, layer_states, resolve_layer
from mtforget.train.loop import StepBatches

if TYPE_CHECKING:
    from mtforget.study.config import AlignmentConfig

# What one optimizer step trains on.
StepKind = Literal["translation", "alignment", "both"]


@dataclass(frozen=True)
class AlignmentPair:
    """A sentence in ``lang`` and its translation in the pivot language (from segment ``id``)."""

    lang: str
    text: str
    pivot_text: str
    id: str


def sample_alignment_pairs(segments: tuple[Segment, ...] | list[Segment], languages: list[str], pivot: str,
                           per_language: int, seed: int) -> list[AlignmentPair]:
    """Up to ``per_language`` pairs ``(lang, pivot)`` for every language but the pivot.

    Each language draws from its own shuffle, seeded by (seed, language), so adding a language to
    the list does not change the pairs of the others.
    """
    pairs: list[AlignmentPair] = []
    for lang in languages:
        if lang == pivot:
            continue
        pool = [AlignmentPair(lang, s.translation[lang], s.translation[pivot], s.id)
                for s in segments if lang in s.translation and pivot in s.translation]
        random.Random(f"{seed}:{lang}").shuffle(pool)
        pairs.extend(pool[:per_language])
    return pairs


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float,
             groups: list[str] | None = None) -> torch.Tensor:
    """Mean InfoNCE loss of ``anchors[i]`` retrieving ``candidates[i]`` by cosine similarity.

    ``groups`` (e.g. segment ids) marks candidates that are the same sentence: such a candidate is
    not a negative for another anchor of its group (two languages of one segment in a batch share
    the pivot sentence, and pushing an anchor away from its own translation would be wrong).
    """
    logits = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T / temperature
    if groups is not None:
        same = torch.tensor([[a == b for b in groups] for a in groups], device=logits.device)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(anchors), device=logits.device))


@dataclass
class AlignmentObjective:
    """The alignment loss, its pairs and its schedule; handed to :func:`mtforget.train.loop.train`."""

    pairs: list[AlignmentPair]
    tokenizer: object
    encoder_decoder: bool
    layer: int  # 1-based: the output of this layer (of the encoder, or of the decoder-only stack)
    temperature: float = 0.1
    schedule: Literal["alternate", "weighted"] = "alternate"
    weight: float = 1.0  # scales the alignment loss (weighted: its share in the sum; alternate: its steps)
    batch_size: int = 32  # pairs per alignment batch: 2 × this many sentences in one forward
    seed: int = 0
    max_length: int = 128

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("no alignment pairs")
        if self.schedule not in ("alternate", "weighted"):
            raise ValueError(f"unknown alignment schedule {self.schedule!r}")

    @classmethod
    def from_config(cls, config: AlignmentConfig, model: torch.nn.Module, tokenizer,
                    segments: tuple[Segment, ...] | list[Segment], languages: list[str],
                    pivot: str, batch_size: int, seed: int, max_length: int = 128) -> AlignmentObjective:
        """The objective a study's ``finetune.alignment`` describes, over the training ``segments``.

        Raises :class:`UsageError` naming the key for a language outside the study or a layer the
        model does not have.
        """
        chosen = [normalize_code(lang) for lang in config.languages] if config.languages else languages
        for lang in chosen:
            if lang not in languages:
                raise UsageError(f"finetune.alignment.languages: {lang!r} is not a study language "
                                 f"(they are {', '.join(languages)})")
        try:
            layer = resolve_layer(model, config.layer)
        except ValueError as exc:
            raise UsageError(f"finetune.alignment.layer: {exc}") from None
        pairs = sample_alignment_pairs(segments, chosen, pivot, config.pairs_per_language, seed)
        if not pairs:
            raise UsageError(f"finetune.alignment: the training split has no pair of {pivot} with "
                             f"{', '.join(lang for lang in chosen if lang != pivot) or 'another language'}")
        return cls(pairs, tokenizer, is_encoder_decoder(model), layer, config.temperature, config.schedule,
                   config.weight, config.batch_size or batch_size, seed, max_length)

    @property
    def label(self) -> str:
        """How results name this objective: ``L8-alternate`` (layer 8, alternating schedule)."""
        return f"L{self.layer}-{self.schedule}"

    def total_steps(self, translation_steps: int) -> int:
        """Optimizer steps for ``translation_steps`` translation batches."""
        return 2 * translation_steps if self.schedule == "alternate" else translation_steps

    def translation_steps_done(self, steps: int) -> int:
        """Translation batches consumed by the first ``steps`` optimizer steps."""
        return (steps + 1) // 2 if self.schedule == "alternate" else steps

    def kind(self, step: int) -> StepKind:
        """What optimizer step ``step`` (1-based) trains on: alternate has alignment on even steps."""
        if self.schedule == "weighted":
            return "both"
        return "translation" if step % 2 else "alignment"

    def batch(self, step: int) -> list[AlignmentPair]:
        """The pairs of optimizer step ``step``: a pure function of (seed, step)."""
        index = step // 2 - 1 if self.schedule == "alternate" else step - 1
        # The same epoch-permutation scheme as the translation batches (see StepBatches).
        order = next(iter(StepBatches(len(self.pairs), self.batch_size, self.seed, index, index + 1)))
        return [self.pairs[i] for i in order]

    def loss(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        """InfoNCE of step ``step``'s batch at the alignment layer (unweighted)."""
        pairs = self.batch(step)
        texts = [p.text for p in pairs] + [p.pivot_text for p in pairs]
        batch = encode_sentences(self.tokenizer, texts, self.encoder_decoder, self.max_length)
        states = layer_states(model, batch, [self.layer])[self.layer]
        # Both sides in one forward: one padded batch instead of two, and gradients through both.
        return info_nce(states[: len(pairs)], states[len(pairs):], self.temperature, [p.id for p in pairs])
