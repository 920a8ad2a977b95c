"""Forgetting at matched gain: each contrast read where its conditions learn the same.

Two conditions trained to different supervised gains are not compared by their end points: a
condition that learns less usually forgets less too (both sit on one learning–forgetting curve).
So each contrast the report draws is also read at one supervised gain G, on the conditions'
frontiers (:mod:`mtforget.report.frontier`; the points measured on every direction): by default the largest gain that every condition of
the contrast reaches (``report.matched_gain`` sets it). A condition's forgetting at G is read off
its Pareto front by linear interpolation between the neighbouring points; a condition whose
frontier stops below G has "not reached" it. Intervals are a paired bootstrap over units
(``seed:src-tgt``): one draw of units serves every point of every condition of the contrast, and
each reading is the same weighted sum of its (resampled) front points in every draw.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from mtforget.report.frontier import (FRONTIER_CATEGORIES, ON_FRONT, POOLED, Point, Resampler, interval,
                                      read_at, reading_weights)

SEED = 0


def contrast_sets(contrasts: list[dict]) -> list[dict]:
    """The report's controlled contrasts at the level of conditions: per axis, the conditions it
    compares (seeds pooled) in their order, each with its value on the axis."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for row in contrasts:
        groups[row["group"]].append(row)
    seen, out = set(), []
    for members in groups.values():
        values = dict((m["condition"], m["value"]) for m in members)
        key = (members[0]["axis"], tuple(values))
        if len(values) < 2 or key in seen:
            continue
        seen.add(key)
        out.append({"axis": members[0]["axis"], "conditions": list(values), "values": values})
    return out


def matched_gain(contrast: dict, frontier: dict[str, list[Point]], end: dict[str, Point], resamples: int,
                 gain: float | None = None) -> dict:
    """One contrast read at its end points and at matched gain (see the module's docstring).

    ``frontier``: each condition's points; ``end``: each condition's end point (its selected
    trials). Returns the gain G read at (and whether the study set it), and per condition and
    category the end-point delta and the delta at G, each ``(mean, low, high)`` or None (not
    reached), and the same for each condition's difference from the first one.
    """
    conditions = [c for c in contrast["conditions"] if frontier.get(c) and c in end]
    tops = [max(p.mean_gain() for p in frontier[c]) for c in conditions]
    given = gain is not None
    target = gain if given else (min(tops) if tops else None)
    if target is not None and not given and target <= 0:
        target = None  # some condition never gains: there is no common gain to read at
    out = {"axis": contrast["axis"], "gain": target, "given": given,
           "conditions": [{"condition": c, "value": contrast["values"][c], "end_gain": end[c].mean_gain(),
                           "reaches": max(p.mean_gain() for p in frontier[c]), "end": {}, "at": {}}
                          for c in conditions],
           "differences": [{"condition": c, "end": {}, "at": {}} for c in conditions[1:]]}
    for category in FRONTIER_CATEGORIES:
        if not all(end[c].deltas.get(category) for c in conditions):
            continue
        units = sorted({u for c in conditions for p in [*frontier[c], end[c]] for u in p.deltas.get(category, {})})
        draws = Resampler(units, resamples, SEED + 1)
        end_draws, at_draws, at_means = [], [], []
        for c in conditions:
            points = frontier[c]
            gains = np.array([p.mean_gain() for p in points])
            deltas = np.array([p.mean_delta(category) for p in points])
            weights = None if target is None else reading_weights(gains, deltas, target)
            at_means.append(math.nan if weights is None else read_at(gains, deltas, target))
            # The reading's interval: its points and weights as estimated, their deltas resampled
            # (re-reading a resampled front at G would mix in where each draw's front happens to end).
            at_draws.append(np.full(resamples, math.nan) if weights is None else
                            sum(w * draws.means(points[i].deltas.get(category, {}), 0.0) for i, w in weights))
            end_draws.append(draws.means(end[c].deltas[category]))
        for i, c in enumerate(conditions):
            entry = out["conditions"][i]
            entry["end"][category] = (end[c].mean_delta(category), *interval(end_draws[i]))
            entry["at"][category] = (at_means[i], *interval(at_draws[i])) if math.isfinite(at_means[i]) else None
            if i:
                diff = out["differences"][i - 1]
                diff["end"][category] = (end[c].mean_delta(category) - end[conditions[0]].mean_delta(category),
                                         *interval(end_draws[i] - end_draws[0]))
                both = math.isfinite(at_means[i]) and math.isfinite(at_means[0])
                diff["at"][category] = ((at_means[i] - at_means[0], *interval(at_draws[i] - at_draws[0]))
                                        if both else None)
    return out


def law_contradictions(readings: list[dict], fit: dict | None, tokens_per_parameter: dict[str, float]) -> list[str]:
    """Each contrast whose measured end-point difference on unseen directions (pooled) has a
    paired interval that excludes what the study's fitted scale law predicts for it (the law:
    unseen chrF delta ≈ a + b·log10(tokens/parameters), fitted over the same study's trials)."""
    if not fit:
        return []
    lines = []
    for reading in readings:
        first = reading["conditions"][0]["condition"] if reading["conditions"] else None
        for diff in reading["differences"]:
            measured = diff["end"].get(POOLED)
            ratio = (tokens_per_parameter.get(diff["condition"]), tokens_per_parameter.get(first))
            if not measured or not all(ratio) or ratio[0] == ratio[1]:
                continue
            predicted = fit["slope"] * (math.log10(ratio[0]) - math.log10(ratio[1]))
            mean, low, high = measured
            if not low <= predicted <= high:
                lines.append(f"{reading['axis']}: {diff['condition']} against {first}: the law predicts "
                             f"{predicted:+.1f}, the contrast measures {mean:+.1f} [{low:+.1f}, {high:+.1f}]")
    return lines


def law_heading(fit: dict) -> str:
    """The sentence above :func:`law_contradictions`' lines."""
    return (f"The study's fitted scale law (unseen chrF delta ≈ {fit['intercept']:+.1f} {fit['slope']:+.1f} · "
            "log10(tokens/parameters), over its trials) does not hold across these contrasts (unseen directions "
            "pooled, end points, paired 95% intervals that exclude the law's prediction):")


def matched_gain_readings(contrasts: list[dict], points: list[Point], end_points: list[Point], resamples: int,
                          gain: float | None = None) -> list[dict]:
    """:func:`matched_gain` for every contrast of :func:`contrast_sets`."""
    frontier: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        if p.source in ON_FRONT:  # the points measured on every direction (see frontier's docstring)
            frontier[p.condition].append(p)
    end = {p.condition: p for p in end_points}
    return [matched_gain(c, frontier, end, resamples, gain) for c in contrast_sets(contrasts)]

