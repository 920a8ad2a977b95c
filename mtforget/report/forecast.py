"""How much data a model can be fine-tuned on before it forgets more than a budget.

The study's first finding is that forgetting grows with the ratio of fine-tuning tokens to model
parameters. From the trials of a grid over ``finetune.size`` (and model sizes) that change
nothing else, each unseen category's mean chrF change is fitted against log10(tokens per
parameter) by least squares; the fit's crossing of ``-budget`` gives the largest ratio within
the budget, and, per model, the largest ``finetune.size`` (tokens per parameter grow in
proportion to the data size at fixed epochs). Intervals come from refitting on trials drawn with
replacement. The forecast is checked by leaving each model's largest size out (all its seeds),
fitting the rest and predicting it: the prediction error is reported beside the forecast.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np

from mtforget.data.categories import UNSEEN
from mtforget.mitigations import MITIGATIONS
from mtforget.report.tables import TrialSummary

UNSEEN_MEAN = "unseen (mean)"


def forecast(summaries: list[TrialSummary], trials: list[dict], rows: list[dict], budget: float,
             resamples: int = 1000, seed: int = 0) -> dict | None:
    """The forecast per unseen category, or None when the study lacks three ratios of tokens per
    parameter in plain fine-tuning (no mitigation that changes training)."""
    points = _points(summaries, trials, rows)
    if len({p["tokens_per_parameter"] for p in points}) < 3:
        return None
    categories = []
    for category in (*UNSEEN, UNSEEN_MEAN):
        usable = [p for p in points if category in p["deltas"]]
        if len(usable) >= 3:
            categories.append(_category_forecast(category, usable, budget, resamples, seed))
    return {"budget": budget, "trials": len(points), "method": points[0]["method"], "categories": categories}


def _points(summaries: list[TrialSummary], trials: list[dict], rows: list[dict]) -> list[dict]:
    """Per plain trial of the most represented method: tokens per parameter, model, size, and the
    mean chrF change of each unseen category (and of all unseen directions)."""
    plain = {t["trial_id"] for t in trials if t["status"] == "done" and _trains_plainly(t)}
    deltas: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["metric"] == "chrf" and row["category"] in UNSEEN and row["trial_id"] in plain:
            deltas[row["trial_id"]][row["category"]].append(row["delta"])
            deltas[row["trial_id"]][UNSEEN_MEAN].append(row["delta"])
    # Checkpoints made elsewhere (finetune.checkpoints) are no part of the study's size grid.
    candidates = [s for s in summaries if s.trial_id in deltas and s.result and s.result.tokens_per_parameter
                  and not s.result.checkpoint]
    methods = defaultdict(set)
    for s in candidates:
        methods[s.method].add(s.finetune_size)
    if not methods:
        return []
    method = max(methods, key=lambda m: (len(methods[m]), m == "full"))
    return [{"trial_id": s.trial_id, "model": s.model, "method": s.method, "size": s.finetune_size,
             "tokens_per_parameter": s.result.tokens_per_parameter,
             "deltas": {c: float(np.mean(v)) for c, v in deltas[s.trial_id].items()}}
            for s in candidates if s.method == method]


def _trains_plainly(trial: dict) -> bool:
    """Whether no mitigation that changes training was on (analyses such as interpolation may be)."""
    labels = json.loads(trial["mitigations"] or "{}")
    return all(label == "none" or (name in MITIGATIONS and not MITIGATIONS[name].changes_training)
               for name, label in labels.items())


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """(intercept, slope) of y = a + b·log10(x), or None without two distinct x."""
    logs = np.log10(x)
    if np.ptp(logs) == 0:
        return None
    slope, intercept = np.polyfit(logs, y, 1)
    return float(intercept), float(slope)


def _limit(fit: tuple[float, float] | None, budget: float) -> float:
    """Tokens per parameter where the fit reaches ``-budget`` (inf when it never falls that far)."""
    if fit is None:
        return float("nan")
    intercept, slope = fit
    if slope >= 0:
        return float("inf")
    exponent = (-budget - intercept) / slope
    # A slope that barely falls reaches the budget past any amount of data a float can count:
    # as unbounded as one that does not fall.
    return float("inf") if exponent > sys.float_info.max_10_exp else float(10**exponent)


def _category_forecast(category: str, points: list[dict], budget: float, resamples: int, seed: int) -> dict:
    x = np.array([p["tokens_per_parameter"] for p in points])
    y = np.array([p["deltas"][category] for p in points])
    fit = _fit(x, y)
    rng = np.random.default_rng(seed)
    limits = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        limits.append(_limit(_fit(x[idx], y[idx]), budget))
    finite = np.asarray([v for v in limits if np.isfinite(v)])
    low, high = (np.percentile(finite, [2.5, 97.5]) if finite.size else (float("nan"), float("nan")))
    limit = _limit(fit, budget)
    sizes = {}
    for model in sorted({p["model"] for p in points}):
        ratio = float(np.median([p["tokens_per_parameter"] / p["size"] for p in points if p["model"] == model]))
        sizes[model] = {"size": limit / ratio, "low": low / ratio, "high": high / ratio,
                        "largest_tried": max(p["size"] for p in points if p["model"] == model)}
    return {"category": category, "intercept": fit[0] if fit else None, "slope_per_decade": fit[1] if fit else None,
            "tokens_per_parameter": limit, "low": float(low), "high": float(high),
            "unbounded_share": sum(1 for v in limits if v == float("inf")) / resamples,
            # A limit outside the ratios tried is the fit's extrapolation, not something measured.
            "extrapolated": not (x.min() <= limit <= x.max()),
            "sizes": sizes, "held_out": _held_out(points, category)}


def _held_out(points: list[dict], category: str) -> list[dict]:
    """Each model's largest size (every seed of it), predicted by a fit on every other point,
    beside the mean it measured."""
    out = []
    for model in sorted({p["model"] for p in points}):
        mine = [p for p in points if p["model"] == model]
        if len({p["size"] for p in mine}) < 2:
            continue
        largest = max(p["size"] for p in mine)
        held = [p for p in mine if p["size"] == largest]
        rest = [p for p in points if not (p["model"] == model and p["size"] == largest)]
        fit = _fit(np.array([p["tokens_per_parameter"] for p in rest]), np.array([p["deltas"][category] for p in rest]))
        if fit is None:
            continue
        ratio = float(np.mean([p["tokens_per_parameter"] for p in held]))
        predicted = fit[0] + fit[1] * np.log10(ratio)
        observed = float(np.mean([p["deltas"][category] for p in held]))
        out.append({"model": model, "size": largest, "trials": len(held), "predicted": float(predicted),
                    "observed": observed, "error": float(predicted - observed)})
    return out
