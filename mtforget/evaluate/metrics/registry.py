"""Every metric a study can compute, by name, in the order rows and reports list them.

To add a metric, write a module with a :class:`~mtforget.evaluate.metrics.base.Metric` subclass
and add an instance to ``BUILT_IN`` below (or call :func:`register` from your own code).
"""

from __future__ import annotations

from collections.abc import Iterable

from mtforget.evaluate.metrics.base import Metric
from mtforget.evaluate.metrics.bleu import Bleu
from mtforget.evaluate.metrics.chrf import ChrF
from mtforget.evaluate.metrics.comet import Comet
from mtforget.evaluate.metrics.off_target import OffTarget
from mtforget.evaluate.metrics.on_target import ChrFOnTarget
from mtforget.evaluate.metrics.ter import Ter

BUILT_IN: tuple[Metric, ...] = (ChrF(), ChrF(word_order=2), Bleu(), OffTarget(), ChrFOnTarget(), Comet(), Ter())

REGISTRY: dict[str, Metric] = {}


class UnknownMetricError(LookupError):
    """A metric name that no registered metric has."""


def register(metric: Metric) -> Metric:
    """Add ``metric`` after those registered so far; its name must be new."""
    if metric.name in REGISTRY:
        raise ValueError(f"a metric named {metric.name!r} is already registered")
    REGISTRY[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownMetricError(f"unknown metric {name!r} (registered: {', '.join(REGISTRY)})") from None


def all_metrics() -> list[Metric]:
    """Every registered metric, in registration order."""
    return list(REGISTRY.values())


def optional_names() -> list[str]:
    """Names that ``eval.metrics`` accepts: the metrics that run only when asked for."""
    return [m.name for m in REGISTRY.values() if m.optional]


def active(optional: Iterable[str] = ()) -> list[Metric]:
    """The metrics a study computes: every always-on metric and the ``optional`` ones named."""
    named = {get_metric(name).name for name in optional}
    return [m for m in REGISTRY.values() if not m.optional or m.name in named]


for _metric in BUILT_IN:
    register(_metric)
