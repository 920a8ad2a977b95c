"""Evaluate a model on every direction, and turn base vs fine-tuned scores into forgetting rows."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from mtforget.data.categories import categorize
from mtforget.data.corpus import Segment
from mtforget.data.splits import direction_examples
from mtforget.evaluate.generate import translate
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
        scores["off_target"] = lid.off_target(hyps, tgt)
        results[f"{src}-{tgt}"] = {**scores, "n": len(examples), "hypotheses": hyps}
    return results


def forgetting_rows(
    base: dict[str, dict], finetuned: dict[str, dict], finetune_directions: list[tuple[str, str]]
) -> list[dict]:
    """One row per direction and metric: base, fine-tuned and ``delta = finetuned - base``."""
    rows = []
    for key, ft in finetuned.items():
        if key not in base:
            continue
        src, tgt = key.split("-")
        category = categorize(src, tgt, finetune_directions)
        for metric in METRICS:
            rows.append({
                "src": src, "tgt": tgt, "category": category, "metric": metric,
                "base": base[key][metric], "finetuned": ft[metric], "delta": ft[metric] - base[key][metric],
            })
    return rows
