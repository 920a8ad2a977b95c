"""What the rest of the code needs from a language control: the object that tells a model which
direction to translate in, encodes training batches and generates translations.

Two controls implement it: :class:`~mtforget.models.language.LanguageTokens` (encoder-decoders
steered by language tokens) and :class:`~mtforget.models.instruction.InstructionControl`
(decoder-only models steered by an instruction, in a chat template or a plain prompt).
:func:`~mtforget.models.loading.make_control` picks the one that fits a model; the training loop,
the generation engines and the evaluation see only this protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class BatchEncoder(Protocol):
    """What the training loop takes batches from: a control (translation examples), or
    a recipe's own encoder of other examples (the instruction-tuning tasks of a tiny base)."""

    def batch(self, examples: list[Any], multiple: int = 1) -> dict[str, torch.Tensor]:
        """A padded training batch of ``examples`` (``input_ids``, ``attention_mask``, ``labels``),
        its width rounded up to a multiple of ``multiple``."""
        ...


class Control(BatchEncoder, Protocol):
    """A language control: how one model is told the direction of a translation. Its ``batch``
    encodes :class:`~mtforget.data.splits.Example` s."""

    tokenizer: Any
    max_length: int  # longest sequence it encodes: a source or target, or a prompt with its answer

    @property
    def encoder_decoder(self) -> bool:
        """Whether the control steers an encoder-decoder (else a decoder-only model)."""
        ...

    @property
    def known_languages(self) -> list[str]:
        """Languages the control has checked the model can be told about, in the order it checked."""
        ...

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end a generated translation."""
        ...

    @property
    def description(self) -> str:
        """How results name the control: the language-token convention (``nllb``, ``m2m``...),
        ``chat template`` or ``plain prompt``."""
        ...

    def has(self, code: str) -> bool:
        """Whether the control can tell the model about language ``code``."""
        ...

    def model_inputs(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[list[int]]:
        """The token ids the model reads to translate each text (encoder inputs, or prompts):
        exactly what :meth:`generate_rows` feeds it, so other engines can decode from them."""
        ...

    def decoder_prefix(self, tgt_lang: str) -> list[int]:
        """Token ids the decoder must emit first, after its start token, to translate into
        ``tgt_lang`` (empty where the target is named elsewhere)."""
        ...

    def clean(self, text: str) -> str:
        """The scored form of a decoded output."""
        ...

    def generate(self, model: torch.nn.Module, texts: list[str], src_lang: str, tgt_lang: str,
                 max_new_tokens: int, min_new_tokens: int = 0) -> list[str]:
        """Greedy translations of one batch, all in one direction."""
        ...

    def generate_rows(self, model: torch.nn.Module, texts: list[str], src_langs: list[str], tgt_langs: list[str],
                      max_new_tokens: int, min_new_tokens: int = 0) -> list[str]:
        """Greedy translations of one batch whose rows may each go in another direction."""
        ...
