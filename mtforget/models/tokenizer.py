"""Subword tokenizers trained on a corpus, with one language token per language."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mtforget.models.language import language_token

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, the M2M-100 layout


def train_tokenizer(texts: Iterable[str], languages: list[str], vocab_size: int,
                    extra_special_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A BPE tokenizer over all languages, sentencepiece-style (``▁`` marks a word start).

    Metaspace pre-tokenisation keeps every script intact (byte-level BPE would split Cyrillic
    letters into bytes) and decodes back to the original spacing. ``languages`` get one language
    token each (encoder-decoder bases); ``extra_special_tokens`` are kept whole too (chat markers).
    """
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    lang_tokens = [language_token(code) for code in languages] + list(extra_special_tokens)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + lang_tokens, show_progress=False
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=lang_tokens,
    )
