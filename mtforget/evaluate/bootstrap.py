"""Paired bootstrap intervals for the fine-tuned − base delta of one direction.

Test sentences are resampled with replacement, the same indices for both systems, and corpus
scores are recomputed from sacrebleu's per-sentence sufficient statistics (the way sacrebleu's
own paired tests do), so each resample costs a sum, not a re-tokenisation.
"""

from __future__ import annotations

import numpy as np

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
        out[name] = np.array([metric._compute_score_from_stats(list(f)).score
                              - metric._compute_score_from_stats(list(b)).score for b, f in zip(b_sums, f_sums)])
    out["off_target"] = _rate(ft_flags, idx) - _rate(base_flags, idx)
    return out


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
