"""Rendering the report as Markdown (terminals, papers) and as one HTML page.

Every text that comes from data, models or configs goes through ``html.escape`` in the HTML page,
so a corpus full of markup shows as text and nothing in it runs.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
from collections import defaultdict

from mtforget.data.categories import CATEGORIES
from mtforget.evaluate.metrics import REGISTRY, all_metrics
from mtforget.report.matched import law_heading
from mtforget.report.tables import CONTRAST_CATEGORIES
from mtforget.study.result import TrialResult

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1250px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.8em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;
vertical-align:top}th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;
width:380px}figcaption{font-size:12px;color:#555}code{font-size:12px}.muted{color:#666;font-size:13px}
"""


def _fmt(entry: dict) -> str:
    metric = REGISTRY.get(entry["metric"])
    scale = metric.scale if metric else 1
    return f"{entry['mean'] * scale:+.1f} [{entry['low'] * scale:+.1f}, {entry['high'] * scale:+.1f}]"


def _pivot(table: list[dict], metric: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    conditions: list[str] = []
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for e in table:
        if e["metric"] != metric:
            continue
        if e["condition"] not in conditions:
            conditions.append(e["condition"])
        cells[e["condition"]][e["category"]] = _fmt(e)
    return conditions, cells


def _paired_rows(context: dict) -> list[list[str]]:
    """Per trial and category: mean chrF delta with its paired-bootstrap interval over test sentences."""
    means: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in context["rows"]:
        if row["metric"] == "chrf":
            means[(row["trial_id"], row["category"])].append(row["delta"])
    out = []
    for t in context["trials"]:
        result = TrialResult.from_json(t["info"])
        ci = (result.category_ci or {}).get("chrf", {}) if result else {}
        if not ci:
            continue
        cells = []
        for c in _categories(context):
            values = means.get((t["trial_id"], c))
            cells.append(f"{sum(values) / len(values):+.1f} [{ci[c][0]:+.1f}, {ci[c][1]:+.1f}]" if values and c in ci else "–")
        out.append([t["trial_id"], *cells])
    return out


PAIRED_INTRO = ("Per trial, the mean chrF delta of each category with a 95% paired-bootstrap interval: test "
                "sentences resampled jointly for the base and fine-tuned model (sampling uncertainty of the "
                "test set, where the tables above show the spread over directions and seeds).")


def _trial_rows(context: dict) -> list[list[str]]:
    rows = []
    for t in context["trials"]:
        r = TrialResult.from_json(t["info"])
        if r is None:  # not done: its state and why
            rows.append([t["trial_id"], t["status"], *[""] * 9, str(t["reason"] or "")])
            continue
        train = r.train or {}
        rows.append([t["trial_id"], t["status"], r.architecture or "", r.language_control or "",
                     str(r.parameters or ""), str(r.trainable_parameters or ""),
                     str(train.get("tokens", "")), str(train.get("steps", "")),
                     str(r.overlap_dropped if r.overlap_dropped is not None else ""),
                     ", ".join(r.missing_directions or []), f"{sum((r.timings_s or {}).values()):.0f}",
                     str(t["reason"] or "")])
    return rows


TRIAL_HEADER = ["trial", "status", "architecture", "control", "parameters", "trainable", "fine-tuning tokens",
                "steps", "overlap dropped", "directions without test set", "seconds", "reason"]
INTRO = ("Each cell: mean delta (fine-tuned − base) over the category's directions and seeds, with a "
         "95% bootstrap interval.")


def _intro(context: dict) -> str:
    """``INTRO`` and how to read the deltas of each metric the study computes."""
    shown = {e["metric"] for e in context["table"]}
    notes = [m.delta_note() for m in all_metrics() if not m.optional or m.name in shown]
    return " ".join([INTRO, *(note for note in notes if note)])


def _categories(context: dict) -> list[str]:
    """The categories the study's tables have directions in, in the usual order."""
    present = {e["category"] for e in context["table"]}
    return [c for c in CATEGORIES if c in present]


EXPOSURE_INTRO = ("For conditions whose mitigations trained beyond the fine-tuning directions: the mean chrF "
                  "delta per category and exposure. `replayed` directions were trained on with pairs of their "
                  "own (their own category); `copied_*` and `aligned_*` say which side's language was copied or "
                  "in the alignment objective; `none`: untouched.")
EXPOSURE_HEADER = ["condition", "category", "exposure", "directions", "chrF delta"]


def _exposure_rows(context: dict) -> list[list[str]]:
    return [[e["condition"], e["category"], e["exposure"], str(e["n"]),
             f"{e['mean']:+.1f} [{e['low']:+.1f}, {e['high']:+.1f}]"] for e in context["exposure"]]


LANGUAGE_INTRO = ("Per condition, each language none of its fine-tuning directions has: the mean chrF delta of the "
                  "directions into it and out of it (directions never trained on), the change of off-target output "
                  "into it in percentage points, and what is known of it (family and script; its pre-training "
                  "weight in a tiny base, model.pretrain_mix).")
LANGUAGE_HEADER = ["condition", "language", "family", "script", "pre-training weight", "as target", "as source",
                   "off-target as target"]


def _language_rows(context: dict) -> list[list[str]]:
    return [[e["condition"], e["language"], e["family"] or "–", e["script"] or "–",
             "–" if e["pretrain_weight"] is None else f"{e['pretrain_weight']:g}", _number(e["target"]),
             _number(e["source"]), _number(e["off_target"])] for e in context["languages"]]


def _metric_sections(context: dict) -> list[tuple[str, list[str], dict[str, dict[str, str]]]]:
    """(title, conditions, cells) of each metric with rows in the category table."""
    sections = []
    for metric in all_metrics():
        conditions, cells = _pivot(context["table"], metric.name)
        if conditions:
            sections.append((f"{metric.title} delta", conditions, cells))
    return sections


CONTRAST_INTRO = ("Trials whose configs differ in exactly one key, everything else held equal: each "
                  "group is one controlled comparison. chrF delta per category with its 95% paired-bootstrap "
                  "interval; off-target delta on unseen targets in percentage points.")
CONTRAST_HEADER = ["differs in", "value", "condition", "architecture", "control", "parameters", "trainable",
                   "selected", "steps", "tokens", *(c.replace("_", " ") for c in CONTRAST_CATEGORIES),
                   "off-target unseen tgt"]


def _contrast_rows(context: dict) -> list[list[str]]:
    rows = []
    for c in context.get("contrasts", []):
        cells = [f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]" if cat in c["chrf"] else "–"
                 for cat in CONTRAST_CATEGORIES for m, lo, hi in [c["chrf"].get(cat, (0, 0, 0))]]
        off = c["unseen_target_off_target"]
        value = c["value"] if isinstance(c["value"], str) else json.dumps(c["value"])
        rows.append([c["axis"], value, c["condition"], str(c["architecture"]), str(c["control"]),
                     f"{c['parameters']:,}" if c["parameters"] else "", f"{c['trainable']:,}" if c["trainable"] else "",
                     ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in c.get("selected", {}).items()),
                     str(c.get("steps") or ""), f"{c['tokens']:,}" if c.get("tokens") else "",
                     *cells, f"{off:+.1f}" if off is not None else "–"])
    return rows


SENSITIVITY_INTRO = ("Every learning rate of each condition (the study selects one per condition by the lowest dev "
                     "loss on the fine-tuning directions; `selected` counts the seeds that chose it): mean chrF "
                     "delta per category over seeds and directions, and the off-target delta on unseen targets "
                     "in percentage points.")
SENSITIVITY_HEADER = ["condition", "lr", "selected", "dev loss", "steps", "supervised", "unseen source",
                      "unseen target", "unseen both", "off-target unseen tgt"]


def _number(value: float | None, sign: bool = True) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:+.1f}" if sign else f"{value:.4f}"


def _sensitivity_rows(context: dict) -> list[list[str]]:
    return [[e["condition"], f"{e['value']:g}", f"{e['selected']}/{e['trials']}", _number(e["dev_loss"], False),
             ", ".join(str(s) for s in e["steps"]), *(_number(e[c]) for c in
                                                     ("supervised", "unseen_source", "unseen_target", "unseen_both")),
             _number(e["off_target"])] for e in context["sensitivity"]]


MATCHED_CATEGORIES = ("unseen_source", "unseen_target", "unseen_both")
MATCHED_INTRO = ("Each contrast read twice. End point: the conditions' selected trials, as in the tables above. At "
                 "matched gain G: the forgetting each condition shows where its learning–forgetting frontier "
                 "(frontier.csv: its learning rates and interpolations with the base, measured on every direction) "
                 "reaches a "
                 "supervised chrF gain of G, read off its Pareto front by linear interpolation between neighbouring "
                 "points; G is the largest gain every condition of the contrast reaches, unless report.matched_gain "
                 "sets it. 95% paired bootstrap intervals over directions and seeds; a Δ row is the difference "
                 "from the contrast's first condition; 'not reached': its frontier stops below G.")
MATCHED_HEADER = ["differs in", "condition", "end-point gain",
                  *(f"end point: {c.replace('_', ' ')}" for c in MATCHED_CATEGORIES), "G",
                  *(f"at G: {c.replace('_', ' ')}" for c in MATCHED_CATEGORIES)]
DRIFT_INTRO = ("Per condition, the fine-tuned model's outputs on directions into an unseen language (rows): the share "
               "the language identifier puts in each language (columns; (empty): no output). The diagonal is "
               "on-target output. drift.csv gives every direction's shares by class (target, source, pivot, a "
               "fine-tuned language, other, empty), base and fine-tuned.")
FRONTIER_INTRO = ("Per condition, supervised chrF gain against the change on each unseen category: circles are "
                  "learning rates, dots forgetting-curve checks (a sample of directions, so off the front), triangles "
                  "interpolations with the base, the cross the base; the line joins the condition's Pareto front "
                  "(no other point learns more and forgets less). The points are in frontier.csv.")


def _interval(cell) -> str:
    return f"{cell[0]:+.1f} [{cell[1]:+.1f}, {cell[2]:+.1f}]" if cell else "not reached"


def _matched_rows(context: dict) -> list[list[str]]:
    rows = []
    for reading in context["matched"]:
        gain = "none common" if reading["gain"] is None else (
            f"{reading['gain']:+.1f}" + (" (report.matched_gain)" if reading["given"] else ""))
        for entry in reading["conditions"]:
            rows.append([reading["axis"], entry["condition"], _number(entry["end_gain"]),
                         *(_interval(entry["end"].get(c)) if c in entry["end"] else "–" for c in MATCHED_CATEGORIES),
                         gain, *(_interval(entry["at"].get(c)) if c in entry["end"] else "–"
                                 for c in MATCHED_CATEGORIES)])
        for diff in reading["differences"]:
            rows.append([reading["axis"], f"Δ {diff['condition']} − {reading['conditions'][0]['condition']}", "",
                         *(_interval(diff["end"].get(c)) if c in diff["end"] else "–" for c in MATCHED_CATEGORIES),
                         gain, *(_interval(diff["at"].get(c)) if c in diff["end"] else "–"
                                 for c in MATCHED_CATEGORIES)])
    return rows


INTERPOLATION_INTRO = ("Weight interpolation with the base, θ = (1−α)·θ_base + α·θ_ft, each model evaluated on "
                       "every direction: mean chrF delta on supervised and unseen directions, and the off-target "
                       "delta on unseen targets in percentage points. α=0 is the base, α=1 the fine-tuned model.")
INTERPOLATION_HEADER = ["trial", "α", "supervised chrF Δ", "unseen chrF Δ", "off-target unseen tgt Δ"]
LAYERS_INTRO = ("Cross-lingual retrieval accuracy of mean-pooled hidden states on the test split: each "
                "language's sentence retrieves its pivot translation among all pivot sentences (and back), "
                "top-1 by cosine, averaged over languages; the layer is the one a mitigation trains "
                "(alignment's), or the middle one.")
LAYERS_HEADER = ["trial", "layer", "base accuracy", "fine-tuned accuracy", "best fine-tuned layer"]


def _interpolation_rows(context: dict) -> list[list[str]]:
    rows = []
    for curve in context.get("interpolation", []):
        for p in curve["points"]:
            off = p["unseen_target_off_target"]
            rows.append([curve["trial_id"], f"{p['alpha']:g}", f"{p['supervised']:+.1f}", f"{p['unseen']:+.1f}",
                         f"{off:+.1f}" if off is not None else "–"])
    return rows


def _layer_rows(context: dict) -> list[list[str]]:
    rows = []
    for s in context.get("layers", []):
        best = max(range(len(s["finetuned"])), key=lambda i: s["finetuned"][i])
        rows.append([s["trial_id"], str(s["marked_layer"]),
                     f"{s['base_at_layer']:.3f}" if s["base_at_layer"] is not None else "–",
                     f"{s['finetuned_at_layer']:.3f}" if s["finetuned_at_layer"] is not None else "–",
                     f"{s['layers'][best]} ({s['finetuned'][best]:.3f})"])
    return rows


BASE_INTRO = ("Absolute scores of each base model before fine-tuning, per direction category (mean over "
              "directions). A direction is flagged when the base cannot anchor a delta there: chrF under the "
              "floor, most outputs empty, in the wrong language or one repeated sentence, or too few test "
              "sentences (eval.base_gate).")
BASE_HEADER = ["base model", "category", "directions", "flagged", "chrF", "BLEU", "off-target %"]
MAX_FLAGGED_LISTED = 30


def _base_rows(context: dict) -> list[list[str]]:
    return [[q["model"], q["category"], str(q["directions"]), str(q["flagged"]), f"{q['chrf']:.1f}",
             f"{q['bleu']:.1f}", f"{100 * q['off_target']:.1f}"] for q in context.get("base_quality", [])]


def _gate_lines(context: dict) -> list[str]:
    """The warning and the flagged directions, as plain sentences (both renderers use them)."""
    lines = []
    for model, reasons in context.get("gate_failures", {}).items():
        lines.append(f"Warning: base model {model} fails the base-quality gate on every direction "
                     f"({'; '.join(reasons)}): its deltas are not counted as forgetting (see Base model quality).")
    verb = "are included in" if context.get("include_flagged") else "are left out of"
    for model, flagged in context.get("flagged", {}).items():
        listed = [f"{d} ({reason})" for d, reason in list(flagged.items())[:MAX_FLAGGED_LISTED]]
        more = f", and {len(flagged) - MAX_FLAGGED_LISTED} more" if len(flagged) > MAX_FLAGGED_LISTED else ""
        lines.append(f"{model}: {len(flagged)} flagged direction(s) {verb} every mean: "
                     + ", ".join(listed) + more + ".")
    return lines


CURVES_INTRO = ("Forgetting sampled while each trial fine-tuned (eval.during_training): per category, the mean "
                "chrF change since step 0 over a fixed, seeded sample of directions and sentences. The proxy is "
                "the teacher-forced loss on the unseen directions' dev pairs; r is its correlation with the mean "
                "sampled change on unseen directions (negative when the loss rises as chrF falls). A run's "
                "Trainer checkpoint-N folders evaluated with finetune.checkpoints make a curve too: per category, "
                "the mean chrF delta over every direction of the category at each checkpoint's step.")
CURVES_HEADER = ["trial", "checks", "last step", "unseen change at the last check", "stopped by the budget at", "kept",
                 "proxy r"]
FORECAST_HEADER = ["category", "chrF change per decade", "tokens/parameter within budget", "largest size per model",
                   "held-out error"]


def _curve_rows(context: dict) -> list[list[str]]:
    rows = []
    for c in context.get("forgetting_curves", []):
        last = c["points"][-1]
        unseen = [last[k] for k in ("unseen_source", "unseen_target", "unseen_both") if k in last]
        rows.append([c["trial_id"], str(len(c["points"])), str(last["step"]),
                     f"{sum(unseen) / len(unseen):+.1f}" if unseen else "–",
                     str(c["stopped_at"]) if c["stopped_at"] is not None else "–", c["kept"] or "–",
                     f"{c['correlation']:+.2f}" if c["correlation"] is not None else "–"])
    return rows


def _forecast_intro(forecast: dict) -> str:
    return (f"Forgetting fitted against log10(fine-tuning tokens per parameter) over {forecast['trials']} "
            f"{forecast['method']} trials without a mitigation; the largest ratio, and data size per model, whose "
            f"fitted change stays above −{forecast['budget']:g} chrF (95% interval from refitting on resampled "
            "trials). Held-out error: each model's largest size predicted from the other trials, minus what it "
            "measured.")


def _forecast_rows(context: dict) -> list[list[str]]:
    forecast = context.get("forecast")
    rows = []
    for c in (forecast or {}).get("categories", []):
        slope = f"{c['slope_per_decade']:+.2f}" if c["slope_per_decade"] is not None else "–"
        limit = (f"{c['tokens_per_parameter']:.3g} [{c['low']:.3g}, {c['high']:.3g}]"
                 + (" (extrapolated)" if c["extrapolated"] else "")
                 if np.isfinite(c["tokens_per_parameter"]) else "no limit (no forgetting trend)")
        sizes = "; ".join(f"{m}: {_size(v['size'])} (tried ≤ {v['largest_tried']:,})" for m, v in c["sizes"].items()
                          if np.isfinite(v["size"]))
        held = "; ".join(f"{h['model']} n={h['size']}: {h['error']:+.1f}" for h in c["held_out"])
        rows.append([c["category"], slope, limit, sizes or "–", held or "–"])
    return rows


def _size(size: float) -> str:
    return f"{size:,.0f}" if size >= 1 else "< 1"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + [_md_row(r) for r in rows]


def _md(text: object) -> str:
    """``text`` from the study (labels, ids, reasons) as Markdown that shows it as written: what a
    renderer would take for HTML (a tag, an entity) or for code is backslash-escaped, and a ``|``
    or a line break cannot end a table cell or a list item early."""
    text = " ".join(str(text).split())
    text = _MD_ESCAPED.sub(r"\\\g<0>", text)
    return _MD_ACTIVE.sub(lambda m: "\\" + m.group(0), text)


# A backslash that would escape what follows it; then "<" opening a tag, comment or autolink,
# "&" opening an entity, a table's "|" and a code span's backtick.
_MD_ESCAPED = re.compile(r"\\(?=[!-/:-@\[-`{-~])")
_MD_ACTIVE = re.compile(r"<(?=[A-Za-z/!?])|&(?=#?\w+;)|[|`]")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(_md(c) for c in cells) + " |"


def render_markdown(context: dict) -> str:
    """``summary.md``: the same tables as the HTML page."""
    trials = context["trials"]
    done = sum(t["status"] == "done" for t in trials)
    lines = ["# Forgetting summary", "", f"{done} of {len(trials)} trials done. {_intro(context)}", ""]
    lines += [f"**{_md(line)}**" for line in _gate_lines(context) if line.startswith("Warning")]
    lines += [""] if context.get("gate_failures") else []
    budgets, shown = context.get("budgets", {}), _categories(context)
    for title, conditions, cells in _metric_sections(context):
        lines += [f"## {title}", "", "| condition | trained | " + " | ".join(shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        lines += [_md_row([c, budgets.get(c, ""), *(cells[c].get(k, "–") for k in shown)]) for c in conditions]
        lines.append("")
    if context.get("exposure"):
        lines += ["## Directions by exposure", "", EXPOSURE_INTRO, ""]
        lines += _md_table(EXPOSURE_HEADER, _exposure_rows(context)) + [""]
    if context.get("languages"):
        lines += ["## Forgetting per unseen language", "", LANGUAGE_INTRO, ""]
        lines += _md_table(LANGUAGE_HEADER, _language_rows(context)) + [""]
    if context.get("sensitivity"):
        lines += ["## Learning-rate sensitivity", "", SENSITIVITY_INTRO, ""]
        lines += _md_table(SENSITIVITY_HEADER, _sensitivity_rows(context)) + [""]
    if context["fit"]:
        fit = context["fit"]
        lines += ["## Forgetting against data/model scale", "",
                  f"Unseen-direction chrF delta ≈ {fit['intercept']:+.1f} {fit['slope']:+.1f} · log10(fine-tuning "
                  "tokens / parameters), least squares over trials.", ""]
    contrasts = _contrast_rows(context)
    if contrasts:
        lines += ["## Controlled contrasts", "", CONTRAST_INTRO, "", "| " + " | ".join(CONTRAST_HEADER) + " |",
                  "|---" * len(CONTRAST_HEADER) + "|"]
        lines += [_md_row(r) for r in contrasts] + [""]
    if context.get("matched"):
        lines += ["## At matched gain", "", MATCHED_INTRO, ""]
        lines += _md_table(MATCHED_HEADER, _matched_rows(context)) + [""]
        if context.get("law"):
            lines += [f"**{_md(law_heading(context['fit']))}**", ""]
            lines += [f"- {_md(line)}" for line in context["law"]] + [""]
    if context.get("interpolation"):
        lines += ["## Weight interpolation with the base", "", INTERPOLATION_INTRO, ""]
        lines += _md_table(INTERPOLATION_HEADER, _interpolation_rows(context)) + [""]
    if context.get("layers"):
        lines += ["## Layer-wise cross-lingual retrieval", "", LAYERS_INTRO, ""]
        lines += _md_table(LAYERS_HEADER, _layer_rows(context)) + [""]
    if context.get("forgetting_curves"):
        lines += ["## Forgetting during training", "", CURVES_INTRO, ""]
        lines += _md_table(CURVES_HEADER, _curve_rows(context)) + [""]
    if context.get("forecast"):
        lines += ["## Forecast: how much data within a forgetting budget", "", _forecast_intro(context["forecast"]), ""]
        lines += _md_table(FORECAST_HEADER, _forecast_rows(context)) + [""]
    paired = _paired_rows(context)
    if paired:
        lines += ["## chrF delta per trial, paired bootstrap over test sentences", "", PAIRED_INTRO, "",
                  "| trial | " + " | ".join(_categories(context)) + " |", "|---|" + "---|" * len(_categories(context))]
        lines += [_md_row(r) for r in paired] + [""]
    if context.get("base_quality"):
        lines += ["## Base model quality", "", BASE_INTRO, ""] + _md_table(BASE_HEADER, _base_rows(context)) + [""]
        lines += [f"- {_md(line)}" for line in _gate_lines(context) if not line.startswith("Warning")] + [""]
    failed = [t for t in trials if t["status"] == "failed"]
    if failed:
        lines += ["## Failed trials", ""] + [f"- {_md(t['trial_id'])}: {_md(t['reason'])}" for t in failed] + [""]
    lines += ["## Trials", "", "| " + " | ".join(TRIAL_HEADER) + " |", "|---" * len(TRIAL_HEADER) + "|"]
    lines += [_md_row(r) for r in _trial_rows(context)] + [""]
    meta = context["meta"]
    if "metric_signatures" in meta:
        lines += ["## Metrics", ""] + [f"- {k}: `{v}`" for k, v in meta["metric_signatures"].items()] + [""]
    return "\n".join(lines)


def render_html(context: dict, figures: dict) -> str:
    """``index.html``: one page, inline CSS, figures as PNG files beside it."""
    parts = _html_top(context)
    parts.append(_figure(figures.get("by_size"), "chrF delta against fine-tuning size, per direction category"))
    parts += _html_metric_tables(context)
    parts += _html_figures(context, figures)
    parts += _html_contrasts(context, figures)
    parts += _html_analyses(context, figures)
    parts += _html_examples(context)
    parts += _html_paired(context)
    parts += _html_base_quality(context)
    parts += _html_trials(context)
    parts.append("</body></html>")
    return "\n".join(parts)


def _figure(path, caption: str) -> str:
    e = html.escape
    return (f"<figure><img src='{e(path.name)}' alt='{e(caption)}'>"
            f"<figcaption>{e(caption)}</figcaption></figure>") if path else ""


def _header_row(header: list[str]) -> str:
    return "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"


def _body_rows(rows: list[list[str]], text_columns: int) -> list[str]:
    """Table rows: the first ``text_columns`` cells as text, the others as right-aligned numbers."""
    e = html.escape
    return ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row[:text_columns])
            + "".join(f"<td class='num'>{e(c)}</td>" for c in row[text_columns:]) + "</tr>" for row in rows]


def _html_top(context: dict) -> list[str]:
    """The head of the page, its title, the introduction and the warnings of the base-quality gate."""
    e = html.escape
    trials = context["trials"]
    done = sum(t["status"] == "done" for t in trials)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>mtforget report</title><style>{CSS}</style></head><body>",
             "<h1>Forgetting report</h1>",
             f"<p>{done} of {len(trials)} trials done. {e(_intro(context))}</p>"]
    return parts + [f"<p><strong>{e(line)}</strong></p>" for line in _gate_lines(context) if line.startswith("Warning")]


def _html_metric_tables(context: dict) -> list[str]:
    """One table per metric: mean delta with its interval per condition and category."""
    parts = []
    budgets, shown = context.get("budgets", {}), _categories(context)
    for title, conditions, cells in _metric_sections(context):
        parts.append(f"<h2>{html.escape(title)}</h2><table>" + _header_row(["condition", "trained", *shown]))
        parts += _body_rows([[cond, budgets.get(cond, ""), *(cells[cond].get(c, "–") for c in shown)]
                             for cond in conditions], 2)
        parts.append("</table>")
    if context.get("exposure"):
        parts.append(f"<h2>Directions by exposure</h2><p class='muted'>{html.escape(EXPOSURE_INTRO)}</p>"
                     "<table>" + _header_row(EXPOSURE_HEADER))
        parts += _body_rows(_exposure_rows(context), 3)
        parts.append("</table>")
    if context.get("languages"):
        parts.append(f"<h2>Forgetting per unseen language</h2><p class='muted'>{html.escape(LANGUAGE_INTRO)}</p>"
                     "<table>" + _header_row(LANGUAGE_HEADER))
        parts += _body_rows(_language_rows(context), 4)
        parts.append("</table>")
    if context.get("sensitivity"):
        parts.append(f"<h2>Learning-rate sensitivity</h2><p class='muted'>{html.escape(SENSITIVITY_INTRO)}</p>"
                     "<table>" + _header_row(SENSITIVITY_HEADER))
        parts += _body_rows(_sensitivity_rows(context), 3)
        parts.append("</table>")
    return parts


def _html_figures(context: dict, figures: dict) -> list[str]:
    """Forgetting against scale, gain against loss, and the conditions compared along each axis."""
    e = html.escape
    parts = []
    if figures.get("scale"):
        fit = context["fit"]
        text = (f"Fit: unseen chrF delta ≈ {fit['intercept']:+.1f} {fit['slope']:+.1f} · log10(tokens/parameters)."
                if fit else "Too few trials for a fit.")
        parts.append("<h2>Forgetting against fine-tuning data per parameter</h2>"
                     f"<p class='muted'>{e(text)}</p>"
                     + _figure(figures["scale"], "unseen-direction chrF delta against tokens per parameter"))
    if figures.get("gain_loss"):
        parts.append("<h2>Gain on fine-tuned directions against loss on unseen ones</h2>"
                     + _figure(figures["gain_loss"], "one point per trial"))
    if figures.get("comparisons"):
        parts.append("<h2>Conditions compared</h2><p class='muted'>Mean chrF delta on unseen directions per "
                     "value of each condition axis, over trials, with a 95% bootstrap interval.</p><div class='grid'>")
        for axis, entries, path in figures["comparisons"]:
            parts.append(_figure(path, f"{axis}: " + ", ".join(
                f"{en['value'].strip(chr(34))} {en['mean']:+.1f}" for en in entries)))
        parts.append("</div>")
    return parts


def _html_contrasts(context: dict, figures: dict) -> list[str]:
    """The controlled contrasts, read at their end points and at matched gain, and the frontiers."""
    e = html.escape
    parts = []
    contrasts = _contrast_rows(context)
    if contrasts:
        parts += [f"<h2>Controlled contrasts</h2><p class='muted'>{e(CONTRAST_INTRO)}</p><table>"
                  + _header_row(CONTRAST_HEADER), *_body_rows(contrasts, 5), "</table>"]
    if context.get("matched"):
        parts += [f"<h2>At matched gain</h2><p class='muted'>{e(MATCHED_INTRO)}</p><table>"
                  + _header_row(MATCHED_HEADER), *_body_rows(_matched_rows(context), 2), "</table>"]
        if context.get("law"):
            parts.append(f"<p><strong>{e(law_heading(context['fit']))}</strong></p><ul>"
                         + "".join(f"<li>{e(line)}</li>" for line in context["law"]) + "</ul>")
    if figures.get("frontiers"):
        parts.append("<h2>Learning–forgetting frontiers</h2><p class='muted'>" + e(FRONTIER_INTRO) + "</p>"
                     + _figure(figures["frontiers"], "supervised gain against unseen change, per condition"))
    return parts


def _html_analyses(context: dict, figures: dict) -> list[str]:
    """Weight interpolation, layer-wise retrieval and the per-direction heatmaps."""
    e = html.escape
    parts = []
    forecast_intro = _forecast_intro(context["forecast"]) if context.get("forecast") else ""
    for key, title, intro, header, rows in (
            ("interpolation", "Weight interpolation with the base", INTERPOLATION_INTRO, INTERPOLATION_HEADER,
             _interpolation_rows(context)),
            ("layers", "Layer-wise cross-lingual retrieval", LAYERS_INTRO, LAYERS_HEADER, _layer_rows(context)),
            ("forgetting_curves", "Forgetting during training", CURVES_INTRO, CURVES_HEADER, _curve_rows(context)),
            ("forecast", "Forecast: how much data within a forgetting budget", forecast_intro, FORECAST_HEADER,
             _forecast_rows(context))):
        if not rows:
            continue
        parts.append(f"<h2>{e(title)}</h2><p class='muted'>{e(intro)}</p>"
                     + _figure(figures.get(key), title) + "<table>" + _header_row(header))
        parts += _body_rows(rows, 1)
        parts.append("</table>")
    if figures.get("heatmaps"):
        parts.append("<h2>chrF delta per direction</h2><div class='grid'>")
        parts += [_figure(path, condition) for condition, path in figures["heatmaps"]]
        parts.append("</div>")
    if figures.get("drift"):
        parts.append(f"<h2>Where unseen targets drift</h2><p class='muted'>{e(DRIFT_INTRO)}</p><div class='grid'>")
        parts += [_figure(path, condition) for condition, path in figures["drift"]]
        parts.append("</div>")
    return parts


def _html_examples(context: dict) -> list[str]:
    """Example translations from the trial that forgot most."""
    e = html.escape
    if not context["examples"]:
        return []
    parts = [f"<h2>Example translations</h2><p class='muted'>From trial "
             f"<code>{e(context['examples'][0]['trial_id'])}</code>, the direction of each category "
             "whose chrF dropped most.</p><table><tr><th>category</th><th>direction</th><th>source</th>"
             "<th>reference</th><th>base</th><th>fine-tuned</th></tr>"]
    parts += _body_rows([[str(v) for v in (
        ex["category"], f"{ex['src_lang']}→{ex['tgt_lang']} ({ex['direction_delta']:+.1f})",
        ex["source"], ex["reference"], ex["base"], ex["finetuned"])] for ex in context["examples"]], 6)
    return parts + ["</table>"]


def _html_paired(context: dict) -> list[str]:
    paired = _paired_rows(context)
    if not paired:
        return []
    return [f"<h2>chrF delta per trial, paired bootstrap</h2><p class='muted'>{html.escape(PAIRED_INTRO)}</p>"
            "<table>" + _header_row(["trial", *_categories(context)]), *_body_rows(paired, 1), "</table>"]


def _html_base_quality(context: dict) -> list[str]:
    e = html.escape
    if not context.get("base_quality"):
        return []
    parts = [f"<h2>Base model quality</h2><p class='muted'>{e(BASE_INTRO)}</p><table>" + _header_row(BASE_HEADER)]
    parts += _body_rows(_base_rows(context), 2)
    parts.append("</table>")
    return parts + [f"<p class='muted'>{e(line)}</p>" for line in _gate_lines(context) if not line.startswith("Warning")]


def _html_trials(context: dict) -> list[str]:
    """Every trial, and the run's metadata."""
    e = html.escape
    parts = ["<h2>Trials</h2><table>" + _header_row(TRIAL_HEADER)]
    parts += _body_rows(_trial_rows(context), len(TRIAL_HEADER))
    parts.append("</table>")
    parts.append("<h2>Run metadata</h2><table>" + "".join(
        f"<tr><th>{e(str(k))}</th><td><code>{e(json.dumps(v))}</code></td></tr>"
        for k, v in sorted(context["meta"].items())) + "</table>")
    return parts
