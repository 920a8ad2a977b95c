"""Paired bootstrap intervals for the fine-tuned − base delta of one direction, for any metric.

Test sentences are resampled with replacement, the same indices for both systems; each
resample's score is the metric's score of the per-sentence statistics it drew, summed (the way
sacrebleu's own paired tests do), so a resample costs a sum, not a re-tokenisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mtforget.evaluate.metrics import Metric, resampled_totals


def paired_deltas(metrics: Sequence[Metric], base: Mapping[str, np.ndarray], finetuned: Mapping[str, np.ndarray],
                  idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per metric, the fine-tuned − base score of every resample in ``idx`` (resamples × n
    sentence indices); ``base`` and ``finetuned`` map metric names to per-sentence statistics."""
    return {m.name: m.resample_scores(resampled_totals(finetuned[m.name], idx))
            - m.resample_scores(resampled_totals(base[m.name], idx)) for m in metrics}


def paired_bootstrap(metrics: Sequence[Metric], base: Mapping[str, np.ndarray], finetuned: Mapping[str, np.ndarray],
                     resamples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bootstrap samples of the delta of every metric, ``resamples`` each (see ``paired_deltas``).

    The always-on metrics share one draw of resampled sentences and the optional ones a second,
    drawn only when one of them is on: the order in which the study has always drawn them, so
    results stay the same at the same seed.
    """
    samples: dict[str, np.ndarray] = {}
    for group in ([m for m in metrics if not m.optional], [m for m in metrics if m.optional]):
        if group:
            n = len(base[group[0].name])
            samples |= paired_deltas(group, base, finetuned, rng.integers(0, n, size=(resamples, n)))
    return samples


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
