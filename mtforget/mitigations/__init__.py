"""Mitigations of forgetting, each a plug-in (see :mod:`mtforget.mitigations.base`).

Adding one: a module with a :class:`~mtforget.mitigations.base.Mitigation` subclass, and its
class in the tuple below. The study config gains its key, results.csv its column.
"""

from __future__ import annotations

from mtforget.mitigations.alignment import Alignment
from mtforget.mitigations.base import Mitigation, settings_of
from mtforget.mitigations.forgetting_budget import ForgettingBudget
from mtforget.mitigations.interpolation import Interpolation
from mtforget.mitigations.l2_to_base import L2ToBase
from mtforget.mitigations.replay import Replay

# In this order they prepare, add examples and callbacks, and appear in labels and columns.
MITIGATIONS: dict[str, type[Mitigation]] = {m.name: m for m in (Alignment, Replay, Interpolation, L2ToBase,
                                                                  ForgettingBudget)}


def active_mitigations(config) -> list[Mitigation]:
    """An instance of every mitigation that ``config`` (a study config) turns on, in registry order."""
    return [m(settings_of(config, m.key)) for m in MITIGATIONS.values() if m.enabled(settings_of(config, m.key))]


def mitigation_labels(config) -> dict[str, str]:
    """Every registered mitigation's label for ``config`` (``none`` when off): results.csv's columns."""
    return {name: m.label(settings_of(config, m.key)) for name, m in MITIGATIONS.items()}
