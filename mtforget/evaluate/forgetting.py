"""Evaluate a model on every direction, and turn base vs fine-tuned scores into forgetting rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from mtforget.data.categories import categorize
from mtforget.data.corpus import Segment
from mtforget.data.splits import direction_examples
from mtforget.evaluate.bootstrap import interval, paired_deltas
from mtforget.evaluate.comet import comet_scores
from mtforget.evaluate.engines.base import GenerationEngine
from mtforget.evaluate.lid import off_target_rate
from mtforget.evaluate.metrics import score

METRICS = ("chrf", "chrf++", "bleu", "off_target")


@dataclass(frozen=True)
class EvalSettings:
    """Evaluation settings; part of the cache key of a base evaluation.

    ``batch_size`` and ``max_new_tokens`` configure the generation engine (``make_engine``), which
    the caller builds from them; the engine's name joins them in the cache key.
    """

    max_sentences: int = 50  # per direction
    batch_size: int | None = None  # sentences per batch at most; None: sized for the device
    max_new_tokens: int = 64
    comet: tuple | None = None  # (python, checkpoint, scorer, batch_size, gpus) when COMET is on


def evaluate_directions(
    engine: GenerationEngine,
    test: tuple[Segment, ...] | list[Segment],
    directions: list[tuple[str, str]],
    lid,
    settings: EvalSettings,
    desc: str = "evaluate",
    progress: bool = True,
    with_copy: bool = False,
) -> dict[str, dict]:
    """Translate the test split in every direction with ``engine`` and score it (``lid``: a
    language identifier).

    Returns ``{"src-tgt": {"chrf", "bleu", "off_target", "n", "hypotheses"}}``; the first
    ``max_sentences`` test segments that have both languages form each direction's test set.
    With COMET on, ``comet`` (×100) and its segment scores are added, and with ``with_copy`` the
    COMET of copying the source too (the other metrics' copy baselines need no model).
    """
    results: dict[str, dict] = {}
    jobs = [(src, tgt, examples) for src, tgt in directions
            if (examples := direction_examples(test, src, tgt)[: settings.max_sentences])]
    # Every direction in one call: the engine sorts all sentences by length together and fills
    # its batches from all directions, however few sentences each one has.
    with tqdm(total=sum(len(examples) for *_, examples in jobs), desc=desc, unit="sent", leave=False,
              disable=not progress) as bar:
        outputs = engine.translate_many([([e.src for e in examples], src, tgt) for src, tgt, examples in jobs],
                                        progress=bar.update)
    for (src, tgt, examples), hyps in zip(jobs, outputs):
        results[f"{src}-{tgt}"] = _scored(hyps, tgt, examples, lid)
    if settings.comet:
        _add_comet(results, settings.comet, with_copy)
    return results


def _scored(hyps: list[str], tgt: str, examples: list, lid) -> dict:
    """One direction's scores and what the paired bootstrap and the report need."""
    scores = score(hyps, [e.tgt for e in examples], tgt)
    flags = lid.off_target_flags(hyps, tgt)
    scores["off_target"] = off_target_rate(flags)
    return {**scores, "n": len(examples), "hypotheses": hyps, "off_flags": flags,
            "ids": [e.id for e in examples], "sources": [e.src for e in examples],
            "references": [e.tgt for e in examples]}


def _add_comet(results: dict[str, dict], comet: tuple, with_copy: bool) -> None:
    """COMET for every direction in one scorer call (loading COMET costs more than scoring)."""
    keys = list(results)
    triples = [t for k in keys for t in zip(results[k]["sources"], results[k]["hypotheses"], results[k]["references"])]
    if with_copy:  # copying the source: the output COMET is known to reward
        triples += [t for k in keys for t in zip(results[k]["sources"], results[k]["sources"], results[k]["references"])]
    scores = [100 * s for s in comet_scores(triples, *comet)]
    offset = 0
    for part in (("comet_seg", "comet"), ("copy_comet_seg", "copy_comet")) if with_copy else (("comet_seg", "comet"),):
        for k in keys:
            n = results[k]["n"]
            results[k][part[0]] = scores[offset : offset + n]
            results[k][part[1]] = float(np.mean(results[k][part[0]]))
            offset += n


@dataclass(frozen=True)
class BaseGate:
    """Floors under which a base model's direction is flagged (see ``eval.base_gate``)."""

    min_chrf: float = 10.0
    max_empty: float = 0.5
    max_off_target: float = 0.5
    max_repeated: float = 0.5
    min_sentences: int = 20
    include_flagged: bool = False

    def flag(self, base: dict) -> str:
        """Why the base's scores on one direction cannot anchor a delta, or ``""`` when they can."""
        reasons = []
        if base["n"] < self.min_sentences:
            reasons.append(f"{base['n']} test sentences (< {self.min_sentences})")
        if base["chrf"] < self.min_chrf:
            reasons.append(f"base chrF {base['chrf']:.1f} (< {self.min_chrf:g})")
        outputs = [h.strip() for h in base["hypotheses"]]
        empty = sum(not h for h in outputs) / max(1, len(outputs))
        if empty > self.max_empty:
            reasons.append(f"{empty:.0%} of base outputs empty")
        # A model that cannot translate often says one thing whatever the input; in a language
        # with a small vocabulary that one sentence can still score a fair chrF.
        repeated = max(Counter(h for h in outputs if h).values(), default=0) / max(1, len(outputs))
        if repeated > self.max_repeated and len(outputs) > 1:
            reasons.append(f"{repeated:.0%} of base outputs are one and the same sentence")
        if base["off_target"] > self.max_off_target:
            reasons.append(f"{base['off_target']:.0%} of base outputs off-target")
        return "; ".join(reasons)

    def counts(self, flag: str) -> bool:
        """Whether a direction with this flag enters category means."""
        return not flag or self.include_flagged


def forgetting_rows(
    base: dict[str, dict],
    finetuned: dict[str, dict],
    finetune_directions: list[tuple[str, str]],
    lid,
    resamples: int = 1000,
    seed: int = 0,
    gate: BaseGate = BaseGate(),
) -> tuple[list[dict], dict]:
    """One row per direction and metric, and paired-bootstrap intervals per category.

    Each row holds base, fine-tuned, ``delta = finetuned - base``, its 95% paired-bootstrap
    interval (test sentences resampled jointly for both models), the score of copying the
    source (the baseline that rewards doing nothing) and ``base_flag``, why ``gate`` finds the
    base unfit on that direction (empty when it is fit). The second value maps metric → category
    → [low, high] of the mean delta over the category's directions that ``gate`` counts, from the
    same resamples.
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
        flag = gate.flag(b)
        copy = score(b["sources"], b["references"], tgt)
        copy["off_target"] = lid.off_target(b["sources"], tgt)
        samples = paired_deltas(b["hypotheses"], f["hypotheses"], b["references"], tgt, b["off_flags"],
                                f["off_flags"], resamples, rng)
        metrics = METRICS
        if "comet" in b and "comet" in f:
            metrics = METRICS + ("comet",)
            copy["comet"] = b.get("copy_comet")
            idx = rng.integers(0, b["n"], size=(resamples, b["n"]))
            samples["comet"] = np.asarray(f["comet_seg"])[idx].mean(1) - np.asarray(b["comet_seg"])[idx].mean(1)
        for metric in metrics:
            low, high = interval(samples[metric])
            rows.append({
                "src": src, "tgt": tgt, "category": category, "metric": metric,
                "base": b[metric], "finetuned": f[metric], "delta": f[metric] - b[metric],
                "delta_low": low, "delta_high": high, "source_copy": copy[metric], "base_flag": flag,
            })
            if gate.counts(flag):
                by_category[metric][category].append(samples[metric])
    category_ci = {metric: {cat: list(interval(np.mean(arrays, axis=0))) for cat, arrays in cats.items()}
                   for metric, cats in by_category.items()}
    return rows, category_ci
