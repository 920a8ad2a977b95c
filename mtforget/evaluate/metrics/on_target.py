"""chrF on target: chrF over the outputs that a language identifier finds in the target language.

With the off-target rate beside it, a loss reads as wrong-language output (the off-target rate
rose, chrF on target held) or as worse translation in the right language (chrF on target fell).
Sentences judged off-target, or too short to judge, add no n-grams to either side, so the score is
sacrebleu's chrF of the on-target sentences alone (0 when there are none), and a bootstrap
resample is the chrF of the on-target sentences it drew.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtforget.evaluate.metrics.base import Judges, Outputs
from mtforget.evaluate.metrics.chrf import ChrF


class ChrFOnTarget(ChrF):
    """chrF of the sentences whose output is in the target language (the off-target flags' 0s)."""

    judgement_key = "off_flags"  # the off-target rate's verdicts: judged once, read by both

    def __init__(self) -> None:
        super().__init__(word_order=0)
        self.name, self.title = "chrf_on_target", "chrF on target"

    def signature(self, target: str) -> str:
        return super().signature(target) + "|outputs:on-target"

    def judge(self, systems: Sequence[Outputs], judges: Judges) -> list[list] | None:
        if judges.lid is None:
            return None
        return [judges.lid.off_target_flags(list(s.hypotheses), s.target) for s in systems]

    def statistics(self, outputs: Outputs) -> np.ndarray:
        stats = super().statistics(outputs)
        on_target = np.array([flag == 0 for flag in outputs.judgements[self.name]], dtype=bool)
        return stats * on_target[:, None]
