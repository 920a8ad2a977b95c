"""COMET, optional (``eval.metrics: [comet]`` with an ``eval.comet`` block): a learned scorer run
in its own environment (:mod:`mtforget.evaluate.comet`); scores ×100, averaged over sentences.

Each sentence's statistics are its segment score and a count of one, so sums give the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtforget.evaluate.comet import comet_scores
from mtforget.evaluate.metrics.base import Judges, Metric, Outputs


class Comet(Metric):
    """Mean segment-level COMET ×100."""

    name = "comet"
    title = "COMET"
    optional = True
    judgement_key = "comet_seg"

    def judge(self, systems: Sequence[Outputs], judges: Judges) -> list[list] | None:
        # One scorer call for every system: loading COMET costs more than scoring.
        if judges.comet is None:
            return None
        triples = [t for s in systems for t in zip(s.sources, s.hypotheses, s.references)]
        scores = [100 * x for x in comet_scores(triples, *judges.comet)]
        out, offset = [], 0
        for s in systems:
            out.append(scores[offset : offset + len(s.hypotheses)])
            offset += len(s.hypotheses)
        return out

    def statistics(self, outputs: Outputs) -> np.ndarray:
        segments = outputs.judgements[self.name]
        return np.array([[s, 1.0] for s in segments], dtype=float).reshape(len(segments), 2)

    def score(self, sums: np.ndarray) -> np.ndarray:
        sums = np.asarray(sums, dtype=float)
        total, count = sums[..., 0], sums[..., 1]
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
