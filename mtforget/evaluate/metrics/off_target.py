"""The off-target rate: the fraction of outputs a language identifier finds in another language
than the target (a fraction in 0..1; lower is better).

Each sentence is judged by the study's identifier (:mod:`mtforget.evaluate.lid`): 1 off-target,
0 on target, or no verdict for outputs too short to judge, which count neither way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtforget.evaluate.metrics.base import Judges, Metric, Outputs


class OffTarget(Metric):
    """Off-target outputs over judged outputs (0 when none could be judged)."""

    name = "off_target"
    title = "off-target rate"
    higher_is_better = False
    scale = 100.0  # reports show rates in percent and deltas in percentage points
    judgement_key = "off_flags"

    def delta_note(self) -> str:
        return "Off-target deltas are in percentage points (positive = more output in the wrong language)."

    def judge(self, systems: Sequence[Outputs], judges: Judges) -> list[list] | None:
        if judges.lid is None:
            return None
        return [judges.lid.off_target_flags(list(s.hypotheses), s.target) for s in systems]

    def statistics(self, outputs: Outputs) -> np.ndarray:
        flags = outputs.judgements[self.name]
        return np.array([[0.0, 0.0] if f is None else [f, 1.0] for f in flags], dtype=float).reshape(len(flags), 2)

    def score(self, sums: np.ndarray) -> np.ndarray:
        sums = np.asarray(sums, dtype=float)
        off, judged = sums[..., 0], sums[..., 1]
        return np.where(judged > 0, off / np.maximum(judged, 1), 0.0)
