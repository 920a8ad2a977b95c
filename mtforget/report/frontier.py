"""Learning–forgetting frontiers: each condition's points of (supervised gain, forgetting).

A condition (every grid value but the seed and the keys the study selects) is not one number but
a curve: what it gains on its fine-tuning directions against what the other directions lose. Its
points come from

- ``lr``: each learning rate of its sweep, at the end of training (the trial's reported model);
- ``step``: each check of its forgetting curve (``eval.during_training``) after step 0;
- ``alpha``: each weight interpolation with the base (``eval.interpolation``) strictly inside (0, 1);
- ``base``: the base itself, gain 0 and change 0 (step 0, α = 0);
- ``checkpoint``: a checkpoint fine-tuned elsewhere.

A point's ``gain`` is the mean chrF delta over its supervised directions and seeds and its
``delta`` the mean over one category's directions and seeds (``unseen`` pools the three unseen
categories), the same means as ``results.csv``. A curve's step points are measured on a sample
of directions and sentences, not on every direction as the others are, so their gains are not
comparable with the others' and a front through them would pick their noise: they are shown with
their intervals but stay off the Pareto front (:data:`ON_FRONT`). Every mean is over units ``seed:src-tgt``: a
bootstrap resamples units, and resamples them jointly for every point of the conditions it
compares, so an interval of a difference is paired.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from mtforget.data.categories import CATEGORIES, UNSEEN
from mtforget.study.result import TrialResult

# The categories a frontier reads forgetting on: every non-supervised one, and the unseen ones pooled.
POOLED = "unseen"
FRONTIER_CATEGORIES = (*(c for c in CATEGORIES if c != "supervised"), POOLED)
SOURCES = ("base", "lr", "step", "alpha", "checkpoint")
ON_FRONT = ("base", "lr", "alpha", "checkpoint")  # the sources measured on every direction


@dataclass
class Point:
    """One frontier point: per unit (``seed:src-tgt``), the supervised chrF delta and each category's."""

    condition: str
    source: str
    value: float
    lr: float | None
    gain: dict[str, float] = field(default_factory=dict)
    deltas: dict[str, dict[str, float]] = field(default_factory=dict)

    def mean_gain(self) -> float:
        """The mean supervised delta (0 for the base)."""
        return float(np.mean(list(self.gain.values()))) if self.gain else (0.0 if self.source == "base" else math.nan)

    def mean_delta(self, category: str) -> float:
        """The mean delta of ``category`` (0 for the base, NaN where the point has none)."""
        units = self.deltas.get(category)
        return float(np.mean(list(units.values()))) if units else (0.0 if self.source == "base" else math.nan)


def _add(point: Point, seed: int, direction: str, category: str, delta: float) -> None:
    unit = f"{seed}:{direction}"
    if category == "supervised":
        point.gain[unit] = delta
        return
    point.deltas.setdefault(category, {})[unit] = delta
    if category in UNSEEN:
        point.deltas.setdefault(POOLED, {})[unit] = delta


def _lr(trial: dict) -> float | None:
    import json

    return (json.loads(trial["config"]).get("finetune") or {}).get("lr")


def end_points(trials: list[dict], rows: list[dict], source: str = "lr") -> list[Point]:
    """Per condition and learning rate, the trials' end points (``results.csv`` rows, chrF);
    checkpoints made elsewhere give one point each (source ``checkpoint``, value its step). With
    source ``end``, one point per condition pooling all its trials (the headline's reading)."""
    done = {t["trial_id"]: t for t in trials if t["status"] == "done"}
    points: dict[tuple, Point] = {}
    for row in rows:
        trial = done.get(row["trial_id"])
        if trial is None or row["metric"] != "chrf" or row["delta"] is None:
            continue
        result = TrialResult.from_json(trial["info"])
        if source == "end":  # one point per condition: its trials, whatever their rates
            key = (trial["condition"], source, 0.0, None)
        elif result is not None and result.checkpoint:
            key = (trial["condition"], "checkpoint", float(result.checkpoint.get("step") or 0), None)
        else:
            key = (trial["condition"], source, _lr(trial), _lr(trial))
        point = points.setdefault(key, Point(*key))
        _add(point, trial["seed"], f"{row['src']}-{row['tgt']}", row["category"], row["delta"])
    return list(points.values())


def curve_points(trials: list[dict]) -> list[Point]:
    """Per condition, rate and step after 0, the forgetting curve's sampled directions."""
    points: dict[tuple, Point] = {}
    for trial in trials:
        result = TrialResult.from_json(trial["info"]) if trial["status"] == "done" else None
        if not result or not result.forgetting_curve_by_direction:
            continue
        for entry in result.forgetting_curve_by_direction:
            if not entry["step"]:
                continue
            key = (trial["condition"], "step", float(entry["step"]), _lr(trial))
            point = points.setdefault(key, Point(*key))
            for direction, (category, delta) in entry["directions"].items():
                _add(point, trial["seed"], direction, category, delta)
    return [p for p in points.values() if p.gain]


def interpolation_points(trials: list[dict]) -> list[Point]:
    """Per condition, rate and α strictly inside (0, 1), the interpolated model's directions."""
    points: dict[tuple, Point] = {}
    for trial in trials:
        result = TrialResult.from_json(trial["info"]) if trial["status"] == "done" else None
        sweep = (result.mitigations.get("interpolation") or {}).get("points") if result else None
        for entry in sweep or []:
            if not 0 < entry["alpha"] < 1:
                continue
            key = (trial["condition"], "alpha", float(entry["alpha"]), _lr(trial))
            point = points.setdefault(key, Point(*key))
            for category, summary in entry["categories"].items():
                for direction, delta in (summary.get("chrf_by_direction") or {}).items():
                    _add(point, trial["seed"], direction, category, delta)
    return [p for p in points.values() if p.gain]


def frontier_points(trials: list[dict], rows: list[dict]) -> list[Point]:
    """Every condition's frontier points (see the module's docstring), base first."""
    measured = end_points(trials, rows) + curve_points(trials) + interpolation_points(trials)
    conditions = list(dict.fromkeys(p.condition for p in measured))
    bases = [Point(c, "base", 0.0, None) for c in conditions]
    order = {s: i for i, s in enumerate(SOURCES)}
    return sorted(bases + measured, key=lambda p: (conditions.index(p.condition), order[p.source],
                                                    p.lr or 0.0, p.value))


def pareto(gains: np.ndarray, deltas: np.ndarray) -> list[int]:
    """Indices of the points no other point beats on both gain and delta (higher is better on
    both: more learnt, less forgotten), in order of gain; NaN points are left out."""
    ok = [i for i in range(len(gains)) if np.isfinite(gains[i]) and np.isfinite(deltas[i])]
    front = []
    # Highest gain first (ties: best delta first); a point joins when it forgets less than all before it.
    for i in sorted(ok, key=lambda i: (-gains[i], -deltas[i])):
        if not front or deltas[i] > deltas[front[-1]]:
            front.append(i)
    return front[::-1]


def reading_weights(gains: np.ndarray, deltas: np.ndarray, gain: float) -> list[tuple[int, float]] | None:
    """Where the Pareto front is read at supervised ``gain``: the points and weights whose
    weighted deltas give the reading (one point, or the two neighbours for a linear
    interpolation); below the front's first point, that point (it gains more and forgets no
    more); None (not reached) above its last."""
    front = pareto(gains, deltas)
    if not front or gain > gains[front[-1]] + 1e-12:
        return None
    xs = gains[front]
    if gain <= xs[0]:
        return [(front[0], 1.0)]
    if gain >= xs[-1]:  # at the last point (or within rounding of it)
        return [(front[-1], 1.0)]
    j = int(np.searchsorted(xs, gain))  # xs[j-1] < gain <= xs[j]
    share = (gain - xs[j - 1]) / (xs[j] - xs[j - 1])
    return [(front[j - 1], 1.0 - share), (front[j], share)]


def read_at(gains: np.ndarray, deltas: np.ndarray, gain: float) -> float:
    """The forgetting on the Pareto front at supervised ``gain`` (see :func:`reading_weights`);
    NaN where the front does not reach it."""
    weights = reading_weights(gains, deltas, gain)
    return math.nan if weights is None else float(sum(w * deltas[i] for i, w in weights))


class Resampler:
    """Bootstrap draws of units, shared by every point it averages (so differences are paired).

    Units are drawn with replacement, ``resamples`` times, from the given unit list; a point's
    resampled mean is over the drawn units it has (a point measured on a sample of directions,
    such as a curve's, averages the drawn ones it covers, and keeps its own mean when it covers
    none of them).
    """

    def __init__(self, units: list[str], resamples: int, seed: int) -> None:
        self.index = {u: i for i, u in enumerate(units)}
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(units), size=(resamples, len(units))) if units else np.zeros((resamples, 0), int)
        self.counts = np.stack([np.bincount(d, minlength=len(units)) for d in draws]).astype(float) \
            if units else np.zeros((resamples, 0))

    def means(self, values: dict[str, float], constant: float = math.nan) -> np.ndarray:
        """Per resample, the mean of ``values`` (unit → value) over the drawn units it has;
        ``constant`` for a point without units (the base's 0)."""
        resamples = self.counts.shape[0]
        if not values:
            return np.full(resamples, constant)
        vector, mask = np.zeros(len(self.index)), np.zeros(len(self.index))
        for unit, value in values.items():
            vector[self.index[unit]], mask[self.index[unit]] = value, 1.0
        total, weight = self.counts @ vector, self.counts @ mask
        fallback = float(np.mean(list(values.values())))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(weight > 0, total / np.where(weight > 0, weight, 1), fallback)


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the finite ``values`` (NaN when none is)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def frontier_rows(points: list[Point], resamples: int = 1000, seed: int = 0) -> list[dict]:
    """``frontier.csv``: one row per condition × point × category, with each mean's 95% bootstrap
    interval over units and whether the point is on the condition's Pareto front for the category."""
    out = []
    by_condition: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        by_condition[p.condition].append(p)
    for condition, members in by_condition.items():
        gain_units = sorted({u for p in members for u in p.gain})
        gain_draws = Resampler(gain_units, resamples, seed)
        gains = np.array([p.mean_gain() for p in members])
        on_front = np.array([p.source in ON_FRONT for p in members])
        for category in FRONTIER_CATEGORIES:
            if not any(p.deltas.get(category) for p in members):
                continue
            draws = Resampler(sorted({u for p in members for u in p.deltas.get(category, {})}), resamples, seed + 1)
            deltas = np.array([p.mean_delta(category) for p in members])
            front = set(pareto(np.where(on_front, gains, np.nan), deltas))
            for i, p in enumerate(members):
                if not math.isfinite(deltas[i]):
                    continue
                gain_low, gain_high = interval(gain_draws.means(p.gain, 0.0)) if p.gain else (0.0, 0.0)
                low, high = interval(draws.means(p.deltas.get(category, {}), 0.0)) if p.source != "base" else (0.0, 0.0)
                out.append({"condition": condition, "source": p.source, "value": p.value, "lr": p.lr,
                            "category": category, "gain": gains[i], "gain_low": gain_low, "gain_high": gain_high,
                            "delta": deltas[i], "delta_low": low, "delta_high": high,
                            "units": len(p.deltas.get(category, {})), "pareto": i in front})
    return out


def front_of(points: list[Point], category: str) -> list[Point]:
    """The points of one condition on its Pareto front for ``category``, in order of gain."""
    points = [p for p in points if p.source in ON_FRONT]
    gains = np.array([p.mean_gain() for p in points])
    deltas = np.array([p.mean_delta(category) for p in points])
    return [points[i] for i in pareto(gains, deltas)]


FRONTIER_COLUMNS = ["condition", "source", "value", "lr", "category", "gain", "gain_low", "gain_high",
                    "delta", "delta_low", "delta_high", "units", "pareto"]
