"""The demo end to end in a fresh cache: wall time per stage, peak memory, model evaluations.

    python benchmarks/demo_wall.py            # mtforget demo
    python benchmarks/demo_wall.py --quick    # mtforget demo --quick

Runs the demo study in-process on an empty temporary cache and output folder, and prints:
seconds per stage summed over the run (pre-training of each base from its metadata, then each
trial's own timings), the wall time, peak resident memory (RSS) of the process, and how many
times a model was evaluated on every direction, against K + B for K trials sharing B bases (the
base evaluation is done once per base, not once per trial) plus the interpolation sweeps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.environ["MTFORGET_CACHE"] = tempfile.mkdtemp(prefix="mtforget-bench-")
    out = Path(tempfile.mkdtemp(prefix="mtforget-demo-"))

    import mtforget.study.runner as runner
    from mtforget.study.config import parse_study
    from mtforget.study.demo import demo_study
    from mtforget.study.grid import expand

    evaluations = 0
    real_evaluate = runner.evaluate_directions

    def counting(*a, **k):  # the real evaluation, counted
        nonlocal evaluations
        evaluations += 1
        return real_evaluate(*a, **k)

    runner.evaluate_directions = counting
    study = parse_study(demo_study(args.quick), "demo")
    start = time.perf_counter()
    code = runner.run_study(study, out, progress=False)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    stages: dict[str, float] = defaultdict(float)
    bases = set()
    trials = expand(study)
    interpolated = 0
    for trial in trials:
        info = json.loads((out / "trials" / trial.id / "result.json").read_text())["info"]
        bases.add(info["base_dir"])
        interpolated += max(0, len(info.get("interpolation", [])) - 2)  # α=0 and α=1 are evaluated anyway
        for stage, seconds in info["timings_s"].items():
            if stage != "base_model":  # pre-training is counted once per base, below
                stages[stage] += seconds
    for base in sorted(bases):
        meta = json.loads((Path(base) / "mtforget_base.json").read_text())
        stages[f"pre-train tiny:{meta['tiny']}"] = meta["train_seconds"]

    print(f"\n{'mtforget demo --quick' if args.quick else 'mtforget demo'}: {len(trials)} trials, "
          f"{len(bases)} bases, fresh cache, exit code {code}\n")
    print(f"{'stage (summed over trials)':<40} {'seconds':>9}")
    for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"{stage:<40} {seconds:>9.1f}")
    print(f"{'wall time':<40} {wall:>9.1f}")
    print(f"{'peak RSS (MB)':<40} {peak_mb:>9.0f}")
    expected = len(trials) + len(bases) + interpolated
    print(f"\nmodel evaluations on every direction: {evaluations} "
          f"(K + B + interpolation = {len(trials)} + {len(bases)} + {interpolated} = {expected})")


if __name__ == "__main__":
    main()
