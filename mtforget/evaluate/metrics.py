"""Corpus-level chrF and BLEU through sacrebleu, with their signatures.

Scores are sacrebleu's own (default settings: chrF with character order 6 and beta 2; BLEU with
the 13a tokenizer), so they compare with numbers others report from the same signatures.
"""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF


def _metrics() -> dict[str, object]:
    # effective_order keeps BLEU meaningful on short outputs; it is recorded in the signature.
    return {"chrf": CHRF(), "bleu": BLEU(effective_order=True)}


def score(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """``{"chrf": ..., "bleu": ...}`` for one direction (corpus-level, 0..100)."""
    return {name: m.corpus_score(hypotheses, [references]).score for name, m in _metrics().items()}


def signatures() -> dict[str, str]:
    """sacrebleu signatures of the metrics above, stored with every study's results."""
    out = {}
    for name, metric in _metrics().items():
        metric.corpus_score(["a"], [["a"]])  # the signature includes settings resolved on first use
        out[name] = str(metric.get_signature())
    return out
