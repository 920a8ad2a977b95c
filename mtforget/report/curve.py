"""The report of a ``forgetting_curve.json`` that :class:`~mtforget.integrations.transformers.ForgettingCallback`
wrote into a Trainer's output folder: ``mtforget report <output_dir>`` writes
``forgetting_curve.md`` (the table of every check) and ``forgetting_curve.png`` (the plot a study's
report draws for a trial's curve) beside it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from mtforget.data.categories import CATEGORIES
from mtforget.errors import UsageError

CURVE_FILE = "forgetting_curve.json"


def read_curve(path: str | Path) -> dict:
    """A ``forgetting_curve.json`` (the file, or the folder holding it)."""
    path = Path(path)
    path = path / CURVE_FILE if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a forgetting curve ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("forgetting_curve"), list) or not data["forgetting_curve"]:
        raise UsageError(f"{path}: not a forgetting curve (no forgetting_curve points)")
    return data


def curve_report(folder: Path) -> Path:
    """Write ``forgetting_curve.md`` and ``forgetting_curve.png`` beside ``folder``'s curve; the
    markdown's path."""
    from mtforget.report import plots
    from mtforget.report.page import _md_table

    data = read_curve(folder)
    points = data["forgetting_curve"]
    categories = [c for c in CATEGORIES if any(c in p for p in points)]
    metric = data.get("metric", "chrf")
    rows = [[str(p["step"]), "–" if p.get("tokens") is None else str(p["tokens"]),
             *(f"{p[c]:+.2f}" if c in p else "–" for c in categories)] for p in points]
    entry = {"trial_id": folder.name, "condition": f"{data.get('base', '')} (study {data.get('study', '')})",
             "points": points, "stopped_at": data.get("stopped_at"), "kept": None, "correlation": None}
    plots.forgetting_curves([entry], folder / "forgetting_curve.png")
    lines = ["# Forgetting during training", "",
             f"Base {data.get('base')}, study {data.get('study')}: per direction category, the mean {metric} change "
             f"since step 0 over a fixed, seeded sample of directions and sentences, checked every "
             f"{data.get('every')} optimizer steps.", ""]
    lines += _md_table(["step", "tokens", *categories], rows) + [""]
    proxy = data.get("forgetting_proxy") or {}
    if proxy.get("correlation_with_unseen_chrf") is not None:
        lines += [f"Proxy (teacher-forced loss on unseen dev pairs) vs the unseen change: r = "
                  f"{proxy['correlation_with_unseen_chrf']:+.2f}.", ""]
    if data.get("stopped_at") is not None:
        lines += [f"Stopped at step {data['stopped_at']}: {data.get('reason')}.", ""]
    lines += ["![forgetting curve](forgetting_curve.png)", ""]
    path = folder / "forgetting_curve.md"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)
    return path
