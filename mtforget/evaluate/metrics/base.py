"""What every metric is: per-sentence statistics that add up, and a score of their sums.

A metric turns one system's outputs on one direction into an array of sufficient statistics, one
row per test sentence (n × k), and maps summed rows to a score. The corpus score is the score of
all rows summed; a bootstrap resample is the score of the rows it drew, summed. ``score`` works
over any leading axes, so every resample of a direction is scored in one call.

Some metrics need a judgement from a tool outside them for each sentence (a language identifier,
a learned scorer): they name a ``judgement_key`` and implement ``judge``, which sees every
direction's outputs at once, since such tools cost most to start; their statistics then read the
judgements from :attr:`Outputs.judgements`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Outputs:
    """One system's outputs on one direction's test set: what a metric's statistics come from.

    ``judgements`` maps a metric's name to its per-sentence judgements (see :meth:`Metric.judge`).
    """

    target: str  # the language the outputs should be in (a study language code)
    sources: Sequence[str]
    hypotheses: Sequence[str]
    references: Sequence[str]
    judgements: Mapping[str, Sequence] = field(default_factory=dict)


@dataclass(frozen=True)
class Judges:
    """The outside tools a metric may consult for per-sentence judgements."""

    lid: object | None = None  # a language identifier (:mod:`mtforget.evaluate.lid`)
    comet: tuple | None = None  # (python, checkpoint, scorer, batch_size, gpus) when COMET is on


class Metric(ABC):
    """A corpus metric through sufficient statistics; register an instance to add it to studies.

    ``name`` is the value of the ``metric`` column of result rows (and of ``eval.metrics`` for an
    optional metric); ``title`` is how reports call it.
    """

    name: str
    title: str
    higher_is_better: bool = True
    # Optional metrics run only when ``eval.metrics`` names them; the others always run.
    optional: bool = False
    scale: float = 1.0  # reports show scores and deltas times this
    # Where the judgements of ``judge`` are kept in an evaluation (``copy_`` + it for the copy
    # baseline); None for a metric computed from the texts alone.
    judgement_key: str | None = None

    def signature(self, target: str) -> str | None:
        """The metric's settings for text in ``target`` as a signature string, or None if it has none."""
        return None

    def variant(self, target: str) -> str:
        """What in the metric's settings follows ``target`` (e.g. a tokenizer), "" for its defaults;
        signatures of different variants are reported apart."""
        return ""

    def delta_note(self) -> str:
        """A sentence that tells readers how to read this metric's deltas ("" when higher is better
        and the scale is the metric's own)."""
        return "" if self.higher_is_better else f"For {self.title}, lower is better: a positive delta is a loss."

    def judge(self, systems: Sequence[Outputs], judges: Judges) -> list[list] | None:
        """Per-sentence judgements for every system at once, or None when the tool they need is not
        among ``judges``; only metrics with a ``judgement_key`` are asked."""
        return None

    @abstractmethod
    def statistics(self, outputs: Outputs) -> np.ndarray:
        """Sufficient statistics of each sentence: an array of shape (n sentences, k)."""

    @abstractmethod
    def score(self, sums: np.ndarray) -> np.ndarray:
        """Scores of summed statistics, shape (..., k) → (...)."""

    def resample_scores(self, sums: np.ndarray) -> np.ndarray:
        """Scores of bootstrap resamples, shape (resamples, k) → (resamples,); ``score`` unless a
        metric keeps an older formula for them."""
        return self.score(sums)


def totals(statistics: np.ndarray) -> np.ndarray:
    """Column sums of per-sentence statistics, shape (n, k) → (k,)."""
    # Each column is summed as one contiguous array: numpy then adds floats in the same order as
    # it does for a plain list of them, and as ``resampled_totals`` does.
    return np.ascontiguousarray(np.asarray(statistics).T).sum(axis=1)


def resampled_totals(statistics: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Column sums of the rows each resample drew: ``idx`` (resamples, n) → (resamples, k)."""
    columns = np.ascontiguousarray(np.asarray(statistics).T)
    return np.stack([column[idx].sum(axis=1) for column in columns], axis=-1)


def corpus_score(metric: Metric, outputs: Outputs) -> float:
    """``metric``'s score of all of ``outputs``."""
    return float(metric.score(totals(metric.statistics(outputs))))
