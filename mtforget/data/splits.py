"""Train/dev/test splits by segment id, and the sentence pairs a trial trains and tests on.

Splitting by segment (not by pair) means a test meaning is never seen in training in *any*
language, so zero-shot directions are not contaminated through a pivot.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from mtforget.data.corpus import Corpus, Segment
from mtforget.errors import UsageError


@dataclass(frozen=True)
class Example:
    """One directional training or test example."""

    src_lang: str
    tgt_lang: str
    src: str
    tgt: str
    id: str = ""  # the segment it comes from


@dataclass(frozen=True)
class Splits:
    """Disjoint segment sets: training, development (early stopping) and test."""

    train: tuple[Segment, ...]
    dev: tuple[Segment, ...]
    test: tuple[Segment, ...]


def split_by_id(corpus: Corpus, dev_size: int, test_size: int, seed: int = 0) -> Splits:
    """Split segments by a seeded hash of their id.

    The order of lines in the file does not matter, and growing a corpus keeps existing test
    segments in test as long as the sizes stay the same fraction. Test segments are taken first
    among those that have the most languages, so every direction gets a test set.
    """
    if dev_size + test_size >= len(corpus.segments):
        raise UsageError(
            f"corpus.dev_size + corpus.test_size ({dev_size} + {test_size}) must be smaller than "
            f"the corpus ({len(corpus.segments)} segments in {corpus.source})"
        )

    def rank(seg: Segment) -> tuple[int, str]:
        digest = hashlib.sha256(f"{seed}:{seg.id}".encode()).hexdigest()
        return (-len(seg.translation), digest)

    ordered = sorted(corpus.segments, key=rank)
    test = ordered[:test_size]
    dev = ordered[test_size : test_size + dev_size]
    held_out = {s.id for s in test} | {s.id for s in dev}
    train = [s for s in corpus.segments if s.id not in held_out]
    return Splits(tuple(train), tuple(dev), tuple(test))


def pivot_language(corpus: Corpus, languages: list[str]) -> str:
    """English when the study has it, else its most frequent language (the earlier one on a tie).

    The pivot is the hub of the default fine-tuning directions, the side that alignment pairs and
    retrieval analyses compare every other language with.
    """
    if "en" in languages:
        return "en"
    counts = corpus.language_counts()
    return max(languages, key=lambda lang: (counts.get(lang, 0), -languages.index(lang)))


def direction_examples(segments: tuple[Segment, ...] | list[Segment], src: str, tgt: str) -> list[Example]:
    """All examples of ``src→tgt`` among the segments that have both languages."""
    return [
        Example(src, tgt, s.translation[src], s.translation[tgt], s.id)
        for s in segments
        if src in s.translation and tgt in s.translation
    ]


def sample_directions(
    segments: tuple[Segment, ...] | list[Segment],
    directions: list[tuple[str, str]],
    size: int,
    seed: int,
) -> list[Example]:
    """``size`` examples spread evenly over ``directions``, deterministic by ``seed``.

    Each direction draws its share from a different shuffle of the segments, so with several
    directions from one language the model sees different meanings in each (as with real data).
    If a direction has fewer examples than its share, it gives all it has.
    """
    rng = random.Random(seed)
    share, extra = divmod(size, len(directions))
    examples: list[Example] = []
    for i, (src, tgt) in enumerate(directions):
        pool = direction_examples(segments, src, tgt)
        rng.shuffle(pool)
        examples.extend(pool[: share + (1 if i < extra else 0)])
    rng.shuffle(examples)
    return examples


def sample_all_directions(
    segments: tuple[Segment, ...] | list[Segment], languages: list[str], n: int, seed: int,
    mix: dict[str, float] | None = None,
) -> list[Example]:
    """``n`` examples, each a random segment in a random direction between two of its languages.

    This is the multilingual pre-training mix of the built-in base models. ``mix`` gives some
    languages a weight below 1 (the others weigh 1): source and target are then drawn in proportion
    to their weights, so a language of weight 0.1 is seen about a tenth as often as the others, a
    low-resource language of the mix. Without it every direction is equally likely.
    """
    rng = random.Random(seed)
    usable = [s for s in segments if sum(lang in s.translation for lang in languages) >= 2]
    out: list[Example] = []
    for _ in range(n):
        seg = usable[rng.randrange(len(usable))]
        langs = [lang for lang in languages if lang in seg.translation]
        if mix:
            src, tgt = _weighted_pair(rng, langs, mix)
        else:
            src, tgt = rng.sample(langs, 2)
        out.append(Example(src, tgt, seg.translation[src], seg.translation[tgt]))
    return out


def _weighted_pair(rng: random.Random, langs: list[str], mix: dict[str, float]) -> tuple[str, str]:
    """Two different languages of ``langs``, each drawn in proportion to its ``mix`` weight."""
    weights = [mix.get(lang, 1.0) for lang in langs]
    first = rng.choices(range(len(langs)), weights)[0]
    rest = [i for i in range(len(langs)) if i != first]
    second = rng.choices(rest, [weights[i] for i in rest])[0]
    return langs[first], langs[second]
