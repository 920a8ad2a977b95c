"""Choosing a swept key per condition (``select``): which finished trials the headline reads.

A study that sweeps ``finetune.lr`` and says ``select: {finetune.lr: dev_loss}`` compares its
conditions each at its own rate: for every combination of the other keys (model, method,
mitigations, size, seed ...), the trial of lowest dev loss on the fine-tuning directions. The rule
never looks at what the other directions lose, so the choice does not favour a condition for
forgetting less. Selection is a pure function of the finished trials and their recorded dev
losses: a resumed or rerun study selects the same trials.
"""

from __future__ import annotations

import json
import math

from mtforget.study.config import EXECUTION_KEYS


def flatten_config(config: dict, prefix: str = "") -> dict[str, str]:
    """A trial's resolved config as ``{dotted key: JSON value}``, without the keys that say how a
    study runs or is read (:data:`~mtforget.study.config.EXECUTION_KEYS`)."""
    flat = {}
    for key, value in config.items():
        if not prefix and key in EXECUTION_KEYS:
            continue
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return flat


def dev_loss(trial: dict) -> float | None:
    """The best dev loss a done trial recorded on its fine-tuning directions (None without one)."""
    if trial["status"] != "done" or not trial.get("info"):
        return None
    loss = (json.loads(trial["info"]).get("train") or {}).get("best_dev_loss")
    return float(loss) if loss is not None and math.isfinite(loss) else None


def selection_group(trial: dict, select: dict[str, str]) -> tuple:
    """What a trial shares with the trials it is chosen among: its config without the selected keys."""
    flat = flatten_config(json.loads(trial["config"]))
    return tuple(sorted((k, v) for k, v in flat.items() if k not in select))


def selected_trials(trials: list[dict], select: dict[str, str]) -> dict[str, bool]:
    """Per trial id (store rows of :meth:`~mtforget.study.store.ResultStore.trials`), whether the
    headline reads it. Without ``select`` every done trial is; with it, in each group of
    :func:`selection_group`, the done trial of lowest dev loss (ties: the first in the store's
    order). A group where no trial has a dev loss selects none."""
    if not select:
        return {t["trial_id"]: t["status"] == "done" for t in trials}
    best: dict[tuple, tuple[float, str]] = {}
    for trial in trials:
        loss = dev_loss(trial)
        if loss is None:
            continue
        group = selection_group(trial, select)
        if group not in best or loss < best[group][0]:
            best[group] = (loss, trial["trial_id"])
    chosen = {trial_id for _, trial_id in best.values()}
    return {t["trial_id"]: t["trial_id"] in chosen for t in trials}


def selected_value(trial: dict, key: str):
    """The value of dotted ``key`` in a trial's config (the rate it was trained at, say)."""
    node = json.loads(trial["config"])
    for part in key.split("."):
        node = node[part]
    return node
