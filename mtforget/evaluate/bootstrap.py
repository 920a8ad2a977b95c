"""Paired bootstrap intervals for the fine-tuned − base delta of one direction.

Test sentences are resampled with replacement, the same indices for both systems, and corpus
scores are recomputed from sacrebleu's per-sentence sufficient statistics (the way sacrebleu's
own paired tests do), so each resample costs a sum, not a re-tokenisation. The scores of all
resamples are then computed at once, with sacrebleu's formulas over arrays: ``chrf_scores``
(``CHRF._compute_f_score``) and ``bleu_scores`` (``BLEU.compute_bleu``), both tested equal to
sacrebleu on every resample. Settings these do not cover (eps-smoothed chrF, add-k smoothing,
effective order) go through sacrebleu's own function resample by resample.
"""

from __future__ import annotations

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

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
        if isinstance(metric, BLEU) and not metric.effective_order and metric.smooth_method in _BLEU_SMOOTHING:
            def scores(sums: np.ndarray, m: BLEU = metric) -> np.ndarray:
                return bleu_scores(sums, m.max_ngram_order, m.smooth_method, m.smooth_value)
            out[name] = scores(f_sums) - scores(b_sums)
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


_BLEU_SMOOTHING = ("none", "floor", "exp")  # the methods ``bleu_scores`` implements


def bleu_scores(stats: np.ndarray, max_order: int = 4, smooth_method: str = "exp",
                smooth_value: float | None = None) -> np.ndarray:
    """BLEU of each row of corpus statistics, shape (rows, 2 + 2 × max_order): system length,
    reference length, then the matching and the total n-gram counts per order. sacrebleu's
    formula without effective order: brevity penalty times the geometric mean of the n-gram
    precisions, where an order with no matches is smoothed ("exp": 1 / 2^k for the k-th such
    order, "floor": a fixed count, "none": 0). A zero precision (an order without system n-grams,
    or unsmoothed without matches) makes the score 0, as do no matches at all."""
    if smooth_method not in _BLEU_SMOOTHING:
        raise ValueError(f"bleu_scores: smoothing {smooth_method!r} is not one of {_BLEU_SMOOTHING}")
    if smooth_value is None:
        smooth_value = BLEU.SMOOTH_DEFAULTS[smooth_method]
    stats = stats.astype(float)
    sys_len, ref_len = stats[:, 0], stats[:, 1]
    correct, total = stats[:, 2 : 2 + max_order], stats[:, 2 + max_order : 2 + 2 * max_order]
    # Rows with no system words have no matches either and score 0 below, whatever this gives them.
    penalty = np.where(sys_len < ref_len, np.exp(1 - ref_len / np.maximum(sys_len, 1)), 1.0)
    safe_total = np.where(total > 0, total, 1)
    if smooth_method == "exp":
        smoothed = 100.0 / (2.0 ** np.cumsum(correct == 0, axis=1) * safe_total)
    elif smooth_method == "floor":
        smoothed = 100.0 * smooth_value / safe_total
    else:
        smoothed = np.zeros_like(total)
    precision = np.where(total > 0, np.where(correct == 0, smoothed, 100.0 * correct / safe_total), 0.0)
    logs = np.log(np.where(precision > 0, precision, 1)).sum(axis=1) / max_order
    return np.where(correct.any(axis=1) & (precision > 0).all(axis=1), penalty * np.exp(logs), 0.0)


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
