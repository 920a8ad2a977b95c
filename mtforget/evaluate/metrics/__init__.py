"""Translation metrics behind one interface (:mod:`.base`), one module each, found by name in a
registry (:mod:`.registry`): chrF, chrF++, BLEU and the off-target rate always, COMET and TER
when ``eval.metrics`` asks for them.

Scores of chrF, chrF++, BLEU and TER are sacrebleu's own, so they compare with numbers others
report under the same signatures.
"""

from __future__ import annotations

from mtforget.evaluate.metrics.base import Judges, Metric, Outputs, corpus_score, resampled_totals, totals
from mtforget.evaluate.metrics.bleu import bleu_tokenizer
from mtforget.evaluate.metrics.registry import (REGISTRY, UnknownMetricError, active, all_metrics, get_metric,
                                                optional_names, register)

__all__ = ["REGISTRY", "Judges", "Metric", "Outputs", "UnknownMetricError", "active", "all_metrics",
           "bleu_tokenizer", "corpus_score", "get_metric", "optional_names", "register", "resampled_totals",
           "score", "signatures", "totals"]


def score(hypotheses: list[str], references: list[str], target: str = "en") -> dict[str, float]:
    """Corpus scores of one direction into ``target`` by every always-on metric that needs no
    outside judgement (chrF, chrF++, BLEU: 0..100)."""
    outputs = Outputs(target, hypotheses, hypotheses, references)
    return {m.name: corpus_score(m, outputs) for m in active() if m.judgement_key is None}


def signatures(targets: list[str] | None = None, optional: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Signatures of the metrics computed (the always-on ones and the ``optional`` ones named), for
    text in each of ``targets``; a metric whose settings follow the language gets one per variant
    (``bleu[zh]``)."""
    out = {}
    for target in targets or ["en"]:
        for metric in active(optional):
            signature = metric.signature(target)
            if signature is not None:
                variant = metric.variant(target)
                out[f"{metric.name}[{variant}]" if variant else metric.name] = signature
    return out
