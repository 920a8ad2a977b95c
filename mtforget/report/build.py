"""Build a study's report from its store: ``report/summary.md``, ``report/index.html`` with its
figures, and ``results.parquet`` beside ``results.csv``.

Per condition (every grid value except the seed) and direction category, the mean delta over the
category's directions (and seeds) with a 95% percentile-bootstrap interval over those units.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mtforget.atomic import atomic_path, write_text_atomic
from mtforget.data.categories import CATEGORIES
from mtforget.errors import UsageError
from mtforget.report import plots
from mtforget.report.page import render_html, render_markdown
from mtforget.report.forecast import forecast
from mtforget.report.frontier import FRONTIER_COLUMNS, end_points, frontier_points, frontier_rows
from mtforget.report.matched import law_contradictions, matched_gain_readings
from mtforget.report.tables import (axis_comparisons, base_quality, category_table, checkpoint_curves,
                                    DRIFT_COLUMNS, condition_budgets, controlled_contrasts, direction_matrix,
                                    drift_matrix, drift_rows, exposure_table, flagged_directions, forgetting_curves,
                                    gate_failure_reasons, gate_failures, interpolation_curves, language_table,
                                    layer_series, rate_sensitivity, trial_summaries)
from mtforget.study.selection import selected_trials
from mtforget.study.store import CSV_COLUMNS, open_store_for_report

MAX_HEATMAPS = 12
# Forecast budget (chrF points) when the study sets no finetune.forgetting_budget.max_drop.
FORECAST_BUDGET = 1.0
EXAMPLES_PER_CATEGORY = 2


def build_report(out: Path) -> Path:
    """Write ``out/report/`` and ``out/results.parquet`` from ``out/results.sqlite``; returns the HTML path.

    The store is only read (a ``run`` may be writing it). A damaged store, or a report that
    cannot be written, is a :class:`UsageError` saying what to do or where writing failed.
    """
    try:
        return _build_report(out)
    except OSError as exc:
        # The folder: a file's own name may be the hidden temporary one it was being written to.
        where = Path(exc.filename).parent if exc.filename else out / "report"
        raise UsageError(f"{where}: cannot write the report there ({exc.strerror or exc}); the results "
                         f"themselves are in {out / 'results.sqlite'}") from None


@dataclass(frozen=True)
class ReportSettings:
    """What the study file says about reading it (defaults for a directory without one)."""

    resamples: int = 2000
    include_flagged: bool = False
    budget: float = FORECAST_BUDGET
    select: dict = field(default_factory=dict)
    matched_gain: float | None = None

    @classmethod
    def of(cls, out: Path) -> ReportSettings:
        """The settings of study directory ``out``'s ``study.yaml``."""
        if not (out / "study.yaml").is_file():
            return cls()
        study = yaml.safe_load((out / "study.yaml").read_text(encoding="utf-8")) or {}
        ev, ft = study.get("eval", {}), study.get("finetune", {})
        return cls(ev.get("bootstrap_resamples", 2000), bool(ev.get("base_gate", {}).get("include_flagged", False)),
                   (ft.get("forgetting_budget") or {}).get("max_drop") or FORECAST_BUDGET,
                   study.get("select") or {}, (study.get("report") or {}).get("matched_gain"))


def _build_report(out: Path) -> Path:
    report, settings = out / "report", ReportSettings.of(out)
    store = open_store_for_report(out)
    try:
        trials, all_rows, meta = store.trials(), store.rows(settings.select), store.meta()
    finally:
        store.close()
    report.mkdir(exist_ok=True)
    _write_parquet(all_rows, out / "results.parquet")
    _write_csv(drift_rows(trials), DRIFT_COLUMNS, out / "drift.csv")
    # Directions the base cannot translate give deltas that mean nothing: every mean below is
    # over the others, unless the study opted in (the files above keep every row, with its flag).
    gated = [r for r in all_rows if settings.include_flagged or not r["base_flag"]]
    context, figures = _headline(out, trials, [r for r in gated if r["lr_selected"]], settings)
    context.update(meta=meta, base_quality=base_quality(all_rows), flagged=flagged_directions(all_rows),
                   gate_failures={m: gate_failure_reasons(all_rows, m) for m in gate_failures(all_rows)},
                   include_flagged=settings.include_flagged)
    _matched_gain(out, trials, gated, context, figures, settings)
    write_text_atomic(report / "summary.md", render_markdown(context))
    html_path = report / "index.html"
    write_text_atomic(html_path, render_html(context, figures))
    return html_path


def _headline(out: Path, trials: list[dict], rows: list[dict], settings: ReportSettings) -> tuple[dict, dict]:
    """The tables and figures of the selected trials' ``rows`` (every done trial's when the study
    selects nothing): per category and condition, per trial, per direction, along each axis."""
    report = out / "report"
    table = category_table(trials, rows, settings.resamples)
    summaries = trial_summaries(trials, rows)
    conditions = list(dict.fromkeys(e["condition"] for e in table))
    figures: dict[str, object] = {"by_size": plots.by_size(table, report / "forgetting_by_size.png")}
    heatmaps = []
    for i, condition in enumerate(conditions[:MAX_HEATMAPS]):
        languages, matrix = direction_matrix(trials, rows, condition)
        heatmaps.append((condition, plots.heatmap(languages, matrix, condition, report / f"heatmap_{i}.png")))
    figures["heatmaps"] = heatmaps
    drifts = []
    for i, condition in enumerate(conditions[:MAX_HEATMAPS]):
        targets, outputs, matrix = drift_matrix(trials, condition)
        path = plots.drift(targets, outputs, matrix, condition, report / f"drift_{i}.png")
        if path:
            drifts.append((condition, path))
    figures["drift"] = drifts
    figures["scale"], fit = plots.scale_fit(summaries, report / "forgetting_vs_scale.png")
    figures["gain_loss"] = plots.gain_vs_loss(summaries, report / "gain_vs_loss.png")
    comparisons = axis_comparisons(summaries, settings.resamples)
    figures["comparisons"] = [(axis, entries, plots.comparison(axis, entries, report / f"compare_{i}.png"))
                              for i, (axis, entries) in enumerate(comparisons.items())]
    curves, layers = interpolation_curves(summaries), layer_series(summaries)
    figures["interpolation"] = plots.interpolation_curves(curves, report / "interpolation.png")
    figures["layers"] = plots.layer_accuracy(layers, report / "layer_retrieval.png")
    during = forgetting_curves(summaries) + checkpoint_curves(summaries, rows)
    figures["forgetting_curves"] = plots.forgetting_curves(during, report / "forgetting_curves.png")
    context = {"table": table, "trials": trials, "rows": rows, "summaries": summaries, "fit": fit,
               "examples": _examples(out, summaries, rows), "interpolation": curves, "layers": layers,
               "forgetting_curves": during, "forecast": forecast(summaries, trials, rows, settings.budget),
               "exposure": exposure_table(trials, rows, settings.resamples),
               "languages": language_table(trials, rows)}
    return context, figures


def _matched_gain(out: Path, trials: list[dict], gated: list[dict], context: dict, figures: dict,
                  settings: ReportSettings) -> None:
    """The controlled contrasts of the selected trials, read at their end points and at matched
    gain on the frontiers of every trial (``frontier.csv``, ``matched_gain.csv``), the
    learning-rate sensitivity table, and the contrasts the fitted scale law fails."""
    chosen = selected_trials(trials, settings.select)
    headline = [t for t in trials if t["status"] != "done" or chosen[t["trial_id"]]]
    rows = context["rows"]
    points = frontier_points(trials, gated)
    _write_csv(frontier_rows(points, settings.resamples), FRONTIER_COLUMNS, out / "frontier.csv")
    figures["frontiers"] = plots.frontiers(points, out / "report" / "frontiers.png")
    contrasts = controlled_contrasts(headline, rows, tuple(settings.select))
    readings = matched_gain_readings(contrasts, points, end_points(headline, rows, source="end"),
                                     settings.resamples, settings.matched_gain)
    _write_csv(matched_gain_rows(readings), MATCHED_COLUMNS, out / "matched_gain.csv")
    ratios = defaultdict(list)
    for s in context["summaries"]:
        if s.result.tokens_per_parameter:
            ratios[s.condition].append(s.result.tokens_per_parameter)
    context.update(contrasts=contrasts, matched=readings, budgets=condition_budgets(headline),
                   law=law_contradictions(readings, context["fit"], {c: float(np.mean(v)) for c, v in ratios.items()}),
                   sensitivity=rate_sensitivity(trials, gated, chosen, "finetune.lr") if settings.select else [])


def gate_warnings(out: Path) -> list[str]:
    """One line per base model that the base-quality gate flagged on every direction of ``out``."""
    store = open_store_for_report(out)
    try:
        rows = store.rows()
    finally:
        store.close()
    lines = []
    for model in gate_failures(rows):
        reasons = gate_failure_reasons(rows, model)
        # Too few sentences says nothing of the base's quality; the other reasons do.
        quality = any("too few test sentences" not in r for r in reasons)
        lines.append(f"warning: base model {model} fails the base-quality gate on every direction (eval.base_gate): "
                     f"{'; '.join(reasons)}" + ("; it does not translate these directions well enough for its "
                                               "forgetting deltas to mean anything" if quality else ""))
    return lines


def _write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: row.get(c) for c in columns} for row in rows)


MATCHED_COLUMNS = ["axis", "condition", "value", "category", "gain", "gain_given", "reaches", "end_gain",
                   "end", "end_low", "end_high", "at_gain", "at_gain_low", "at_gain_high",
                   "difference_end", "difference_end_low", "difference_end_high",
                   "difference_at_gain", "difference_at_gain_low", "difference_at_gain_high"]


def matched_gain_rows(readings: list[dict]) -> list[dict]:
    """``matched_gain.csv``: per contrast, condition and category, the end-point and matched-gain
    readings with their intervals, and the difference from the contrast's first condition (an
    empty ``at_gain``: the condition does not reach the gain)."""
    out = []
    for reading in readings:
        diffs = {d["condition"]: d for d in reading["differences"]}
        for entry in reading["conditions"]:
            for category, end in entry["end"].items():
                at = entry["at"].get(category)
                diff = diffs.get(entry["condition"], {"end": {}, "at": {}})
                d_end, d_at = diff["end"].get(category), diff["at"].get(category)
                out.append({"axis": reading["axis"], "condition": entry["condition"], "value": entry["value"],
                            "category": category, "gain": reading["gain"], "gain_given": reading["given"],
                            "reaches": entry["reaches"], "end_gain": entry["end_gain"],
                            "end": end[0], "end_low": end[1], "end_high": end[2],
                            **dict(zip(("at_gain", "at_gain_low", "at_gain_high"), at or (None,) * 3)),
                            **dict(zip(("difference_end", "difference_end_low", "difference_end_high"),
                                       d_end or (None,) * 3)),
                            **dict(zip(("difference_at_gain", "difference_at_gain_low", "difference_at_gain_high"),
                                       d_at or (None,) * 3))})
    return out


def _write_parquet(rows: list[dict], path: Path) -> None:
    columns = {c: [r[c] for r in rows] for c in CSV_COLUMNS}
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp)


def _examples(out: Path, summaries, rows: list[dict]) -> list[dict]:
    """A few translations per category from the trial that forgot most: the directions of each
    category whose chrF dropped most, base output beside fine-tuned output."""
    if not summaries:
        return []
    worst = min(summaries, key=lambda s: s.unseen_chrf if s.unseen_chrf == s.unseen_chrf else 0.0)
    path = out / "trials" / worst.trial_id / "outputs.jsonl"
    if not path.is_file():
        return []
    deltas = {(r["src"], r["tgt"]): (r["category"], r["delta"]) for r in rows
              if r["trial_id"] == worst.trial_id and r["metric"] == "chrf"}
    by_direction: dict[tuple[str, str], list[dict]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            by_direction.setdefault((item["src_lang"], item["tgt_lang"]), []).append(item)
    examples = []
    for category in CATEGORIES:
        directions = sorted((d for d, (c, _) in deltas.items() if c == category), key=lambda d: deltas[d][1])
        for direction in directions[:1]:
            for item in by_direction.get(direction, [])[:EXAMPLES_PER_CATEGORY]:
                examples.append({**item, "category": category, "trial_id": worst.trial_id,
                                 "direction_delta": deltas[direction][1]})
    return examples
