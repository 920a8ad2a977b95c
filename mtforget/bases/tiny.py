"""The built-in tiny bases by name: ``tiny:small`` and ``tiny:base`` (encoder-decoder,
:mod:`mtforget.bases.tiny_seq2seq`), ``tiny:lm`` and ``tiny:lm-instruct`` (decoder-only,
:mod:`mtforget.bases.tiny_decoder`)."""

from __future__ import annotations

from pathlib import Path

from mtforget.bases.prebuilt import prebuilt_base
from mtforget.bases.specs import TINY_SPECS
from mtforget.bases.tiny_decoder import tiny_decoder_base
from mtforget.bases.tiny_seq2seq import tiny_seq2seq_base
from mtforget.data.corpus import Corpus
from mtforget.data.splits import Splits


def tiny_base(
    name: str,
    corpus: Corpus,
    splits: Splits,
    seed: int,
    steps: int | None = None,
    progress: bool = True,
    names: dict[str, str] | None = None,
    prebuilt: bool = True,
    mix: dict[str, float] | None = None,
) -> Path:
    """The directory of the tiny base ``name`` trained on ``corpus``: the one shipped in the
    package when ``prebuilt`` and its manifest matches (:mod:`mtforget.bases.prebuilt`), else
    pre-trained here (and cached).

    ``steps`` overrides the recipe's pre-training budget. ``lm`` and ``lm-instruct`` are the
    decoder-only bases; ``names`` are the language names their prompts use. ``mix`` weighs the
    languages of pre-training (:func:`~mtforget.data.splits.sample_all_directions`).
    """
    mix = dict(sorted(mix.items())) if mix else None
    if prebuilt:
        shipped = prebuilt_base(name, corpus, splits, seed, steps, names, mix=mix)
        if shipped is not None:
            return shipped
    if name in TINY_SPECS:
        return tiny_seq2seq_base(name, corpus, splits, seed, steps, progress, mix)
    return tiny_decoder_base(name, corpus, splits, seed, names or {}, steps, progress, mix)
