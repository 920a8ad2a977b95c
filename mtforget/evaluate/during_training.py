"""Forgetting measured while a model fine-tunes (``eval.during_training``).

A fixed sample is drawn once per trial: ``directions`` directions of each category (seeded, so
every check and every trial of a study scores the same ones) and the first ``sentences`` test
sentences of each. At step 0 the sample is translated by the model as it starts (the base), and
at each check again; a point of the curve is, per category, the mean over its sampled directions
of the chrF change since step 0. Scoring the base sample with the same engine and batch makes
step 0 exactly zero, so the curve measures training, not a difference between engines.

Beside it, a proxy that needs no generation: the teacher-forced loss of the model on dev pairs of
the unseen directions; :func:`correlation` says how well it follows the sampled chrF.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mtforget.data.categories import CATEGORIES, UNSEEN, categorize
from mtforget.data.splits import Example, direction_examples
from mtforget.evaluate.metrics import Outputs, corpus_score, get_metric
from mtforget.evaluate.sharding import ALONE, EvalGroup, translate_shared
from mtforget.train.callbacks import TrainCallback, TrainState
from mtforget.train.loop import mean_token_loss

if TYPE_CHECKING:
    import torch

    from mtforget.evaluate.engines.base import GenerationEngine
    from mtforget.evaluate.forgetting import BaseGate
    from mtforget.models.control import Control



@dataclass(frozen=True)
class SampledDirection:
    """One direction of the sample, with its test sentences."""

    src: str
    tgt: str
    category: str
    sources: tuple[str, ...]
    references: tuple[str, ...]


def draw_sample(base_eval: dict[str, dict], directions: list[tuple[str, str]], gate: BaseGate, per_category: int,
                sentences: int, seed: int, replayed: Collection[tuple[str, str]] = ()) -> list[SampledDirection]:
    """``per_category`` directions of each category that the base evaluation scored (and the
    base-quality gate counts), each with its first ``sentences`` test sentences; ``replayed``:
    directions a mitigation trains on (category ``replayed``)."""
    by_category: dict[str, list[str]] = defaultdict(list)
    for key in sorted(base_eval):
        if gate.counts(gate.flag(base_eval[key])):
            by_category[categorize(*key.split("-"), directions, replayed)].append(key)
    sample = []
    for category in CATEGORIES:
        keys = by_category.get(category, [])
        chosen = random.Random(f"during-training:{seed}:{category}").sample(keys, min(per_category, len(keys)))
        for key in sorted(chosen):
            scores = base_eval[key]
            src, tgt = key.split("-")
            sample.append(SampledDirection(src, tgt, category, tuple(scores["sources"][:sentences]),
                                           tuple(scores["references"][:sentences])))
    return sample


def sample_again(kept: list[dict], test, max_sentences: int, sentences: int) -> list[SampledDirection]:
    """The sample a run drew, from what it recorded of it (``{"src", "tgt", "category"}`` per
    direction): the same test sentences as :func:`draw_sample` took from the base's evaluation,
    which holds the first ``max_sentences`` test segments of each direction."""
    sample = []
    for d in kept:
        examples = direction_examples(test, d["src"], d["tgt"])[:max_sentences][:sentences]
        sample.append(SampledDirection(d["src"], d["tgt"], d["category"], tuple(e.src for e in examples),
                                       tuple(e.tgt for e in examples)))
    return sample


def unseen_dev_pairs(dev: list, sample: list[SampledDirection], per_direction: int) -> list[Example]:
    """Dev pairs of the sample's unseen directions (the proxy's data): up to ``per_direction`` each."""
    pairs: list[Example] = []
    for d in sample:
        if d.category in UNSEEN:
            pairs += direction_examples(dev, d.src, d.tgt)[:per_direction]
    return pairs


class ForgettingProbe:
    """Scores the sample on a model and reports per-category changes since the first call.

    ``make_engine(model)`` gives a generation engine for the model's current weights (a context
    manager); a check at a step already measured returns the stored result, so callbacks that
    check at the same step share one translation. Under a launch every process of ``group``
    translates its share of a check and scores all of it, so all of them see the same changes
    (and a budget stops them at the same step).
    """

    def __init__(self, sample: list[SampledDirection], make_engine, control: Control, dev_pairs: list[Example],
                 metric: str = "chrf", group: EvalGroup = ALONE) -> None:
        if not sample:
            raise ValueError("no direction to sample forgetting on")
        self.sample, self.make_engine, self.group = sample, make_engine, group
        self.dev_batches = [control.batch(dev_pairs[i : i + 32]) for i in range(0, len(dev_pairs), 32)]
        self.metric = get_metric(metric)
        self.reference: dict[str, float] | None = None
        # Per sampled direction ("src-tgt"), its score at step 0 (None after a resume from a run
        # that recorded only the categories' means).
        self.direction_reference: dict[str, float] | None = None
        self._last: tuple[int, dict[str, float]] | None = None
        self._last_directions: dict[str, tuple[str, float]] | None = None

    @property
    def categories(self) -> list[str]:
        """The categories the sample covers, in the usual order."""
        return [c for c in CATEGORIES if any(d.category == c for d in self.sample)]

    def start(self, model: torch.nn.Module, state: TrainState) -> None:
        """Measure the model as the run starts (step 0) and keep that in the run's history, or take
        it back from there when the run resumed (the weights are no longer the start's then)."""
        if self.reference is not None:
            return
        kept = next((h for h in state.outcome.history if "forgetting_reference" in h), None)
        if kept is not None:
            self.reference = kept["forgetting_reference"]
            self.direction_reference = kept.get("forgetting_reference_by_direction")
            return
        self.reference = self.scores(model)
        self.direction_reference = dict(self._direction_scores)
        self._last = (0, {c: 0.0 for c in self.categories})
        self._last_directions = {key: (category, 0.0) for key, (category, _) in self._by_direction().items()}
        state.outcome.history.append({"step": 0, "forgetting_reference": self.reference,
                                      "forgetting_reference_by_direction": self.direction_reference})

    def scores(self, model: torch.nn.Module) -> dict[str, float]:
        """Per category, the mean score of the sampled directions (the model translates in eval
        mode, and is left in the mode it was in)."""
        was_training = model.training
        model.eval()
        try:
            with self.make_engine(model) as engine:
                engine: GenerationEngine
                outputs = translate_shared(engine, [(list(d.sources), d.src, d.tgt) for d in self.sample],
                                           self.group)
        finally:
            model.train(was_training)
        per_category: dict[str, list[float]] = defaultdict(list)
        self._direction_scores = {}
        for d, hyps in zip(self.sample, outputs):
            score = corpus_score(self.metric, Outputs(d.tgt, d.sources, hyps, d.references))
            per_category[d.category].append(score)
            self._direction_scores[f"{d.src}-{d.tgt}"] = score
        return {c: sum(v) / len(v) for c, v in per_category.items()}

    def _by_direction(self) -> dict[str, tuple[str, float]]:
        return {f"{d.src}-{d.tgt}": (d.category, self._direction_scores[f"{d.src}-{d.tgt}"]) for d in self.sample}

    def direction_deltas(self, step: int) -> dict[str, tuple[str, float]] | None:
        """Per sampled direction, its category and its change since step 0, as of the check at
        ``step`` (:meth:`deltas` measures it); None when step 0's per-direction scores are unknown."""
        if self._last is None or self._last[0] != step or self.direction_reference is None:
            return None
        return self._last_directions

    def deltas(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Per category, the change of the mean score since step 0 (see :meth:`start`)."""
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        if self.reference is None:
            raise RuntimeError("ForgettingProbe.start must run before the first check")
        scores = self.scores(model)
        deltas = {c: scores[c] - self.reference[c] for c in self.categories}
        self._last = (step, deltas)
        if self.direction_reference is not None:
            self._last_directions = {key: (category, score - self.direction_reference[key])
                                     for key, (category, score) in self._by_direction().items()}
        return deltas

    def proxy_loss(self, model: torch.nn.Module) -> float | None:
        """Token-weighted teacher-forced loss on the unseen directions' dev pairs (None without any)."""
        if not self.dev_batches:
            return None
        return mean_token_loss(model, self.dev_batches, next(model.parameters()).device)


def unseen_mean(point: dict[str, float]) -> float | None:
    """The mean change over the unseen categories of a curve point (None if it has none)."""
    values = [point[c] for c in UNSEEN if c in point]
    return sum(values) / len(values) if values else None


def correlation(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r of two series (None with fewer than three points or no variation)."""
    if len(xs) < 3 or len(xs) != len(ys):
        return None
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # a constant series
        return None


class ForgettingCurve(TrainCallback):
    """Records the sampled forgetting at step 0 and every ``every`` steps (and the last step), and
    the proxy loss at those points and at every dev check, in the run's history."""

    def __init__(self, probe: ForgettingProbe, every: int) -> None:
        self.probe, self.every = probe, every
        self._recorded: int | None = None  # the step of the last curve point

    def on_steps_start(self, model: torch.nn.Module, state: TrainState) -> None:
        with state.whole_model(model) as whole:
            self.probe.start(whole, state)
            if state.outcome.steps == 0:
                self._record(whole, 0, state)

    def on_step_end(self, step: int, model: torch.nn.Module, state: TrainState) -> None:
        if step % self.every == 0 or step == state.total_steps:
            with state.whole_model(model) as whole:
                self._record(whole, step, state)

    def on_dev_check(self, step: int, model: torch.nn.Module, dev_loss: float, state: TrainState) -> None:
        if step != self._recorded:  # a curve point at this step holds the proxy already
            with state.whole_model(model) as whole:
                state.outcome.history.append({"step": step, "tokens": state.tokens(),
                                              "unseen_dev_loss": self.probe.proxy_loss(whole)})

    def _record(self, model: torch.nn.Module, step: int, state: TrainState) -> None:
        self._recorded = step
        deltas = self.probe.deltas(model, step)
        state.outcome.history.append({"step": step, "tokens": state.tokens() if step else 0, "forgetting": deltas,
                                      "forgetting_by_direction": self.probe.direction_deltas(step),
                                      "unseen_dev_loss": self.probe.proxy_loss(model)})


def curve_of(history: list[dict]) -> list[dict]:
    """The forgetting curve a run's history holds: ``{"step", "tokens", <category>: delta}``."""
    return [{"step": h["step"], "tokens": h["tokens"], **h["forgetting"]} for h in history if "forgetting" in h]


def curve_by_direction_of(history: list[dict]) -> list[dict]:
    """Per curve point, each sampled direction's category and change:
    ``{"step", "directions": {"src-tgt": [category, delta]}}`` (points without them left out)."""
    return [{"step": h["step"], "directions": {k: list(v) for k, v in h["forgetting_by_direction"].items()}}
            for h in history if h.get("forgetting_by_direction")]


def proxy_of(history: list[dict]) -> dict:
    """The proxy loss at every point where it was measured, and its correlation with the mean
    sampled change on unseen directions at the curve's points."""
    points = [{"step": h["step"], "tokens": h["tokens"], "unseen_dev_loss": h["unseen_dev_loss"]}
              for h in history if h.get("unseen_dev_loss") is not None]
    at_curve = [(h["unseen_dev_loss"], unseen_mean(h["forgetting"])) for h in history
                if "forgetting" in h and h.get("unseen_dev_loss") is not None]
    at_curve = [(loss, change) for loss, change in at_curve if change is not None]
    r = correlation([x for x, _ in at_curve], [y for _, y in at_curve])
    return {"points": points, "correlation_with_unseen_chrf": r}
