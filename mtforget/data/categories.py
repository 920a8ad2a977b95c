"""Direction categories: how an evaluation direction relates to what a trial trained on.

A language is *seen* when it appears in at least one fine-tuning direction; every other language
of the corpus is *unseen*. A direction that a mitigation trained on with pairs of its own
(replay) is ``replayed``, whatever its languages: the five other categories hold only directions
the trial never trained on. What else a trial's training touched (the languages it copied or
aligned) is a direction's *exposure*, kept beside its category.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

CATEGORIES = ("supervised", "zero_shot_seen", "unseen_source", "unseen_target", "unseen_both", "replayed")
UNSEEN = ("unseen_source", "unseen_target", "unseen_both")  # the categories with an unseen language
BY_FINETUNING = CATEGORIES[:5]  # the categories the fine-tuning directions alone define (no replay)


@dataclass(frozen=True)
class Exposure:
    """What a trial's training signals touched beyond its fine-tuning directions: directions
    trained on with replayed pairs, languages rehearsed as monolingual copies, languages in an
    alignment objective."""

    replayed: frozenset[tuple[str, str]] = frozenset()
    copied: frozenset[str] = frozenset()
    aligned: frozenset[str] = frozenset()

    def __or__(self, other: Exposure) -> Exposure:
        return Exposure(self.replayed | other.replayed, self.copied | other.copied, self.aligned | other.aligned)

    def of(self, src: str, tgt: str) -> str:
        """The direction's exposure: ``none``, or ``+``-joined tags such as ``replayed``,
        ``copied_target`` or ``aligned_both`` (which side's language the signal touched)."""
        tags = ["replayed"] if (src, tgt) in self.replayed else []
        for name, languages in (("copied", self.copied), ("aligned", self.aligned)):
            side = {(True, True): "both", (True, False): "source", (False, True): "target"}.get(
                (src in languages, tgt in languages))
            if side:
                tags.append(f"{name}_{side}")
        return "+".join(tags) or "none"

    def to_dict(self) -> dict:
        """Plain data for ``result.json``."""
        return {"replayed": sorted(f"{s}-{t}" for s, t in self.replayed), "copied": sorted(self.copied),
                "aligned": sorted(self.aligned)}


NO_EXPOSURE = Exposure()


def seen_languages(directions: list[tuple[str, str]]) -> set[str]:
    """Languages that appear on either side of a fine-tuning direction."""
    return {lang for pair in directions for lang in pair}


def categorize(src: str, tgt: str, directions: list[tuple[str, str]],
               replayed: Collection[tuple[str, str]] = ()) -> str:
    """The category of the evaluation direction ``src→tgt`` given the fine-tuning directions and
    the directions trained on with replayed pairs."""
    if (src, tgt) in set(directions):
        return "supervised"
    if (src, tgt) in replayed:
        return "replayed"
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
