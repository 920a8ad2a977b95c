"""COMET, optional: scored by a subprocess in another environment (see ``comet_score.py``)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from mtforget.errors import UsageError

SCORER = Path(__file__).with_name("comet_score.py")


def comet_scores(triples: list[tuple[str, str, str]], python: str, checkpoint: str, scorer: str | None = None,
                 batch_size: int = 32, gpus: int = 0) -> list[float]:
    """Segment-level COMET scores of ``(source, hypothesis, reference)`` triples, in order.

    Every problem (no interpreter, no checkpoint, no unbabel-comet, a crash) is a
    :class:`UsageError` naming the ``eval.comet`` key to fix.
    """
    if not triples:
        return []
    if not Path(python).is_file():
        raise UsageError(f"eval.comet.python: {python} does not exist (give the interpreter of an environment "
                         "with unbabel-comet)")
    if not Path(checkpoint).exists():
        raise UsageError(f"eval.comet.checkpoint: {checkpoint} does not exist")
    script = scorer or str(SCORER)
    with tempfile.TemporaryDirectory(prefix="mtforget-comet-") as tmp:
        given, scored = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        with given.open("w", encoding="utf-8") as f:
            for src, mt, ref in triples:
                f.write(json.dumps({"src": src, "mt": mt, "ref": ref}, ensure_ascii=False) + "\n")
        done = subprocess.run([python, script, "--checkpoint", checkpoint, "--input", str(given), "--output",
                               str(scored), "--batch-size", str(batch_size), "--gpus", str(gpus)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise UsageError(f"eval.comet: the scorer failed: {reason}")
        scores = [json.loads(line)["score"] for line in scored.read_text(encoding="utf-8").splitlines() if line]
    if len(scores) != len(triples):
        raise UsageError(f"eval.comet: the scorer returned {len(scores)} scores for {len(triples)} segments")
    return scores
