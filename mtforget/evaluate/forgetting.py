"""Evaluate a model on every direction, and turn base vs fine-tuned scores into forgetting rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from mtforget.data.categories import NO_EXPOSURE, Exposure, categorize
from mtforget.data.corpus import Segment
from mtforget.data.splits import direction_examples
from mtforget.evaluate.bootstrap import interval, paired_bootstrap
from mtforget.evaluate.engines.base import GenerationEngine
from mtforget.evaluate.metrics import Judges, Metric, Outputs, active, all_metrics, corpus_score
from mtforget.evaluate.sharding import ALONE, EvalGroup, translate_shared


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
    # The optional metrics to compute (``eval.metrics``); once constructed, the name of every
    # metric computed, so that registering a metric changes the cache key of base evaluations.
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(m.name for m in active(self.metrics)))


def evaluate_directions(
    engine: GenerationEngine,
    test: tuple[Segment, ...] | list[Segment],
    directions: list[tuple[str, str]],
    lid,
    settings: EvalSettings,
    desc: str = "evaluate",
    progress: bool = True,
    with_copy: bool = False,
    group: EvalGroup = ALONE,
) -> dict[str, dict] | None:
    """Translate the test split in every direction with ``engine`` and score it (``lid``: a
    language identifier).

    The processes of ``group`` (all of them call this, each with its own engine) share the
    translation (:func:`~mtforget.evaluate.sharding.translate_shared`, the same outputs as one
    process); the main one scores and returns, the others return None.

    Returns ``{"src-tgt": record}``; a record holds the corpus score of every metric in
    ``settings.metrics`` under its name, ``n``, the ``hypotheses``, ``ids``, ``sources`` and
    ``references``, and the per-sentence judgements of metrics that need them (off-target flags,
    COMET segment scores ×100). The first ``max_sentences`` test segments that have both languages
    form each direction's test set. With ``with_copy`` those judgements are also made for copying
    the source (the other metrics score the copy baseline from the texts alone).
    """
    results: dict[str, dict] = {}
    jobs = [(src, tgt, examples) for src, tgt in directions
            if (examples := direction_examples(test, src, tgt)[: settings.max_sentences])]
    # Every direction in one call: the engine sorts all sentences by length together and fills
    # its batches from all directions, however few sentences each one has.
    with tqdm(total=sum(len(examples) for *_, examples in jobs), desc=desc, unit="sent", leave=False,
              disable=not progress or not group.is_main) as bar:
        outputs = translate_shared(engine, [([e.src for e in examples], src, tgt) for src, tgt, examples in jobs],
                                   group, progress=lambda n: bar.update(n * group.size))
    if not group.is_main:
        return None
    for (src, tgt, examples), hyps in zip(jobs, outputs):
        results[f"{src}-{tgt}"] = _record(hyps, examples)
    score_records([(key.split("-")[1], record) for key, record in results.items()], active(settings.metrics),
           Judges(lid, settings.comet), with_copy)
    return results


def _record(hyps: list[str], examples: list) -> dict:
    """One direction's outputs and what the paired bootstrap and the report need, before scoring."""
    return {"n": len(examples), "hypotheses": hyps, "ids": [e.id for e in examples],
            "sources": [e.src for e in examples], "references": [e.tgt for e in examples]}


def _scored(hyps: list[str], tgt: str, examples: list, lid) -> dict:
    """One direction's record, scored by the always-on metrics."""
    record = _record(hyps, examples)
    score_records([(tgt, record)], active(), Judges(lid))
    return record


def score_records(records: list[tuple[str, dict]], metrics: list[Metric], judges: Judges, with_copy: bool = False) -> None:
    """Add every metric's judgements and corpus score to ``records`` ((target, record) pairs).

    A metric that needs judgements gets them for all records in one call; one whose tool is not
    among ``judges`` is left out of the records.
    """
    for metric in metrics:
        if metric.judgement_key is None or all(metric.judgement_key in record for _, record in records) and (
                not with_copy or all("copy_" + metric.judgement_key in record for _, record in records)):
            continue  # no judgements to make, or another metric of the same key made them
        systems = [_outputs(target, record) for target, record in records]
        copies = [_outputs(target, record, copy=True) for target, record in records] if with_copy else []
        verdicts = metric.judge(systems + copies, judges)
        if verdicts is None:
            continue
        for (_, record), verdict in zip(records, verdicts):
            record[metric.judgement_key] = verdict
        for (_, record), verdict in zip(records, verdicts[len(systems):]):
            record["copy_" + metric.judgement_key] = verdict
    for target, record in records:
        outputs = _outputs(target, record)
        for metric in metrics:
            if metric.judgement_key is None or metric.name in outputs.judgements:
                record[metric.name] = corpus_score(metric, outputs)


def _outputs(target: str, record: dict, copy: bool = False) -> Outputs:
    """The outputs of a record's system, or with ``copy`` of copying the source, with the
    judgements the record holds for them."""
    prefix = "copy_" if copy else ""
    judgements = {m.name: record[prefix + m.judgement_key] for m in all_metrics()
                  if m.judgement_key is not None and prefix + m.judgement_key in record}
    return Outputs(target, record["sources"], record["sources"] if copy else record["hypotheses"],
                   record["references"], judgements)


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
    exposure: Exposure = NO_EXPOSURE,
) -> tuple[list[dict], dict]:
    """One row per direction and metric, and paired-bootstrap intervals per category.

    The metrics are those registered that both evaluations scored. Each row holds base,
    fine-tuned, ``delta = finetuned - base``, its 95% paired-bootstrap interval (test sentences
    resampled jointly for both models), the score of copying the source (the baseline that
    rewards doing nothing; None for a metric whose judgements of the copy the base evaluation
    lacks and ``lid`` cannot make) and ``base_flag``, why ``gate`` finds the base unfit on that
    direction (empty when it is fit). The second value maps metric → category → [low, high] of
    the mean delta over the category's directions that ``gate`` counts, from the same resamples.
    ``exposure``: what the trial trained on besides ``finetune_directions`` (a replayed
    direction is in category ``replayed``; each row says its direction's exposure).
    """
    rng = np.random.default_rng(seed)
    rows = []
    by_category: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for key in sorted(finetuned):
        if key not in base:
            continue
        b, f = base[key], finetuned[key]
        src, tgt = key.split("-")
        category = categorize(src, tgt, finetune_directions, exposure.replayed)
        flag = gate.flag(b)
        metrics = [m for m in all_metrics() if m.name in b and m.name in f]
        copy = _copy_scores(tgt, b, metrics, Judges(lid))
        base_outputs, ft_outputs = _outputs(tgt, b), _outputs(tgt, f)
        samples = paired_bootstrap(metrics, {m.name: m.statistics(base_outputs) for m in metrics},
                                   {m.name: m.statistics(ft_outputs) for m in metrics}, resamples, rng)
        for metric in (m.name for m in metrics):
            low, high = interval(samples[metric])
            rows.append({
                "src": src, "tgt": tgt, "category": category, "exposure": exposure.of(src, tgt), "metric": metric,
                "base": b[metric], "finetuned": f[metric], "delta": f[metric] - b[metric],
                "delta_low": low, "delta_high": high, "source_copy": copy[metric], "base_flag": flag,
            })
            if gate.counts(flag):
                by_category[metric][category].append(samples[metric])
    category_ci = {metric: {cat: list(interval(np.mean(arrays, axis=0))) for cat, arrays in cats.items()}
                   for metric, cats in by_category.items()}
    return rows, category_ci


def _copy_scores(target: str, base: dict, metrics: list[Metric], judges: Judges) -> dict[str, float | None]:
    """Each metric's score of copying the source, from the judgements of the copy that the base
    evaluation holds, else from ``judges`` now (None when neither can judge it)."""
    outputs = _outputs(target, base, copy=True)
    judgements = dict(outputs.judgements)
    for metric in metrics:
        if metric.judgement_key is not None and metric.name not in judgements:
            verdicts = metric.judge([outputs], judges)
            if verdicts is not None:
                judgements[metric.name] = verdicts[0]
    outputs = replace(outputs, judgements=judgements)
    return {m.name: corpus_score(m, outputs) if m.judgement_key is None or m.name in judgements else None
            for m in metrics}
