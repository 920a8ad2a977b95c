"""Batched greedy translation with Hugging Face ``generate``."""

from __future__ import annotations

import torch

from mtforget.models.language import LanguageTokens, pad


@torch.no_grad()
def translate(
    model,
    control: LanguageTokens,
    texts: list[str],
    src_lang: str,
    tgt_lang: str,
    batch_size: int = 128,
    max_new_tokens: int = 64,
) -> list[str]:
    """Translate ``texts`` from ``src_lang`` to ``tgt_lang`` greedily, in the input order.

    Sentences are sorted by length before batching so each batch pads little; ``batch_size=1``
    gives the per-sentence loop that benchmarks compare against.
    """
    if not texts:
        return []
    device = next(model.parameters()).device
    encoded = control.encode(texts, [src_lang] * len(texts))
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    tgt_id = control.token_id(tgt_lang)
    outputs: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, attention_mask = pad([encoded[i] for i in idx], control.tokenizer.pad_token_id)
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            forced_bos_token_id=tgt_id,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
        )
        decoded = control.tokenizer.batch_decode(generated, skip_special_tokens=True)
        for i, text in zip(idx, decoded):
            outputs[i] = " ".join(text.split())
    return outputs
