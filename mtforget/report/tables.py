"""The numbers a report shows, computed from the store: per-category means with intervals,
per-trial summaries, per-direction matrices and comparisons along each grid axis."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from mtforget.data.categories import CATEGORIES, UNSEEN, categorize
from mtforget.evaluate.drift import UNJUDGED, drift_shares
from mtforget.evaluate.metrics import all_metrics
from mtforget.mitigations import MITIGATIONS
from mtforget.report.stats import bootstrap_mean_ci
from mtforget.study.result import TrialResult
from mtforget.study.selection import dev_loss, flatten_config, selected_value

@dataclass
class TrialSummary:
    """One done trial: its condition and mean chrF deltas on supervised and unseen directions."""

    trial_id: str
    condition: str
    model: str
    method: str
    finetune_size: int
    seed: int
    grid: dict
    result: TrialResult
    supervised_chrf: float
    unseen_chrf: float


def category_table(trials: list[dict], rows: list[dict], resamples: int = 2000) -> list[dict]:
    """Mean delta and bootstrap CI per condition × metric × category."""
    done = {t["trial_id"]: t for t in trials if t["status"] == "done"}
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    order: dict[str, tuple] = {}
    for row in rows:
        trial = done[row["trial_id"]]
        label = trial["condition"]
        order.setdefault(label, (trial["model"], trial["method"], trial["mitigations"], trial["finetune_size"]))
        groups[(label, row["metric"], row["category"])].append(row["delta"])
    table = []
    for label in sorted(order, key=lambda k: (order[k], k)):
        model, method, mitigations, size = order[label]
        for metric in (m.name for m in all_metrics()):
            for category in CATEGORIES:
                values = groups.get((label, metric, category))
                if not values:
                    continue
                mean, low, high = bootstrap_mean_ci(values, seed=0, resamples=resamples)
                table.append({"condition": label, "model": model, "method": method, "mitigations": json.loads(mitigations),
                              "finetune_size": size, "metric": metric, "category": category,
                              "n": len(values), "mean": mean, "low": low, "high": high})
    return table


def trial_summaries(trials: list[dict], rows: list[dict]) -> list[TrialSummary]:
    """Per done trial, mean chrF delta on supervised and on unseen directions."""
    chrf: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["metric"] == "chrf":
            chrf[row["trial_id"]][row["category"]].append(row["delta"])
    out = []
    for t in trials:
        if t["status"] != "done" or t["trial_id"] not in chrf:
            continue
        cats = chrf[t["trial_id"]]
        unseen = [v for c in UNSEEN for v in cats.get(c, [])]
        out.append(TrialSummary(
            t["trial_id"], t["condition"], t["model"], t["method"], t["finetune_size"], t["seed"],
            json.loads(t["grid_values"]), TrialResult.from_json(t["info"]),
            float(np.mean(cats["supervised"])) if cats.get("supervised") else float("nan"),
            float(np.mean(unseen)) if unseen else float("nan"),
        ))
    return out


def direction_matrix(trials: list[dict], rows: list[dict], condition: str,
                     metric: str = "chrf") -> tuple[list[str], np.ndarray]:
    """Languages and the source × target matrix of mean delta for one condition (NaN on the diagonal)."""
    ids = {t["trial_id"] for t in trials if t["status"] == "done" and t["condition"] == condition}
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    languages: dict[str, None] = {}
    for row in rows:
        if row["trial_id"] in ids and row["metric"] == metric:
            cells[(row["src"], row["tgt"])].append(row["delta"])
            languages.update(dict.fromkeys((row["src"], row["tgt"])))
    langs = list(languages)
    matrix = np.full((len(langs), len(langs)), np.nan)
    for (src, tgt), values in cells.items():
        matrix[langs.index(src), langs.index(tgt)] = float(np.mean(values))
    return langs, matrix


def axis_comparisons(summaries: list[TrialSummary], resamples: int = 2000) -> dict[str, list[dict]]:
    """For each condition axis with several values, the mean unseen chrF delta per value.

    Axes are the trial columns (model, method), the architecture and language control each trial
    recorded, and every grid key except the seed and the data size (which has its own plot).
    Means are over trials, with a bootstrap interval.
    """
    axes: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries:
        axes["model"][s.model].append(s.unseen_chrf)
        axes["method"][s.method].append(s.unseen_chrf)
        for fact in ("architecture", "language_control"):
            if getattr(s.result, fact):
                axes[fact.replace("_", " ")][json.dumps(getattr(s.result, fact))].append(s.unseen_chrf)
        for key, value in s.grid.items():
            if key not in ("seed", "finetune.size", "model.tiny", "model.path", "finetune.method"):
                axes[key][json.dumps(value)].append(s.unseen_chrf)
    out = {}
    for axis, groups in axes.items():
        if len(groups) < 2:
            continue
        out[axis] = []
        for value, values in groups.items():
            mean, low, high = bootstrap_mean_ci(values, seed=0, resamples=resamples)
            out[axis].append({"value": value, "n": len(values), "mean": mean, "low": low, "high": high})
    return out


def log_fit(xs: list[float], ys: list[float], seed: int = 0, resamples: int = 1000,
            grid: np.ndarray | None = None) -> dict | None:
    """Least-squares fit y = a + b·log10(x) with a bootstrap band over points (needs ≥ 3 points)."""
    x = np.log10(np.asarray(xs, dtype=float))
    y = np.asarray(ys, dtype=float)
    if x.size < 3 or np.ptp(x) == 0:
        return None
    grid = np.linspace(x.min(), x.max(), 50) if grid is None else grid
    slope, intercept = np.polyfit(x, y, 1)
    rng = np.random.default_rng(seed)
    curves = []
    for _ in range(resamples):
        idx = rng.integers(0, x.size, x.size)
        if np.ptp(x[idx]) == 0:
            continue
        b, a = np.polyfit(x[idx], y[idx], 1)
        curves.append(a + b * grid)
    low, high = np.percentile(np.asarray(curves), [2.5, 97.5], axis=0)
    return {"slope": float(slope), "intercept": float(intercept), "x": 10 ** grid,
            "y": intercept + slope * grid, "low": low, "high": high}


# Analyses added after evaluation: they do not change a trial's scores, so trials that differ
# only in them (and in one condition) still form a controlled contrast.
_ANALYSES = ("eval.interpolation", "eval.representations", "eval.representation_sentences", "eval.during_training.")
# Keys a study may vary together as one condition: a fine-tuning method at its own learning rate.
TIED_AXES = (("finetune.method", "finetune.lr"),)
CONTRAST_CATEGORIES = ("supervised", "unseen_source", "unseen_target", "unseen_both")


def _contrast_groups(flat: dict[str, dict[str, str]]) -> list[tuple[str, dict[str, object]]]:
    """Groups of trials whose configs differ in exactly one key (or one tied pair of keys, which
    must then both vary): the axis and each member's value on it, in a stable order."""
    groups: dict[tuple[str, tuple], list[str]] = defaultdict(list)
    for trial_id, config in flat.items():
        for axis in [(key,) for key in config] + [pair for pair in TIED_AXES if set(pair) <= set(config)]:
            rest = tuple(sorted((k, v) for k, v in config.items() if k not in axis))
            groups[(axis, rest)].append(trial_id)
    out = []
    for (axis, _), members in sorted(groups.items(), key=lambda g: (g[0][0], sorted(g[1]))):
        if any(len({flat[m][key] for m in members}) < 2 for key in axis):
            continue
        values = {m: (json.loads(flat[m][axis[0]]) if len(axis) == 1
                      else " at ".join(f"{key.split('.')[-1]} {json.loads(flat[m][key])}" for key in axis))
                  for m in members}
        out.append(("+".join(axis), values))
    return out


def _condition_keys(trial: dict, selected: tuple[str, ...]) -> dict[str, str]:
    """A trial's config as the keys a contrast may differ in: analyses and selected keys left
    out, and each mitigation's settings as one key holding its label (replay at 0.25 of chosen
    directions differs from none in one mitigation, not in two keys)."""
    labels = json.loads(trial.get("mitigations") or "{}")
    flat = {k: v for k, v in flatten_config(json.loads(trial["config"])).items()
            if not k.startswith(_ANALYSES) and k not in selected}
    for m in MITIGATIONS.values():
        if m.key.startswith(_ANALYSES) or m.name not in labels:
            continue
        flat = {k: v for k, v in flat.items() if k != m.key and not k.startswith(m.key + ".")}
        flat[m.key] = json.dumps(labels[m.name])
    return flat


def _value_order(value) -> tuple:
    """A mitigation off ("none") first, then numbers in numeric order (50 before 3000), then any
    other value in JSON order."""
    if value == "none":
        return (-1, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, json.dumps(value, sort_keys=True))


def controlled_contrasts(trials: list[dict], rows: list[dict], selected: tuple[str, ...] = ()) -> list[dict]:
    """Groups of done trials whose configs differ in exactly one key, one row per trial.

    This is how a mixed grid is read: ``model.tiny`` small vs lm at the same data size is the
    encoder-decoder vs decoder-only contrast, ``finetune.method`` full vs lora the LoRA one (or
    ``finetune.method+finetune.lr`` when each method runs at its own learning rate), and so on,
    with everything else held equal. Each row has the trial's parameter counts and its mean
    chrF delta per category with the paired-bootstrap interval, and the unseen-target off-target
    delta in percentage points.

    ``selected``: keys the study selects per condition (``select``); the trials given are the
    selected ones, which may differ in those keys and still pair (each row records its values).
    """
    done = [t for t in trials if t["status"] == "done"]
    flat = {t["trial_id"]: _condition_keys(t, selected) for t in done}
    means: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in rows:
        means[(row["trial_id"], row["metric"], row["category"])].append(row["delta"])
    by_id = {t["trial_id"]: t for t in done}
    out = []
    for number, (key, values) in enumerate(_contrast_groups(flat)):
        for trial_id in sorted(values, key=lambda m: _value_order(values[m])):
            result = TrialResult.from_json(by_id[trial_id]["info"])
            ci = (result.category_ci or {}).get("chrf", {})
            cells = {}
            for category in CONTRAST_CATEGORIES:
                deltas = means.get((trial_id, "chrf", category))
                if deltas:
                    low, high = ci.get(category, (float("nan"), float("nan")))
                    cells[category] = (float(np.mean(deltas)), low, high)
            off = means.get((trial_id, "off_target", "unseen_target"))
            out.append({"group": number, "axis": key, "value": values[trial_id],
                        "trial_id": trial_id, "condition": by_id[trial_id]["condition"],
                        "selected": {key: selected_value(by_id[trial_id], key) for key in selected},
                        "steps": (result.train or {}).get("steps"), "tokens": (result.train or {}).get("tokens"),
                        "architecture": result.architecture or "", "control": result.language_control or "",
                        "parameters": result.parameters, "trainable": result.trainable_parameters,
                        "chrf": cells, "unseen_target_off_target": 100 * float(np.mean(off)) if off else None})
    return out


def interpolation_curves(summaries: list[TrialSummary]) -> list[dict]:
    """Per trial with a weight-interpolation sweep: per α, the mean chrF delta on supervised and on
    unseen directions (direction-weighted over the three unseen categories) and the unseen-target
    off-target delta in percentage points."""
    curves = []
    for s in summaries:
        sweep = s.result.mitigations.get("interpolation", {}).get("points")
        if not sweep:
            continue
        points = []
        for entry in sorted(sweep, key=lambda e: e["alpha"]):
            cats = entry["categories"]
            unseen = [(c["chrf_delta"], c["directions"]) for name, c in cats.items() if name in UNSEEN]
            weight = sum(n for _, n in unseen)
            off = cats.get("unseen_target", {}).get("off_target_delta")
            points.append({"alpha": entry["alpha"],
                           "supervised": cats.get("supervised", {}).get("chrf_delta", float("nan")),
                           "unseen": sum(d * n for d, n in unseen) / weight if weight else float("nan"),
                           "unseen_target_off_target": 100 * off if off is not None else None})
        curves.append({"trial_id": s.trial_id, "condition": s.condition, "seed": s.seed, "points": points})
    return curves


def layer_series(summaries: list[TrialSummary]) -> list[dict]:
    """Per trial with a representation analysis: mean retrieval accuracy per layer, base and
    fine-tuned, and the accuracies at the layer a mitigation trains (alignment), else the middle one."""
    out = []
    for s in summaries:
        reps = s.result.representations
        if not reps or not reps.get("finetuned", {}).get("mean"):
            continue
        layer = reps["marked_layer"]
        base, tuned = reps["base"], reps["finetuned"]
        index = tuned["layers"].index(layer) if layer in tuned["layers"] else None
        out.append({"trial_id": s.trial_id, "condition": s.condition, "model": s.model,
                    "base_key": s.result.base_dir or s.model, "layers": tuned["layers"],
                    "base": base["mean"], "finetuned": tuned["mean"], "marked_layer": layer,
                    "base_at_layer": base["mean"][index] if index is not None else None,
                    "finetuned_at_layer": tuned["mean"][index] if index is not None else None})
    return out


BASE_METRICS = ("chrf", "bleu", "off_target")


def base_quality(rows: list[dict]) -> list[dict]:
    """Each base model's absolute scores per direction category (all directions, flagged or not).

    One entry per model × category: the mean base chrF, BLEU and off-target rate over the
    category's directions, and how many of them the base-quality gate flagged. A base evaluated
    by several trials counts each direction once.
    """
    seen: dict[tuple, dict] = {}
    for row in rows:
        if row["metric"] in BASE_METRICS:
            entry = seen.setdefault((row["model"], row["category"], row["src"], row["tgt"]),
                                    {"flag": row.get("base_flag") or ""})
            entry[row["metric"]] = row["base"]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for (model, category, _, _), entry in seen.items():
        groups[(model, category)].append(entry)
    out = []
    for model in dict.fromkeys(m for m, _ in groups):
        for category in CATEGORIES:
            entries = groups.get((model, category))
            if not entries:
                continue
            out.append({"model": model, "category": category, "directions": len(entries),
                        "flagged": sum(bool(e["flag"]) for e in entries),
                        **{m: float(np.mean([e[m] for e in entries if m in e])) for m in BASE_METRICS}})
    return out


def flagged_directions(rows: list[dict]) -> dict[str, dict[str, str]]:
    """Per base model, the directions the base-quality gate flagged and why."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        if row["metric"] == "chrf" and row.get("base_flag"):
            out[row["model"]][f"{row['src']}-{row['tgt']}"] = row["base_flag"]
    return dict(out)


def gate_failures(rows: list[dict]) -> list[str]:
    """Base models that the base-quality gate flagged on every direction they were evaluated on."""
    flags: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        if row["metric"] == "chrf":
            flags[row["model"]].append(bool(row.get("base_flag")))
    return [model for model, flagged in flags.items() if flagged and all(flagged)]


# The kinds of reason the gate gives (mtforget.evaluate.forgetting.BaseGate.flag), and what each says.
_GATE_REASONS = (("test sentences", "too few test sentences per direction (eval.max_sentences under "
                  "eval.base_gate.min_sentences), whatever the base's quality"),
                 ("base chrF", "base chrF under eval.base_gate.min_chrf"),
                 ("empty", "empty base outputs"),
                 ("one and the same", "the base repeating one sentence"),
                 ("off-target", "base outputs in the wrong language"))


def gate_failure_reasons(rows: list[dict], model: str) -> list[str]:
    """Why the gate flagged ``model``'s directions: each kind of reason, most frequent first, with
    the share of directions it flagged."""
    flags = [row["base_flag"] for row in rows if row["metric"] == "chrf" and row["model"] == model]
    counts = Counter(said for flag in flags for key, said in _GATE_REASONS if key in flag)
    return [f"{said} ({n} of {len(flags)} directions)" for said, n in counts.most_common()]


def forgetting_curves(summaries: list[TrialSummary]) -> list[dict]:
    """Per trial that sampled forgetting during training: its curve, where a forgetting budget
    stopped it (if one did) and how well the proxy loss followed the sampled change."""
    out = []
    for s in summaries:
        if not s.result or not s.result.forgetting_curve:
            continue
        budget = s.result.mitigations.get("forgetting_budget") or {}
        proxy = s.result.forgetting_proxy or {}
        out.append({"trial_id": s.trial_id, "condition": s.condition, "points": s.result.forgetting_curve,
                    "stopped_at": budget.get("stopped_at"), "kept": budget.get("kept"),
                    "correlation": proxy.get("correlation_with_unseen_chrf")})
    return out


def checkpoint_curves(summaries: list[TrialSummary], rows: list[dict]) -> list[dict]:
    """Per run whose Trainer ``checkpoint-N`` folders were evaluated (``finetune.checkpoints``): the
    forgetting curve they make, in the schema of a trial's ``forgetting_curve`` — per category, the
    mean chrF delta over the category's directions at each checkpoint's step, from the base (step 0)."""
    chrf: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["metric"] == "chrf":
            chrf[row["trial_id"]][row["category"]].append(row["delta"])
    series: dict[str, list[TrialSummary]] = defaultdict(list)
    for s in summaries:
        checkpoint = (s.result.checkpoint or {}) if s.result else {}
        if checkpoint.get("series") and checkpoint.get("step") is not None:
            series[checkpoint["series"]].append(s)
    out = []
    for run, members in series.items():
        members.sort(key=lambda s: s.result.checkpoint["step"])
        categories = [c for c in CATEGORIES if any(chrf[s.trial_id].get(c) for s in members)]
        points = [{"step": 0, "tokens": 0, **{c: 0.0 for c in categories}}]
        for s in members:
            by_category = chrf[s.trial_id]
            points.append({"step": s.result.checkpoint["step"], "tokens": s.result.checkpoint.get("tokens"),
                           **{c: float(np.mean(by_category[c])) for c in categories if by_category.get(c)}})
        name = run.rstrip("/").rsplit("/", 1)[-1]
        out.append({"trial_id": f"{name}/checkpoint-*", "condition": f"{members[0].model} checkpoints of {run}",
                    "points": points, "stopped_at": None, "kept": None, "correlation": None})
    return out


SENSITIVITY_CATEGORIES = ("supervised", "unseen_source", "unseen_target", "unseen_both")


def rate_sensitivity(trials: list[dict], rows: list[dict], chosen: dict[str, bool], key: str) -> list[dict]:
    """Per condition and value of the selected ``key`` (a learning rate), over seeds: the mean chrF
    delta per category, the unseen-target off-target delta in points, the mean dev loss, the
    steps, and how many of the seeds selected it."""
    done = {t["trial_id"]: t for t in trials if t["status"] == "done"}
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    members: dict[tuple, list[dict]] = defaultdict(list)
    for t in done.values():
        members[(t["condition"], selected_value(t, key))].append(t)
    for row in rows:
        t = done.get(row["trial_id"])
        if t is None:
            continue
        cell = values[(t["condition"], selected_value(t, key))]
        if row["metric"] == "chrf":
            cell[row["category"]].append(row["delta"])
        elif row["metric"] == "off_target" and row["category"] == "unseen_target":
            cell["off_target"].append(100 * row["delta"])
    out = []
    for (condition, value), group in sorted(members.items(), key=lambda m: (m[0][0], m[0][1])):
        cell = values[(condition, value)]
        losses = [loss for loss in (dev_loss(t) for t in group) if loss is not None]
        steps = [(TrialResult.from_json(t["info"]).train or {}).get("steps") for t in group]
        out.append({"condition": condition, "value": value, "trials": len(group),
                    "selected": sum(chosen.get(t["trial_id"], False) for t in group),
                    "dev_loss": float(np.mean(losses)) if losses else None,
                    "steps": sorted({s for s in steps if s is not None}),
                    **{c: float(np.mean(cell[c])) if cell.get(c) else None for c in SENSITIVITY_CATEGORIES},
                    "off_target": float(np.mean(cell["off_target"])) if cell.get("off_target") else None})
    return out


def condition_budgets(trials: list[dict]) -> dict[str, str]:
    """Per condition, the optimizer steps and tokens its trials trained for (a range over seeds
    and rates where they differ): data size is not training budget."""
    steps: dict[str, set] = defaultdict(set)
    tokens: dict[str, list[int]] = defaultdict(list)
    for t in trials:
        result = TrialResult.from_json(t["info"]) if t["status"] == "done" else None
        if result is None:
            continue
        train = result.train or {}
        if train.get("steps") is not None:
            steps[t["condition"]].add(train["steps"])
        if train.get("tokens"):
            tokens[t["condition"]].append(train["tokens"])
    out = {}
    for condition in steps:
        s = sorted(steps[condition])
        span = f"{s[0]}" if len(s) == 1 else f"{s[0]}–{s[-1]}"
        mean_tokens = np.mean(tokens[condition]) if tokens[condition] else 0
        out[condition] = f"{span} steps, {mean_tokens / 1e3:,.0f}k tokens" if mean_tokens else f"{span} steps"
    return out


def exposure_table(trials: list[dict], rows: list[dict], resamples: int = 2000) -> list[dict]:
    """For each condition whose training reached beyond its fine-tuning directions (replay,
    alignment), the mean chrF delta per category and exposure, with a bootstrap interval over
    directions and seeds: rehearsed or aligned directions apart from untouched ones."""
    conditions = {t["trial_id"]: t["condition"] for t in trials if t["status"] == "done"}
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    exposed = {conditions[r["trial_id"]] for r in rows
               if r["trial_id"] in conditions and r.get("exposure", "none") != "none"}
    for row in rows:
        condition = conditions.get(row["trial_id"])
        if condition in exposed and row["metric"] == "chrf":
            groups[(condition, row["category"], row["exposure"])].append(row["delta"])
    order = {c: i for i, c in enumerate(CATEGORIES)}
    out = []
    for (condition, category, exposure), values in sorted(groups.items(), key=lambda g: (g[0][0], order[g[0][1]], g[0][2])):
        mean, low, high = bootstrap_mean_ci(values, seed=0, resamples=resamples)
        out.append({"condition": condition, "category": category, "exposure": exposure, "n": len(values),
                    "mean": mean, "low": low, "high": high})
    return out


def _finetuned_languages(result: TrialResult) -> set[str]:
    return {lang for d in result.finetune_directions for lang in d.split("-")} - {result.pivot}


def drift_rows(trials: list[dict]) -> list[dict]:
    """``drift.csv``: per done trial, direction and model (base, fine-tuned), the share of its
    judged outputs in each language class (:mod:`mtforget.evaluate.drift`)."""
    out = []
    for t in trials:
        result = TrialResult.from_json(t["info"]) if t["status"] == "done" else None
        if not result or not result.output_languages:
            continue
        directions = [tuple(d.split("-")) for d in result.finetune_directions]
        replayed = {tuple(d.split("-")) for d in (result.exposure or {}).get("replayed", [])}
        finetuned = _finetuned_languages(result)
        for key, models in sorted(result.output_languages.items()):
            src, tgt = key.split("-")
            category = categorize(src, tgt, directions, replayed)
            for model in ("base", "finetuned"):
                for language_class, share in drift_shares(models[model], src, tgt, result.pivot, finetuned).items():
                    out.append({"trial_id": t["trial_id"], "src": src, "tgt": tgt, "category": category,
                                "model": model, "language_class": language_class, "share": share})
    return out


DRIFT_COLUMNS = ["trial_id", "src", "tgt", "category", "model", "language_class", "share"]


def drift_matrix(trials: list[dict], condition: str, categories: tuple[str, ...] = ("unseen_target", "unseen_both")
                 ) -> tuple[list[str], list[str], np.ndarray]:
    """For one condition's fine-tuned models: per unseen target language (rows), the share of the
    outputs of its directions in ``categories`` that the identifier puts in each language (columns,
    ``(empty)`` included; unjudged outputs left out), averaged over directions and trials."""
    shares: dict[str, list[dict[str, float]]] = defaultdict(list)
    for t in trials:
        result = TrialResult.from_json(t["info"]) if t["status"] == "done" and t["condition"] == condition else None
        if not result or not result.output_languages:
            continue
        directions = [tuple(d.split("-")) for d in result.finetune_directions]
        replayed = {tuple(d.split("-")) for d in (result.exposure or {}).get("replayed", [])}
        for key, models in result.output_languages.items():
            src, tgt = key.split("-")
            if categorize(src, tgt, directions, replayed) not in categories:
                continue
            judged = {lang: n for lang, n in models["finetuned"].items() if lang != UNJUDGED}
            total = sum(judged.values())
            if total:
                shares[tgt].append({lang: n / total for lang, n in judged.items()})
    targets = sorted(shares)
    outputs = sorted({lang for entries in shares.values() for e in entries for lang in e})
    matrix = np.array([[float(np.mean([e.get(lang, 0.0) for e in shares[t]])) for lang in outputs] for t in targets])
    return targets, outputs, matrix.reshape(len(targets), len(outputs))


def language_table(trials: list[dict], rows: list[dict]) -> list[dict]:
    """Per condition and language that none of its fine-tuning directions has: the mean chrF delta
    of the directions (never trained on) into it and out of it, the change of off-target output
    into it in points, and what is known of it (family, script, pre-training weight)."""
    done = {t["trial_id"]: t for t in trials if t["status"] == "done"}
    facts: dict[str, dict] = {}
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    unseen: dict[str, set[str]] = defaultdict(set)
    for t in done.values():
        result = TrialResult.from_json(t["info"])
        if result and result.languages:
            facts.update(result.language_facts or {})
            seen = {lang for d in result.finetune_directions for lang in d.split("-")}
            unseen[t["condition"]] |= set(result.languages) - seen
    for row in rows:
        t = done.get(row["trial_id"])
        if t is None or row["category"] not in UNSEEN:
            continue
        cell = None
        for lang, side in ((row["tgt"], "target"), (row["src"], "source")):
            if lang in unseen[t["condition"]]:
                cell = cells[(t["condition"], lang)]
                if row["metric"] == "chrf":
                    cell[side].append(row["delta"])
                elif row["metric"] == "off_target" and side == "target":
                    cell["off_target"].append(100 * row["delta"])
    out = []
    for (condition, lang), cell in sorted(cells.items()):
        fact = facts.get(lang, {})
        out.append({"condition": condition, "language": lang, "family": fact.get("family"),
                    "script": fact.get("script"), "pretrain_weight": fact.get("pretrain_weight"),
                    **{k: float(np.mean(cell[k])) if cell.get(k) else None for k in ("target", "source", "off_target")},
                    "directions": len(cell.get("target", [])) + len(cell.get("source", []))})
    return out
