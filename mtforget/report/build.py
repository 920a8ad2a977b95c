"""Build a study's report from its store: ``report/summary.md``, ``report/index.html`` with its
figures, and ``results.parquet`` beside ``results.csv``.

Per condition (every grid value except the seed) and direction category, the mean delta over the
category's directions (and seeds) with a 95% percentile-bootstrap interval over those units.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mtforget.atomic import atomic_path, write_text_atomic
from mtforget.data.categories import CATEGORIES
from mtforget.errors import UsageError
from mtforget.report import plots
from mtforget.report.page import render_html, render_markdown
from mtforget.report.forecast import forecast
from mtforget.report.tables import (axis_comparisons, base_quality, category_table, checkpoint_curves, controlled_contrasts,
                                    direction_matrix, flagged_directions, forgetting_curves, gate_failure_reasons,
                                    gate_failures,
                                    interpolation_curves, layer_series, trial_summaries)
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


def _build_report(out: Path) -> Path:
    report = out / "report"
    resamples, include_flagged, budget = 2000, False, FORECAST_BUDGET
    if (out / "study.yaml").is_file():
        study = yaml.safe_load((out / "study.yaml").read_text(encoding="utf-8")) or {}
        resamples = study.get("eval", {}).get("bootstrap_resamples", resamples)
        include_flagged = bool(study.get("eval", {}).get("base_gate", {}).get("include_flagged", False))
        budget = (study.get("finetune", {}).get("forgetting_budget") or {}).get("max_drop") or budget
    store = open_store_for_report(out)
    try:
        trials, all_rows, meta = store.trials(), store.rows(), store.meta()
    finally:
        store.close()
    report.mkdir(exist_ok=True)
    _write_parquet(all_rows, out / "results.parquet")
    # Directions the base cannot translate give deltas that mean nothing: every mean below is
    # over the others, unless the study opted in (the files above keep every row, with its flag).
    rows = [r for r in all_rows if include_flagged or not r["base_flag"]]

    table = category_table(trials, rows, resamples)
    summaries = trial_summaries(trials, rows)
    conditions = list(dict.fromkeys(e["condition"] for e in table))
    figures: dict[str, object] = {"by_size": plots.by_size(table, report / "forgetting_by_size.png")}
    heatmaps = []
    for i, condition in enumerate(conditions[:MAX_HEATMAPS]):
        languages, matrix = direction_matrix(trials, rows, condition)
        heatmaps.append((condition, plots.heatmap(languages, matrix, condition, report / f"heatmap_{i}.png")))
    figures["heatmaps"] = heatmaps
    figures["scale"], fit = plots.scale_fit(summaries, report / "forgetting_vs_scale.png")
    figures["gain_loss"] = plots.gain_vs_loss(summaries, report / "gain_vs_loss.png")
    comparisons = axis_comparisons(summaries, resamples)
    figures["comparisons"] = [(axis, entries, plots.comparison(axis, entries, report / f"compare_{i}.png"))
                              for i, (axis, entries) in enumerate(comparisons.items())]
    examples = _examples(out, summaries, rows)
    curves, layers = interpolation_curves(summaries), layer_series(summaries)
    figures["interpolation"] = plots.interpolation_curves(curves, report / "interpolation.png")
    figures["layers"] = plots.layer_accuracy(layers, report / "layer_retrieval.png")
    during = forgetting_curves(summaries) + checkpoint_curves(summaries, rows)
    figures["forgetting_curves"] = plots.forgetting_curves(during, report / "forgetting_curves.png")

    context = {"table": table, "trials": trials, "rows": rows, "meta": meta, "summaries": summaries, "fit": fit,
               "examples": examples, "contrasts": controlled_contrasts(trials, rows), "interpolation": curves,
               "layers": layers, "base_quality": base_quality(all_rows), "flagged": flagged_directions(all_rows),
               "gate_failures": {m: gate_failure_reasons(all_rows, m) for m in gate_failures(all_rows)}, "include_flagged": include_flagged,
               "forgetting_curves": during, "forecast": forecast(summaries, trials, rows, budget)}
    write_text_atomic(report / "summary.md", render_markdown(context))
    html_path = report / "index.html"
    write_text_atomic(html_path, render_html(context, figures))
    return html_path


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
