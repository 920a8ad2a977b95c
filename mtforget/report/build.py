"""The study report: ``report/summary.md`` and ``report/index.html`` with a plot, from the store.

Per condition (every grid value except the seed) and direction category, the mean delta over
the category's directions (and seeds) with a 95% percentile-bootstrap interval over those units.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from mtforget.data.categories import CATEGORIES  # noqa: E402
from mtforget.report.stats import bootstrap_mean_ci  # noqa: E402
from mtforget.study.store import ResultStore  # noqa: E402

METRIC_TITLES = {"chrf": "chrF delta", "bleu": "BLEU delta", "off_target": "off-target rate delta"}


def condition_label(trial: dict) -> str:
    """A trial's condition: model, method, size and any other grid value except the seed."""
    grid = {k: v for k, v in json.loads(trial["grid_values"]).items()
            if k not in ("seed", "model.tiny", "finetune.size", "finetune.method")}
    parts = [trial["model"], trial["method"], f"n={trial['finetune_size']}"]
    if trial["alignment"] != "none":
        parts.append(f"align={trial['alignment']}")
    parts += [f"{k}={v}" for k, v in sorted(grid.items())]
    return " ".join(parts)


def category_table(store: ResultStore, resamples: int = 2000) -> list[dict]:
    """Mean delta and bootstrap CI per condition × metric × category."""
    trials = {t["trial_id"]: t for t in store.trials() if t["status"] == "done"}
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    order: dict[str, tuple] = {}
    for row in store.rows():
        trial = trials[row["trial_id"]]
        label = condition_label(trial)
        order.setdefault(label, (trial["model"], trial["method"], trial["alignment"], trial["finetune_size"]))
        groups[(label, row["metric"], row["category"])].append(row["delta"])
    table = []
    for label in sorted(order, key=lambda k: (order[k], k)):
        model, method, alignment, size = order[label]
        for metric in METRIC_TITLES:
            for category in CATEGORIES:
                values = groups.get((label, metric, category))
                if not values:
                    continue
                mean, low, high = bootstrap_mean_ci(values, seed=0, resamples=resamples)
                table.append({"condition": label, "model": model, "method": method, "alignment": alignment,
                              "finetune_size": size, "metric": metric, "category": category,
                              "n": len(values), "mean": mean, "low": low, "high": high})
    return table


def build_report(out: Path) -> Path:
    """Write ``out/report/`` from ``out/results.sqlite``; returns the HTML path."""
    report = out / "report"
    report.mkdir(exist_ok=True)
    resamples = 2000
    if (out / "study.yaml").is_file():
        study = yaml.safe_load((out / "study.yaml").read_text(encoding="utf-8")) or {}
        resamples = study.get("eval", {}).get("bootstrap_resamples", resamples)
    store = ResultStore(out / "results.sqlite")
    try:
        table = category_table(store, resamples)
        trials = store.trials()
        meta = store.meta()
    finally:
        store.close()
    plot = _plot(table, report / "forgetting_by_size.png")
    (report / "summary.md").write_text(_markdown(table, trials, meta), encoding="utf-8")
    html_path = report / "index.html"
    html_path.write_text(_html(table, trials, meta, plot), encoding="utf-8")
    return html_path


def _fmt(entry: dict) -> str:
    scale = 100 if entry["metric"] == "off_target" else 1  # off-target as percentage points
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


def _markdown(table: list[dict], trials: list[dict], meta: dict) -> str:
    done = sum(t["status"] == "done" for t in trials)
    lines = ["# Forgetting summary", "",
             f"{done} of {len(trials)} trials done. Each cell: mean delta (fine-tuned − base) over the "
             "category's directions and seeds, with a 95% bootstrap interval. Off-target deltas are in "
             "percentage points (positive = more output in the wrong language).", ""]
    for metric, title in METRIC_TITLES.items():
        conditions, cells = _pivot(table, metric)
        if not conditions:
            continue
        lines += [f"## {title}", "", "| condition | " + " | ".join(CATEGORIES) + " |",
                  "|---|" + "---|" * len(CATEGORIES)]
        for cond in conditions:
            lines.append(f"| {cond} | " + " | ".join(cells[cond].get(c, "–") for c in CATEGORIES) + " |")
        lines.append("")
    failed = [t for t in trials if t["status"] == "failed"]
    if failed:
        lines += ["## Failed trials", ""] + [f"- `{t['trial_id']}`: {t['reason']}" for t in failed] + [""]
    if "metric_signatures" in meta:
        lines += ["## Metrics", ""] + [f"- {k}: `{v}`" for k, v in meta["metric_signatures"].items()] + [""]
    return "\n".join(lines)


def _plot(table: list[dict], path: Path) -> Path | None:
    """chrF delta against fine-tuning size, one panel per category, one line per model."""
    chrf = [e for e in table if e["metric"] == "chrf"]
    if not chrf:
        return None
    fig, axes = plt.subplots(1, len(CATEGORIES), figsize=(3.2 * len(CATEGORIES), 3.2), sharey=True)
    series: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in chrf:
        series[(e["model"] + " " + e["method"] + ("" if e["alignment"] == "none" else " +align"),
                e["category"])].append(e)
    for ax, category in zip(axes, CATEGORIES):
        for (name, cat), points in sorted(series.items()):
            if cat != category:
                continue
            points.sort(key=lambda e: e["finetune_size"])
            xs = [p["finetune_size"] for p in points]
            ax.errorbar(xs, [p["mean"] for p in points],
                        yerr=[[p["mean"] - p["low"] for p in points], [p["high"] - p["mean"] for p in points]],
                        marker="o", capsize=3, label=name)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(category.replace("_", " "))
        ax.set_xlabel("fine-tuning pairs")
    axes[0].set_ylabel("chrF delta (fine-tuned − base)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _html(table: list[dict], trials: list[dict], meta: dict, plot: Path | None) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mtforget report</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f4f4f4}"
             "td.neg{color:#b00}td.pos{color:#070}img{max-width:100%}</style></head><body>",
             "<h1>Forgetting report</h1>",
             f"<p>{sum(t['status'] == 'done' for t in trials)} of {len(trials)} trials done. Cells: mean delta "
             "(fine-tuned − base) with a 95% bootstrap interval; off-target in percentage points.</p>"]
    if plot:
        parts.append(f"<img src='{e(plot.name)}' alt='chrF delta against fine-tuning size per category'>")
    for metric, title in METRIC_TITLES.items():
        conditions, cells = _pivot(table, metric)
        if not conditions:
            continue
        parts.append(f"<h2>{e(title)}</h2><table><tr><th>condition</th>"
                     + "".join(f"<th>{e(c)}</th>" for c in CATEGORIES) + "</tr>")
        for cond in conditions:
            parts.append(f"<tr><td>{e(cond)}</td>" + "".join(
                f"<td>{e(cells[cond].get(c, '–'))}</td>" for c in CATEGORIES) + "</tr>")
        parts.append("</table>")
    failed = [t for t in trials if t["status"] == "failed"]
    if failed:
        parts.append("<h2>Failed trials</h2><ul>" + "".join(
            f"<li><code>{e(t['trial_id'])}</code>: {e(str(t['reason']))}</li>" for t in failed) + "</ul>")
    parts.append("<h2>Run metadata</h2><table>" + "".join(
        f"<tr><th>{e(str(k))}</th><td>{e(json.dumps(v))}</td></tr>" for k, v in sorted(meta.items())) + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
