"""The report's figures (matplotlib, PNG files beside ``index.html``)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np

from mtforget.atomic import atomic_path
from mtforget.data.categories import CATEGORIES, UNSEEN
from mtforget.evaluate.metrics import get_metric
from mtforget.report.frontier import Point, front_of
from mtforget.report.tables import TrialSummary, log_fit


def _save(fig, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def by_size(table: list[dict], path: Path, metric: str = "chrf") -> Path | None:
    """The delta of ``metric`` against fine-tuning size, one panel per category, one line per model/method."""
    # Checkpoints made elsewhere have no fine-tuning size here (0): they are not on this axis.
    entries = [e for e in table if e["metric"] == metric and e["finetune_size"] > 0]
    if not entries:
        return None
    categories = [c for c in CATEGORIES if any(e["category"] == c for e in entries)]
    fig, axes = plt.subplots(1, len(categories), figsize=(3.2 * len(categories), 3.2), sharey=True, squeeze=False)
    axes = axes[0]
    series: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in entries:
        name = " ".join(part for part in e["condition"].split() if not part.startswith("n="))
        series[(name, e["category"])].append(e)
    for ax, category in zip(axes, categories):
        for (name, cat), points in sorted(series.items()):
            if cat != category:
                continue
            points.sort(key=lambda e: e["finetune_size"])
            ax.errorbar([p["finetune_size"] for p in points], [p["mean"] for p in points],
                        yerr=[[p["mean"] - p["low"] for p in points], [p["high"] - p["mean"] for p in points]],
                        marker="o", capsize=3, label=name)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(category.replace("_", " "))
        ax.set_xlabel("fine-tuning pairs")
    axes[0].set_ylabel(f"{get_metric(metric).title} delta (fine-tuned − base)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02))
    return _save(fig, path)


def heatmap(languages: list[str], matrix: np.ndarray, title: str, path: Path, metric: str = "chrf") -> Path:
    """Source × target matrix of the delta of ``metric``, diverging around zero (blue is better)."""
    scored = get_metric(metric)
    size = max(3.5, 0.45 * len(languages) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    limit = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
    image = ax.imshow(matrix, cmap="RdBu" if scored.higher_is_better else "RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(languages)), languages, rotation=90)
    ax.set_yticks(range(len(languages)), languages)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=f"{scored.title} delta")
    return _save(fig, path)


def scale_fit(summaries: list[TrialSummary], path: Path) -> tuple[Path | None, dict | None]:
    """Unseen-direction chrF delta against fine-tuning tokens per model parameter, with a fit."""
    points = [(s.result.tokens_per_parameter, s.unseen_chrf, s.model) for s in summaries
              if s.result.tokens_per_parameter and np.isfinite(s.unseen_chrf)]
    if len(points) < 2:
        return None, None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for model in sorted({p[2] for p in points}):
        xs = [p[0] for p in points if p[2] == model]
        ax.scatter(xs, [p[1] for p in points if p[2] == model], label=model, zorder=3)
    fit = log_fit([p[0] for p in points], [p[1] for p in points])
    if fit:
        ax.plot(fit["x"], fit["y"], color="black", lw=1,
                label=f"fit: {fit['slope']:+.1f} chrF per 10× tokens/param")
        ax.fill_between(fit["x"], fit["low"], fit["high"], color="grey", alpha=0.25, label="95% bootstrap band")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("fine-tuning tokens / model parameters")
    ax.set_ylabel("mean chrF delta, unseen directions")
    ax.legend(fontsize=7)
    return _save(fig, path), fit


def gain_vs_loss(summaries: list[TrialSummary], path: Path) -> Path | None:
    """One point per trial: gain on fine-tuned directions against change on unseen ones."""
    points = [s for s in summaries if np.isfinite(s.supervised_chrf) and np.isfinite(s.unseen_chrf)]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for model in sorted({s.model + " " + s.method for s in points}):
        group = [s for s in points if s.model + " " + s.method == model]
        ax.scatter([s.supervised_chrf for s in group], [s.unseen_chrf for s in group], label=model, zorder=3)
        for s in group:
            ax.annotate(f"n={s.finetune_size}", (s.supervised_chrf, s.unseen_chrf), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("chrF delta, supervised directions (gain)")
    ax.set_ylabel("chrF delta, unseen directions (loss)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def comparison(axis: str, entries: list[dict], path: Path) -> Path:
    """Mean unseen chrF delta per value of one condition axis, with intervals."""
    fig, ax = plt.subplots(figsize=(max(3.5, 1.2 * len(entries) + 1.5), 3.2))
    xs = range(len(entries))
    ax.bar(xs, [e["mean"] for e in entries], color="#7a9cc6",
           yerr=[[e["mean"] - e["low"] for e in entries], [e["high"] - e["mean"] for e in entries]], capsize=4)
    ax.set_xticks(list(xs), [e["value"].strip('"') for e in entries], rotation=20, fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("mean chrF delta, unseen")
    ax.set_title(axis, fontsize=9)
    return _save(fig, path)


def interpolation_curves(curves: list[dict], path: Path) -> Path | None:
    """Weight interpolation with the base: gain on fine-tuned directions against loss on unseen
    ones, one line per trial from α=0 (the base, at the origin) to α=1 (the fine-tuned model)."""
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    repeated = {c["condition"] for c in curves if sum(o["condition"] == c["condition"] for o in curves) > 1}
    for curve in curves:
        points = curve["points"]
        xs, ys = [p["supervised"] for p in points], [p["unseen"] for p in points]
        # Seeds of one condition are told apart in the legend.
        label = f"{curve['condition']} seed {curve['seed']}" if curve["condition"] in repeated else curve["condition"]
        line, = ax.plot(xs, ys, marker="o", label=label)
        for p in points:
            ax.annotate(f"{p['alpha']:g}", (p["supervised"], p["unseen"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color=line.get_color())
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("supervised chrF delta (gain)")
    ax.set_ylabel("unseen chrF delta (loss)")
    ax.set_title("θ = (1−α)·θ_base + α·θ_ft, labelled by α")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def layer_accuracy(series: list[dict], path: Path) -> Path | None:
    """Cross-lingual retrieval accuracy per layer: the base (dashed) and each fine-tuned trial."""
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    drawn_bases = set()
    for s in series:
        if s["base_key"] not in drawn_bases:
            drawn_bases.add(s["base_key"])
            ax.plot(s["layers"], s["base"], ls="--", color="grey", marker=".", label=f"{s['model']} base")
        ax.plot(s["layers"], s["finetuned"], marker="o", label=s["condition"])
        ax.axvline(s["marked_layer"], color="#ccc", lw=0.8, zorder=0)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("retrieval accuracy (top-1, with the pivot)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(fig, path)


MAX_CURVE_TRIALS = 6


def forgetting_curves(curves: list[dict], path: Path) -> Path | None:
    """Sampled chrF change per category while each trial fine-tunes, against steps (left) and
    fine-tuning tokens (right); a dotted line where a forgetting budget stopped training."""
    if not curves:
        return None
    shown = curves[:MAX_CURVE_TRIALS]
    fig, axes = plt.subplots(len(shown), 2, figsize=(9, 2.6 * len(shown)), squeeze=False)
    for (by_step, by_tokens), curve in zip(axes, shown):
        points = curve["points"]
        categories = [c for c in CATEGORIES if c in points[0]]
        for category in categories:
            shown_points = [p for p in points if category in p]
            ys = [p[category] for p in shown_points]
            by_step.plot([p["step"] for p in shown_points], ys, marker=".", label=category)
            # Tokens are known only where the run counted them (a Trainer without include_num_input_tokens_seen).
            counted = [(p["tokens"], p[category]) for p in shown_points if p.get("tokens") is not None]
            by_tokens.plot([t for t, _ in counted], [y for _, y in counted], marker=".", label=category)
        for ax, x_label in ((by_step, "step"), (by_tokens, "fine-tuning tokens")):
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xlabel(x_label)
            ax.set_ylabel("chrF change")
        if not any(p.get("tokens") for p in points):
            by_tokens.text(0.5, 0.5, "fine-tuning tokens not counted", ha="center", va="center",
                           transform=by_tokens.transAxes, fontsize=8, color="grey")
        if curve["stopped_at"] is not None:
            by_step.axvline(curve["stopped_at"], color="black", ls=":", lw=1)
        by_step.set_title(curve["condition"], fontsize=8, loc="left")
        by_tokens.legend(fontsize=6, loc="lower left")
    return _save(fig, path)


FRONTIER_MARKERS = {"base": "x", "lr": "o", "step": ".", "alpha": "^", "checkpoint": "s"}


def frontiers(points: list[Point], path: Path) -> Path | None:
    """Gain on the fine-tuning directions against the change on each unseen category, one colour
    per condition: its frontier points by source (marker) and its Pareto front (line)."""
    conditions = list(dict.fromkeys(p.condition for p in points if p.source != "base"))
    categories = [c for c in UNSEEN if any(p.deltas.get(c) for p in points)]
    if not conditions or not categories:
        return None
    fig, axes = plt.subplots(1, len(categories), figsize=(4.2 * len(categories), 3.8), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab20")
    for ax, category in zip(axes[0], categories):
        for i, condition in enumerate(conditions):
            members = [p for p in points if p.condition == condition]
            colour = colours(i % 20)
            for source, marker in FRONTIER_MARKERS.items():
                chosen = [p for p in members if p.source == source and np.isfinite(p.mean_delta(category))]
                ax.scatter([p.mean_gain() for p in chosen], [p.mean_delta(category) for p in chosen],
                           marker=marker, color=colour, s=18, alpha=0.8)
            front = front_of(members, category)
            ax.plot([p.mean_gain() for p in front], [p.mean_delta(category) for p in front], color=colour, lw=1.2,
                    label=condition)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(category.replace("_", " "))
        ax.set_xlabel("chrF gain, supervised directions")
    axes[0][0].set_ylabel("chrF delta (line: Pareto front)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 3), fontsize=7, bbox_to_anchor=(0.5, -0.02))
    return _save(fig, path)


def drift(targets: list[str], outputs: list[str], matrix: np.ndarray, title: str, path: Path) -> Path | None:
    """Unseen target language (rows) × the language its fine-tuned outputs are in (columns), as
    shares of the judged outputs: the diagonal is on-target, the rest is where output drifted."""
    if not targets or not outputs:
        return None
    fig, ax = plt.subplots(figsize=(max(3.5, 0.5 * len(outputs) + 2), max(2.5, 0.45 * len(targets) + 1.5)))
    image = ax.imshow(matrix, cmap="Greys", vmin=0, vmax=1, aspect="auto")
    for i in range(len(targets)):
        for j in range(len(outputs)):
            if matrix[i, j] >= 0.05:
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(outputs)), outputs, rotation=90)
    ax.set_yticks(range(len(targets)), targets)
    ax.set_xlabel("language of the output")
    ax.set_ylabel("target (unseen)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="share of outputs")
    return _save(fig, path)
