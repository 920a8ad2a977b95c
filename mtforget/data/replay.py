"""Replay: examples outside the fine-tuning directions, mixed into the fine-tuning data.

The answer users of MT tools get most often to "how do I stop it forgetting the other languages"
is to keep training a little on them. Two sources:

- ``other_directions``: pairs of the training split in the directions *not* fine-tuned on: every
  one over all study languages, or a chosen subset (the rest then stays truly unseen);
- ``copies``: monolingual copies, source and target the same sentence in the same language, which
  rehearse producing each language (or chosen ones) without needing any parallel data.

Either way the report counts what was replayed: a replayed direction is in category
``replayed``, and a copied language shows in each direction's exposure.

The mitigation is :mod:`mtforget.mitigations.replay` (``finetune.replay``).
"""

from __future__ import annotations

import random
from typing import Literal

from mtforget.data.corpus import Segment
from mtforget.data.splits import Example, sample_directions

ReplaySource = Literal["other_directions", "copies"]


def replay_size(fraction: float, finetune_examples: int) -> int:
    """How many replay examples ``fraction`` of the fine-tuning examples is (0 when off)."""
    return round(fraction * finetune_examples)


def replay_examples(segments: tuple[Segment, ...] | list[Segment], languages: list[str],
                    finetune_directions: list[tuple[str, str]], n: int, source: ReplaySource,
                    seed: int, directions: list[tuple[str, str]] | None = None) -> list[Example]:
    """``n`` replay examples from ``segments`` (the training split), deterministic by ``seed``.

    ``directions`` (other directions) or ``languages`` (copies) are what is replayed; unset for
    other directions: every direction of ``languages`` outside the fine-tuning ones. Spread
    evenly over them; their order is shuffled first, so when ``n`` is smaller than their number
    the remainder does not always go to the same ones. A direction with too few pairs gives what
    it has, so fewer than ``n`` may return.
    """
    if n <= 0:
        return []
    rng = random.Random(f"replay:{seed}")
    trained = set(finetune_directions)
    if source == "copies":
        order = list(languages)
        rng.shuffle(order)
        # A copy is the direction lang→lang of a segment: sample_directions spreads and shuffles it.
        copies = [(lang, lang) for lang in order]
        return sample_directions(segments, copies, n, rng.randrange(2**31))
    if source != "other_directions":
        raise ValueError(f"unknown replay source {source!r}")
    others = list(directions) if directions is not None else [
        (s, t) for s in languages for t in languages if s != t and (s, t) not in trained]
    if not others:
        raise ValueError("no direction outside the fine-tuning directions to replay")
    rng.shuffle(others)
    return sample_directions(segments, others, n, rng.randrange(2**31))
