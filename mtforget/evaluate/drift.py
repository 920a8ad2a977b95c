"""Language drift: which language each output is in, and how that relates to the direction.

A model that forgets a direction often still translates, into the wrong language. For every
evaluated direction, the study's language identifier names the language of each output (base and
fine-tuned); :func:`drift_shares` then says what share of the judged outputs are in

- ``target``: the language asked for (confusable groups count as one, as for the off-target rate);
- ``source``: the source language (a copy or near-copy);
- ``pivot``: the study's pivot (English, else its most frequent language);
- ``finetuned``: one of the languages of the fine-tuning directions;
- ``other``: any other language;
- ``empty``: no output at all.

Outputs too short to judge are left out of the shares, as they are of the off-target rate, so the
shares of a direction add up to 1.
"""

from __future__ import annotations

from collections import Counter

from mtforget.evaluate.lid import same_language

LANGUAGE_CLASSES = ("target", "source", "pivot", "finetuned", "other", "empty")
EMPTY, UNJUDGED = "(empty)", "(unjudged)"


def output_languages(lid, hypotheses: list[str]) -> dict[str, int]:
    """How many outputs the identifier puts in each language (``(empty)`` for empty outputs,
    ``(unjudged)`` for those too short to judge)."""
    shortest = lid.min_chars
    counts: Counter[str] = Counter()
    for text, predicted in zip(hypotheses, lid.predict(list(hypotheses))):
        if not text.strip():
            counts[EMPTY] += 1
        elif len(text.strip()) < shortest:
            counts[UNJUDGED] += 1
        else:
            counts[predicted or "(none)"] += 1
    return dict(counts)


def language_class(language: str, src: str, tgt: str, pivot: str, finetuned: set[str]) -> str:
    """The class of an output language for the direction ``src→tgt`` (the first that applies, in
    the order of :data:`LANGUAGE_CLASSES`)."""
    if language == EMPTY:
        return "empty"
    for name, code in (("target", tgt), ("source", src), ("pivot", pivot)):
        if same_language(language, code):
            return name
    if any(same_language(language, lang) for lang in finetuned):
        return "finetuned"
    return "other"


def drift_shares(counts: dict[str, int], src: str, tgt: str, pivot: str, finetuned: set[str]) -> dict[str, float]:
    """The share of judged outputs in each class of :data:`LANGUAGE_CLASSES` (empty when none was judged)."""
    judged = {lang: n for lang, n in counts.items() if lang != UNJUDGED}
    total = sum(judged.values())
    if not total:
        return {}
    shares = dict.fromkeys(LANGUAGE_CLASSES, 0.0)
    for lang, n in judged.items():
        shares[language_class(lang, src, tgt, pivot, finetuned)] += n / total
    return shares
