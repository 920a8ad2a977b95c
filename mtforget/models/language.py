"""Language control for encoder-decoder models steered by language tokens.

Each family spells its tokens its own way, and the convention is detected from the tokenizer:

- M2M-100 (and the built-in tiny bases): ``__de__``; NLLB: ``deu_Latn``; mBART-50: ``de_DE``.
  The source is ``<src> tokens </s>``; the decoder is forced to emit ``<tgt>`` first.
- Marian multilingual: ``>>deu<<`` in front of the *source* names the target language; the target
  side carries no language token.

A language the tokenizer lacks gets a new token, and the model's embeddings are resized to hold it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mtforget.data.languages import default_script, iso639_3, mbart_code, nllb_code, split_code
from mtforget.data.splits import Example

CONVENTIONS = ("m2m", "nllb", "mbart", "marian")


def language_token(code: str) -> str:
    """The M2M-100 style token of a language: ``__en__``, ``__pt_BR__``."""
    return f"__{code}__"


def detect_convention(tokenizer) -> str:
    """Which language-token convention a tokenizer follows (M2M-100 when nothing else matches)."""
    vocab = tokenizer.get_vocab()
    if any(tok.startswith(">>") and tok.endswith("<<") for tok in vocab):
        return "marian"
    if "eng_Latn" in vocab:
        return "nllb"
    if "en_XX" in vocab:
        return "mbart"
    return "m2m"


class OneDirectionGeneration:
    """``generate`` for a control whose ``generate_rows`` takes a direction per row."""

    def generate(self, model, texts: list[str], src_lang: str, tgt_lang: str, max_new_tokens: int,
                 min_new_tokens: int = 0) -> list[str]:
        """Greedy translations of one batch of sentences, all in one direction."""
        n = len(texts)
        return self.generate_rows(model, texts, [src_lang] * n, [tgt_lang] * n, max_new_tokens, min_new_tokens)


@dataclass
class LanguageTokens(OneDirectionGeneration):
    """Encodes examples for a language-token encoder-decoder and generates translations."""

    tokenizer: object
    convention: str = "m2m"
    max_length: int = 128
    _ids: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def for_tokenizer(cls, tokenizer, max_length: int = 128) -> LanguageTokens:
        """A control with the convention the tokenizer follows."""
        return cls(tokenizer, detect_convention(tokenizer), max_length)

    @classmethod
    def for_model(cls, model, tokenizer, languages: list[str], names: dict[str, str],
                  max_length: int) -> tuple[LanguageTokens, list[str]]:
        """The control of an encoder-decoder ``model`` and the languages whose tokens it had to add
        (see :func:`add_language_tokens`); ``max_length`` caps the source and the target each.
        ``names`` is for controls that name languages in words: tokens need none."""
        control = cls.for_tokenizer(tokenizer, max_length)
        return control, add_language_tokens(model, control, languages)

    @property
    def encoder_decoder(self) -> bool:
        """Always: language tokens steer encoder-decoders."""
        return True

    def token(self, code: str) -> str:
        """The spelling of ``code``'s language token in this convention."""
        if self.convention == "nllb":
            return nllb_code(code)
        if self.convention == "mbart":
            return mbart_code(code)
        if self.convention == "marian":
            vocab = self.tokenizer.get_vocab()
            for candidate in (f">>{iso639_3(code)}<<", f">>{code}<<"):
                if candidate in vocab:
                    return candidate
            return f">>{iso639_3(code)}<<"
        return self._m2m_token(code)

    def _m2m_token(self, code: str) -> str:
        """``__code__``; for a code in its language's usual script that the vocabulary spells
        without it (M2M-100 writes Simplified Chinese ``__zh__``), the bare language's token."""
        token = language_token(code)
        base, script = split_code(code)
        if script and script == default_script(base) and token not in self.tokenizer.get_vocab():
            bare = language_token(base)
            if bare in self.tokenizer.get_vocab():
                return bare
        return token

    def token_id(self, code: str) -> int:
        """Id of the language token of ``code``; a KeyError if the tokenizer lacks it."""
        if code not in self._ids:
            tid = self.tokenizer.convert_tokens_to_ids(self.token(code))
            if tid is None or tid == self.tokenizer.unk_token_id:
                raise KeyError(code)
            self._ids[code] = tid
        return self._ids[code]

    @property
    def description(self) -> str:
        """The language-token convention (see :class:`~mtforget.models.control.Control`)."""
        return self.convention

    def has(self, code: str) -> bool:
        """Whether the tokenizer has a token for ``code``."""
        try:
            self.token_id(code)
        except KeyError:
            return False
        return True

    def _encode(self, texts: list[str], prefixes: list[int | None]) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [([p] if p is not None else []) + seq[: self.max_length - 2] + [eos] for seq, p in zip(ids, prefixes)]

    def encode_sources(self, texts: list[str], src_langs: list[str], tgt_langs: list[str]) -> list[list[int]]:
        """Encoder inputs: ``<src> tokens </s>`` (Marian: ``>>tgt<< tokens </s>``)."""
        langs = tgt_langs if self.convention == "marian" else src_langs
        return self._encode(texts, [self.token_id(lang) for lang in langs])

    def encode_targets(self, texts: list[str], tgt_langs: list[str]) -> list[list[int]]:
        """Labels: ``<tgt> tokens </s>`` (Marian: ``tokens </s>``); the model shifts them right."""
        if self.convention == "marian":
            return self._encode(texts, [None] * len(texts))
        return self._encode(texts, [self.token_id(lang) for lang in tgt_langs])

    def model_inputs(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[list[int]]:
        """The encoder inputs of ``texts`` in one direction, as :meth:`generate_rows` builds them."""
        n = len(texts)
        return self.encode_sources(texts, [src_lang] * n, [tgt_lang] * n)

    def decoder_prefix(self, tgt_lang: str) -> list[int]:
        """The target language token, which the decoder emits first (Marian: nothing, its target
        is named on the source side)."""
        return [] if self.convention == "marian" else [self.token_id(tgt_lang)]

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end a translation: the end of the sentence."""
        return [self.tokenizer.eos_token_id]

    def clean(self, text: str) -> str:
        """The scored form of a decoded translation: whitespace normalised."""
        return normalize_whitespace(text)

    def batch(self, examples: list[Example], multiple: int = 1) -> dict[str, torch.Tensor]:
        """A padded training batch (padding to the longest sequence of this batch only, rounded up
        to a multiple of ``multiple``)."""
        sources = self.encode_sources([ex.src for ex in examples], [ex.src_lang for ex in examples],
                                      [ex.tgt_lang for ex in examples])
        targets = self.encode_targets([ex.tgt for ex in examples], [ex.tgt_lang for ex in examples])
        return padded_batch(sources, targets, self.tokenizer.pad_token_id, multiple)

    @property
    def known_languages(self) -> list[str]:
        """Codes whose tokens this control has looked up and found (every study language once
        ``make_control`` has checked them), in lookup order."""
        return list(self._ids)

    @torch.no_grad()
    def generate_rows(self, model, texts: list[str], src_langs: list[str], tgt_langs: list[str],
                      max_new_tokens: int, min_new_tokens: int = 0) -> list[str]:
        """Greedy translations of one batch whose rows may each go in another direction.

        Rows of different targets share a batch because each row carries its own target: Marian
        names it on the source side; the other conventions start each row's decoder with the
        decoder start token and that row's language token (``forced_bos_token_id`` would be one
        id for the whole batch). The language token counts as the first new token, so
        ``max_new_tokens`` bounds the same output length as forcing it would.
        """
        device = next(model.parameters()).device
        encoded = self.encode_sources(texts, src_langs, tgt_langs)
        input_ids, attention_mask = pad(encoded, self.tokenizer.pad_token_id)
        prefix = {}
        if self.convention != "marian":
            start = decoder_start_token_id(model)
            rows = torch.tensor([[start, self.token_id(lang)] for lang in tgt_langs], dtype=torch.long)
            if max_new_tokens <= 1:  # room for the language token only
                return [self.clean(t) for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]
            prefix = {"decoder_input_ids": rows.to(device)}
            max_new_tokens -= 1
            min_new_tokens = max(0, min_new_tokens - 1)
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                   max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False,
                                   num_beams=1, **prefix)
        return [self.clean(t) for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]


def decoder_start_token_id(model) -> int:
    """The token an encoder-decoder's decoder starts from, where ``generate`` looks it up."""
    for config in (model.generation_config, model.config):
        start = getattr(config, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    raise ValueError(f"{type(model).__name__} names no decoder_start_token_id")


def normalize_whitespace(text: str) -> str:
    """One space between words and none around them: the form every hypothesis is scored in."""
    return " ".join(text.split())


def pad(seqs: list[list[int]], value: int, left: bool = False, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence (right, or left for decoder-only prompts), its length rounded up
    to a multiple of ``multiple``; ids and attention mask."""
    width = math.ceil(max(len(s) for s in seqs) / multiple) * multiple
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def padded_batch(inputs: list[list[int]], labels: list[list[int]], pad_id: int,
                 multiple: int = 1) -> dict[str, torch.Tensor]:
    """Model inputs with their attention mask and labels, each padded to its longest row (-100 for
    labels), rounded up to a multiple of ``multiple``."""
    input_ids, attention_mask = pad(inputs, pad_id, multiple=multiple)
    label_ids, _ = pad(labels, -100, multiple=multiple)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


def add_language_tokens(model, control: LanguageTokens, codes: list[str]) -> list[str]:
    """Give the tokenizer a token for every language it lacks and resize the model to match.

    New embeddings start at the mean of the existing language tokens' embeddings (or of all
    embeddings when there are none), so a new language begins as "some language" rather than as
    noise. Returns the codes that were added.
    """
    missing = [c for c in codes if not control.has(c)]
    if not missing:
        return []
    existing = [control.token_id(c) for c in codes if c not in missing]
    control.tokenizer.add_tokens([control.token(c) for c in missing], special_tokens=True)
    old = model.get_input_embeddings().weight.shape[0]
    if len(control.tokenizer) > old:  # some checkpoints already have spare rows beyond the vocabulary
        model.resize_token_embeddings(len(control.tokenizer))
    new_ids = [control.token_id(c) for c in missing]
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[new_ids] = emb[existing].mean(0) if existing else emb[:old].mean(0)
    return missing
