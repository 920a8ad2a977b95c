"""Bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np


def bootstrap_mean_ci(values: list[float], seed: int = 0, resamples: int = 2000,
                      level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile bootstrap interval for it, deterministic by ``seed``.

    With a single value the interval collapses to it (there is nothing to resample).
    """
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(resamples, arr.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return mean, float(low), float(high)
