"""Language control for encoder-decoder models steered by language tokens (M2M-100 convention).

The source sentence is ``__src__ tokens </s>`` on the encoder side; the decoder starts from the
decoder start token and is forced to emit ``__tgt__`` first, then the translation. A language the
tokenizer lacks gets a new token, and the model's embeddings are resized to hold it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtforget.data.splits import Example


def language_token(code: str) -> str:
    """The token that names a language: ``__en__``, ``__pt_BR__``."""
    return f"__{code}__"


@dataclass
class LanguageTokens:
    """Encodes examples for a language-token encoder-decoder and names its target tokens."""

    tokenizer: object
    max_length: int = 128

    def token_id(self, code: str) -> int:
        """Id of the language token of ``code``; a KeyError if the tokenizer lacks it."""
        tid = self.tokenizer.convert_tokens_to_ids(language_token(code))
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise KeyError(code)
        return tid

    def has(self, code: str) -> bool:
        """Whether the tokenizer has a token for ``code``."""
        try:
            self.token_id(code)
        except KeyError:
            return False
        return True

    def encode(self, texts: list[str], langs: list[str]) -> list[list[int]]:
        """``__lang__ tokens </s>`` for each text, truncated to ``max_length``.

        The same layout serves sources (encoder input) and targets (labels, which the model
        shifts right behind its decoder start token).
        """
        eos = self.tokenizer.eos_token_id
        lang_ids = {lang: self.token_id(lang) for lang in set(langs)}
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [[lang_ids[lang], *seq[: self.max_length - 2], eos] for seq, lang in zip(ids, langs)]

    def batch(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """A padded training batch (padding to the longest sequence of this batch only)."""
        sources = self.encode([ex.src for ex in examples], [ex.src_lang for ex in examples])
        targets = self.encode([ex.tgt for ex in examples], [ex.tgt_lang for ex in examples])
        input_ids, attention_mask = pad(sources, self.tokenizer.pad_token_id)
        labels, _ = pad(targets, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad(seqs: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence; returns ids and the attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def add_language_tokens(model, tokenizer, codes: list[str]) -> list[str]:
    """Give the tokenizer a token for every language it lacks and resize the model to match.

    New embeddings start at the mean of the existing language tokens' embeddings, so a new
    language begins as "some language" rather than as noise. Returns the codes that were added.
    """
    control = LanguageTokens(tokenizer)
    missing = [c for c in codes if not control.has(c)]
    if not missing:
        return []
    existing = [
        tid
        for tok, tid in tokenizer.get_vocab().items()
        if tok.startswith("__") and tok.endswith("__") and len(tok) > 4
    ]
    tokenizer.add_special_tokens({"additional_special_tokens": [language_token(c) for c in missing]},
                                 replace_additional_special_tokens=False)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        init = emb[existing].mean(0) if existing else emb[:old].mean(0)
        emb[old:] = init
    return missing
