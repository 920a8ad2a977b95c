"""Direction categories: how an evaluation direction relates to what a trial fine-tuned on.

A language is *seen* when it appears in at least one fine-tuning direction; every other language
of the corpus is *unseen*.
"""

from __future__ import annotations

CATEGORIES = ("supervised", "zero_shot_seen", "unseen_source", "unseen_target", "unseen_both")
UNSEEN = ("unseen_source", "unseen_target", "unseen_both")  # the categories with an unseen language


def seen_languages(directions: list[tuple[str, str]]) -> set[str]:
    """Languages that appear on either side of a fine-tuning direction."""
    return {lang for pair in directions for lang in pair}


def categorize(src: str, tgt: str, directions: list[tuple[str, str]]) -> str:
    """The category of the evaluation direction ``src→tgt`` given the fine-tuning directions."""
    if (src, tgt) in set(directions):
        return "supervised"
    seen = seen_languages(directions)
    if src in seen and tgt in seen:
        return "zero_shot_seen"
    if src in seen:
        return "unseen_target"
    if tgt in seen:
        return "unseen_source"
    return "unseen_both"


def parse_direction(text: str) -> tuple[str, str]:
    """``"en-de"`` → ``("en", "de")``. Raises ValueError on anything else."""
    parts = text.split("-")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ValueError(f"{text!r} is not a direction like 'en-de'")
    return parts[0], parts[1]
