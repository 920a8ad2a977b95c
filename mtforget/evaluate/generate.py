"""Batched greedy translation through a model's language control."""

from __future__ import annotations


def translate(
    model,
    control,
    texts: list[str],
    src_lang: str,
    tgt_lang: str,
    batch_size: int = 128,
    max_new_tokens: int = 64,
) -> list[str]:
    """Translate ``texts`` from ``src_lang`` to ``tgt_lang`` greedily, in the input order.

    ``control`` is a :class:`~mtforget.models.language.LanguageTokens` (encoder-decoder) or an
    :class:`~mtforget.models.instruction.InstructionControl` (decoder-only). Sentences are sorted
    by length before batching so each batch pads little; ``batch_size=1`` gives the per-sentence
    loop that benchmarks compare against.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, text in zip(idx, control.generate(model, [texts[i] for i in idx], src_lang, tgt_lang, max_new_tokens)):
            outputs[i] = text
    return outputs
