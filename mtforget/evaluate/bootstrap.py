"""Paired bootstrap intervals for the fine-tuned − base delta of one direction.

Test sentences are resampled with replacement, the same indices for both systems, and corpus
scores are recomputed from sacrebleu's per-sentence sufficient statistics (the way sacrebleu's
own paired tests do), so each resample costs a sum, not a re-tokenisation. chrF and chrF++ scores
of all resamples are computed at once (``chrf_scores``, the formula of sacrebleu's
``CHRF._compute_f_score`` over arrays, tested equal to it); BLEU goes through sacrebleu's own
function resample by resample.
"""

from __future__ import annotations

import numpy as np
from sacrebleu.metrics import CHRF

from mtforget.evaluate.metrics import metric_objects


def paired_deltas(base: list[str], finetuned: list[str], references: list[str], target: str,
                  base_flags: list[float | None], ft_flags: list[float | None],
                  resamples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bootstrap samples of ``delta`` per metric (chrF, chrF++, BLEU, off-target), ``resamples`` each."""
    n = len(references)
    idx = rng.integers(0, n, size=(resamples, n))
    out: dict[str, np.ndarray] = {}
    for name, metric in metric_objects(target).items():
        sb = np.asarray(metric._extract_corpus_statistics(base, [references]))
        sf = np.asarray(metric._extract_corpus_statistics(finetuned, [references]))
        b_sums, f_sums = sb[idx].sum(axis=1), sf[idx].sum(axis=1)
        if isinstance(metric, CHRF) and not metric.eps_smoothing:
            out[name] = chrf_scores(f_sums, metric.beta) - chrf_scores(b_sums, metric.beta)
            continue
        out[name] = np.array([metric._compute_score_from_stats(list(f)).score
                              - metric._compute_score_from_stats(list(b)).score for b, f in zip(b_sums, f_sums)])
    out["off_target"] = _rate(ft_flags, idx) - _rate(base_flags, idx)
    return out


def chrf_scores(stats: np.ndarray, beta: float) -> np.ndarray:
    """chrF (or chrF++) of each row of corpus statistics, shape (rows, 3 × orders): per order the
    [hypothesis, reference, matching] n-gram counts. sacrebleu's default (not eps-smoothed)
    formula: precision and recall averaged over the orders where both sides have n-grams, then
    their F-beta, ×100."""
    hyp, ref, match = (stats[:, k::3].astype(float) for k in range(3))
    both = (hyp > 0) & (ref > 0)
    orders = both.sum(axis=1)
    precision = np.where(both, match / np.where(hyp > 0, hyp, 1), 0.0).sum(axis=1) / np.maximum(orders, 1)
    recall = np.where(both, match / np.where(ref > 0, ref, 1), 0.0).sum(axis=1) / np.maximum(orders, 1)
    factor = beta**2
    denominator = factor * precision + recall
    f_score = (1 + factor) * precision * recall / np.where(denominator > 0, denominator, 1)
    return np.where(precision + recall > 0, 100 * f_score, 0.0)


def _rate(flags: list[float | None], idx: np.ndarray) -> np.ndarray:
    values = np.array([np.nan if f is None else f for f in flags])[idx]
    judged = ~np.isnan(values)
    counts = judged.sum(axis=1)
    return np.where(counts > 0, np.nansum(values, axis=1) / np.maximum(counts, 1), 0.0)


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
