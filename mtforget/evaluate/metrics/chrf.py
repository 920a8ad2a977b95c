"""chrF and chrF++ with sacrebleu's default settings: character n-grams up to order 6 (plus word
uni- and bigrams for chrF++), beta 2, case-sensitive, whitespace ignored.

Statistics per sentence and order are the [hypothesis, reference, matching] n-gram counts that
sacrebleu sums for a corpus, built from its public n-gram helpers.
"""

from __future__ import annotations

import string
from collections import Counter
from functools import cache, lru_cache

import numpy as np
from sacrebleu.metrics import CHRF
from sacrebleu.metrics.helpers import extract_all_char_ngrams, extract_word_ngrams

from mtforget.evaluate.metrics.base import Metric, Outputs

PUNCTUATION = frozenset(string.punctuation)  # what chrF++ splits off the ends of words


class ChrF(Metric):
    """chrF (``word_order=0``) or chrF++ (``word_order=2``)."""

    CHAR_ORDER = 6
    BETA = 2

    def __init__(self, word_order: int = 0):
        if word_order not in (0, 2):
            raise ValueError(f"ChrF: word_order {word_order} is neither chrF (0) nor chrF++ (2)")
        self.word_order = word_order
        self.name, self.title = ("chrf++", "chrF++") if word_order else ("chrf", "chrF")

    def signature(self, target: str) -> str:
        return _signature(self.word_order)

    def statistics(self, outputs: Outputs) -> np.ndarray:
        rows = [self._sentence(hyp, ref) for hyp, ref in zip(outputs.hypotheses, outputs.references)]
        return np.array(rows, dtype=np.int64).reshape(len(rows), 3 * (self.CHAR_ORDER + self.word_order))

    def _sentence(self, hypothesis: str, reference: str) -> tuple[int, ...]:
        row = _char_statistics(hypothesis, reference, self.CHAR_ORDER)
        return row + _word_statistics(hypothesis, reference, self.word_order) if self.word_order else row

    def score(self, sums: np.ndarray) -> np.ndarray:
        """sacrebleu's chrF of summed statistics, to the bit: precision and recall averaged over the
        orders where both sides have n-grams, then their F-beta, ×100."""
        sums = np.asarray(sums, dtype=float)
        hyp, ref, match = sums[..., 0::3], sums[..., 1::3], sums[..., 2::3]
        both = (hyp > 0) & (ref > 0)
        precisions = np.where(both, match / np.where(hyp > 0, hyp, 1), 0.0)
        recalls = np.where(both, match / np.where(ref > 0, ref, 1), 0.0)
        precision, recall = np.zeros(sums.shape[:-1]), np.zeros(sums.shape[:-1])
        for order in range(hyp.shape[-1]):  # one order after the other, the way sacrebleu adds them
            precision = precision + precisions[..., order]
            recall = recall + recalls[..., order]
        orders = np.maximum(both.sum(axis=-1), 1)
        precision, recall = precision / orders, recall / orders
        factor = self.BETA**2
        denominator = factor * precision + recall
        f_score = (1 + factor) * precision * recall / np.where(denominator > 0, denominator, 1)
        return np.where(precision + recall > 0, 100 * f_score, 0.0)

    def resample_scores(self, sums: np.ndarray) -> np.ndarray:
        # The paired bootstrap has always scored resamples with ``chrf_scores``; it adds the
        # orders in numpy's order, which can differ from ``score`` in the last bit, and keeping
        # it keeps intervals identical to those of earlier studies at the same seed.
        return chrf_scores(sums, self.BETA)


# A study scores the same sentence pairs many times (the evaluation, then the paired bootstrap of
# every trial on the same base outputs, chrF and chrF++ on the same characters): the statistics of
# a pair are a pure function of its two texts, so they are computed once.
@lru_cache(maxsize=1 << 15)
def _char_statistics(hypothesis: str, reference: str, order: int) -> tuple[int, ...]:
    """[hypothesis, reference, matching] counts of character n-grams of orders 1..``order``."""
    return _matched(extract_all_char_ngrams(hypothesis, order), extract_all_char_ngrams(reference, order))


@lru_cache(maxsize=1 << 15)
def _word_statistics(hypothesis: str, reference: str, order: int) -> tuple[int, ...]:
    """[hypothesis, reference, matching] counts of chrF++'s word n-grams of orders 1..``order``."""
    hyp_words, ref_words = split_punctuation(hypothesis), split_punctuation(reference)
    return _matched([extract_word_ngrams(hyp_words, n) for n in range(1, order + 1)],
                    [extract_word_ngrams(ref_words, n) for n in range(1, order + 1)])


def _matched(hypothesis: list[Counter], reference: list[Counter]) -> tuple[int, ...]:
    row: list[int] = []
    for hyp, ref in zip(hypothesis, reference):
        matching = sum(min(count, ref[gram]) for gram, count in hyp.items() if gram in ref)
        # sacrebleu counts no hypothesis n-grams of an order the reference lacks
        row += [sum(hyp.values()) if ref else 0, sum(ref.values()), matching]
    return tuple(row)


def split_punctuation(sentence: str) -> list[str]:
    """chrF++'s words: whitespace-separated, with one punctuation mark split off the end of a word,
    or else off its start."""
    words = []
    for word in sentence.split():
        if len(word) > 1 and word[-1] in PUNCTUATION:
            words += [word[:-1], word[-1]]
        elif len(word) > 1 and word[0] in PUNCTUATION:
            words += [word[0], word[1:]]
        else:
            words.append(word)
    return words


def chrf_scores(stats: np.ndarray, beta: float) -> np.ndarray:
    """chrF of each row of summed statistics, shape (rows, 3 × orders), equal to sacrebleu's
    within rounding (see :meth:`ChrF.resample_scores`)."""
    hyp, ref, match = (stats[:, k::3].astype(float) for k in range(3))
    both = (hyp > 0) & (ref > 0)
    orders = both.sum(axis=1)
    precision = np.where(both, match / np.where(hyp > 0, hyp, 1), 0.0).sum(axis=1) / np.maximum(orders, 1)
    recall = np.where(both, match / np.where(ref > 0, ref, 1), 0.0).sum(axis=1) / np.maximum(orders, 1)
    factor = beta**2
    denominator = factor * precision + recall
    f_score = (1 + factor) * precision * recall / np.where(denominator > 0, denominator, 1)
    return np.where(precision + recall > 0, 100 * f_score, 0.0)


@cache
def _signature(word_order: int) -> str:
    metric = CHRF(word_order=word_order)
    metric.corpus_score(["a"], [["a"]])  # the signature includes settings resolved on first use
    return str(metric.get_signature())
