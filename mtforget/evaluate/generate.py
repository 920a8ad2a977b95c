"""Batched greedy translation through a model's language control (Hugging Face ``generate``)."""

from __future__ import annotations

from mtforget.models.instruction import InstructionControl
from mtforget.models.language import LanguageTokens


def model_inputs(control: LanguageTokens | InstructionControl, texts: list[str], src_lang: str,
                 tgt_lang: str) -> list[list[int]]:
    """The token ids the model reads for each text: encoder inputs, or decoder-only prompts.

    These are exactly what ``control.generate`` feeds the model, so their lengths size batches and
    any other engine can decode from the same inputs.
    """
    if isinstance(control, InstructionControl):
        return [control.prompt(text, src_lang, tgt_lang) for text in texts]
    return control.encode_sources(texts, [src_lang] * len(texts), [tgt_lang] * len(texts))


def length_batches(lengths: list[int], max_sentences: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, shortest first.

    A batch holds at most ``max_sentences`` sequences and, when ``max_tokens`` is set, at most
    ``max_tokens`` padded positions (rows × its longest sequence): sorting first keeps padding
    low, and the token budget keeps a batch of long sentences from needing far more memory than a
    batch of short ones. A single sequence longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so lengths[i] is the longest of the batch once it is added.
        too_many = len(current) >= max_sentences
        too_long = max_tokens is not None and current and (len(current) + 1) * lengths[i] > max_tokens
        if too_many or too_long:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def translate(
    model,
    control: LanguageTokens | InstructionControl,
    texts: list[str],
    src_lang: str,
    tgt_lang: str,
    batch_size: int = 128,
    max_new_tokens: int = 64,
    max_batch_tokens: int | None = None,
) -> list[str]:
    """Translate ``texts`` from ``src_lang`` to ``tgt_lang`` greedily, in the input order.

    ``control`` is a :class:`~mtforget.models.language.LanguageTokens` (encoder-decoder) or an
    :class:`~mtforget.models.instruction.InstructionControl` (decoder-only). Sentences are sorted
    by token length before batching so each batch pads little; a batch holds at most
    ``batch_size`` sentences and ``max_batch_tokens`` padded input tokens. ``batch_size=1`` gives
    the per-sentence loop that benchmarks compare against.
    """
    if not texts:
        return []
    lengths = [len(ids) for ids in model_inputs(control, texts, src_lang, tgt_lang)]
    outputs: list[str] = [""] * len(texts)
    for idx in length_batches(lengths, batch_size, max_batch_tokens):
        for i, text in zip(idx, control.generate(model, [texts[i] for i in idx], src_lang, tgt_lang, max_new_tokens)):
            outputs[i] = text
    return outputs
