"""TER (translation edit rate) with sacrebleu's default settings; optional (``eval.metrics: [ter]``).

Statistics per sentence are sacrebleu's: the number of edits (with shifts) that turn the output
into the reference, and the reference length in words, read off a one-sentence score.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from sacrebleu.metrics import TER

from mtforget.evaluate.metrics.base import Metric, Outputs


@cache
def _ter_object() -> TER:
    return TER()


class Ter(Metric):
    """Edits per reference word ×100 over the corpus; lower is better."""

    name = "ter"
    title = "TER"
    higher_is_better = False
    optional = True

    def signature(self, target: str) -> str:
        metric = TER()
        metric.corpus_score(["a"], [["a"]])  # the signature includes settings resolved on first use
        return str(metric.get_signature())

    def statistics(self, outputs: Outputs) -> np.ndarray:
        metric = _ter_object()
        rows = []
        for hyp, ref in zip(outputs.hypotheses, outputs.references):
            one = metric.corpus_score([hyp], [[ref]])
            rows.append([one.num_edits, one.ref_length])
        return np.array(rows, dtype=float).reshape(len(rows), 2)

    def score(self, sums: np.ndarray) -> np.ndarray:
        """sacrebleu's TER of summed statistics: edits over reference words ×100; 100 for edits
        against empty references, 0 when both sides are empty."""
        sums = np.asarray(sums, dtype=float)
        edits, words = sums[..., 0], sums[..., 1]
        rate = np.where(words > 0, edits / np.where(words > 0, words, 1), np.where(edits > 0, 1.0, 0.0))
        return 100 * rate
