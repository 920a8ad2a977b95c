"""How many threads a trial may take: the cores that are free now, not merely present.

A trial that takes every core of a machine where another job already runs oversubscribes it, and
PyTorch's and OpenMP's threads then wait on each other far longer than the work takes. So unless
the study says ``resources.cpus``, a trial takes the cores this process may run on minus those
that other processes keep busy, measured over a short window when the study starts.
"""

from __future__ import annotations

import os

import psutil

SAMPLE_SECONDS = 0.5


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def free_cores(sample_seconds: float = SAMPLE_SECONDS) -> int:
    """Usable cores minus the cores other processes keep busy, measured over ``sample_seconds``
    (at least one)."""
    usable = usable_cores()
    busy_fraction = psutil.cpu_percent(interval=sample_seconds) / 100  # over all cores of the machine
    busy = round(busy_fraction * (os.cpu_count() or usable))
    return max(1, min(usable, usable - busy))


def trial_threads(cpus: int | None, workers: int = 1) -> int:
    """Threads for each of ``workers`` trials running at once: ``cpus`` when given, else an equal
    share of the free cores."""
    if cpus:
        return cpus
    return max(1, free_cores() // workers)
