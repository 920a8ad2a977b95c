"""Evaluate a model on every direction, and turn base vs fine-tuned scores into forgetting rows."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from mtforget.data.categories import categorize
from mtforget.data.corpus import Segment
from mtforget.data.splits import direction_examples
from mtforget.evaluate.bootstrap import interval, paired_deltas
from mtforget.evaluate.generate import translate
from mtforget.evaluate.lid import off_target_rate
from mtforget.evaluate.metrics import score
from mtforget.models.language import LanguageTokens

METRICS = ("chrf", "chrf++", "bleu", "off_target")


@dataclass(frozen=True)
class EvalSettings:
    """Decoding settings; part of the cache key of a base evaluation."""

    max_sentences: int = 50  # per direction
    batch_size: int = 128
    max_new_tokens: int = 64


def evaluate_directions(
    model,
    control: LanguageTokens,
    test: tuple[Segment, ...] | list[Segment],
    directions: list[tuple[str, str]],
    lid,
    settings: EvalSettings,
    desc: str = "evaluate",
    progress: bool = True,
) -> dict[str, dict]:
    """Translate the test split in every direction and score it (``lid``: a language identifier).

    Returns ``{"src-tgt": {"chrf", "bleu", "off_target", "n", "hypotheses"}}``; the first
    ``max_sentences`` test segments that have both languages form each direction's test set.
    """
    results: dict[str, dict] = {}
    for src, tgt in tqdm(directions, desc=desc, unit="dir", leave=False, disable=not progress):
        examples = direction_examples(test, src, tgt)[: settings.max_sentences]
        if not examples:
            continue
        hyps = translate(model, control, [e.src for e in examples], src, tgt,
                         batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens)
        scores = score(hyps, [e.tgt for e in examples], tgt)
        flags = lid.off_target_flags(hyps, tgt)
        scores["off_target"] = off_target_rate(flags)
        results[f"{src}-{tgt}"] = {**scores, "n": len(examples), "hypotheses": hyps, "off_flags": flags,
                                   "ids": [e.id for e in examples], "sources": [e.src for e in examples],
                                   "references": [e.tgt for e in examples]}
    return results


def forgetting_rows(
    base: dict[str, dict],
    finetuned: dict[str, dict],
    finetune_directions: list[tuple[str, str]],
    lid,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """One row per direction and metric, and paired-bootstrap intervals per category.

    Each row holds base, fine-tuned, ``delta = finetuned - base``, its 95% paired-bootstrap
    interval (test sentences resampled jointly for both models) and the score of copying the
    source (the baseline that rewards doing nothing). The second value maps metric → category →
    [low, high] of the mean delta over the category's directions, from the same resamples.
    """
    rng = np.random.default_rng(seed)
    rows = []
    by_category: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for key in sorted(finetuned):
        if key not in base:
            continue
        b, f = base[key], finetuned[key]
        src, tgt = key.split("-")
        category = categorize(src, tgt, finetune_directions)
        copy = score(b["sources"], b["references"], tgt)
        copy["off_target"] = lid.off_target(b["sources"], tgt)
        samples = paired_deltas(b["hypotheses"], f["hypotheses"], b["references"], tgt, b["off_flags"],
                                f["off_flags"], resamples, rng)
        for metric in METRICS:
            low, high = interval(samples[metric])
            rows.append({
                "src": src, "tgt": tgt, "category": category, "metric": metric,
                "base": b[metric], "finetuned": f[metric], "delta": f[metric] - b[metric],
                "delta_low": low, "delta_high": high, "source_copy": copy[metric],
            })
            by_category[metric][category].append(samples[metric])
    category_ci = {metric: {cat: list(interval(np.mean(arrays, axis=0))) for cat, arrays in cats.items()}
                   for metric, cats in by_category.items()}
    return rows, category_ci
