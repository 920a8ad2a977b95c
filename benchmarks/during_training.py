"""What sampling forgetting during training costs: the fine-tuning stage of the demo with
``eval.during_training`` off and on.

Runs the demo (``--quick`` by default) in one cache, first once to build and cache its bases, then
with sampling off and on at ``--every`` steps (default sample size otherwise), each in a fresh
study directory, and prints the fine-tuning stage's seconds summed over the trials (as each
trial's ``result.json`` records them) with the ratio to sampling off. Threads are fixed
(``resources.cpus``) so both runs do the same arithmetic.

    python benchmarks/during_training.py [--every 20] [--full] [--repeats 2] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def demo(out: Path, cache: str, full: bool, extra: list[str]) -> dict:
    """Per trial of one demo run: the fine-tuning stage's seconds, steps and curve points."""
    env = {**os.environ, "MTFORGET_CACHE": cache}
    command = [sys.executable, "-m", "mtforget.cli", "demo", "--no-progress", "--out", str(out),
               "--set", "resources.cpus=1", *extra, *([] if full else ["--quick"])]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = {}
    for result in sorted(out.glob("trials/*/result.json")):
        info = json.loads(result.read_text())["info"]
        trials[result.parent.name] = (info["timings_s"]["finetune"], info["train"]["steps"],
                                      len(info.get("forgetting_curve") or []))
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=20, help="steps between sampled checks")
    parser.add_argument("--full", action="store_true", help="the full demo instead of --quick")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting (the fastest counts)")
    parser.add_argument("--cache", help="a cache that already holds the demo's bases (default: a fresh one, "
                                        "filled by a first run that is not timed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or f"{tmp}/cache"
        if not args.cache:
            demo(Path(tmp) / "warm-up", cache, args.full, [])
        best: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for label, extra in (("off", []), (f"every {args.every} steps",
                                               ["--set", f"eval.during_training.every={args.every}"])):
                trials = demo(Path(tmp) / f"{label}-{repeat}".replace(" ", "-"), cache, args.full, extra)
                total = sum(seconds for seconds, _, _ in trials.values())
                if label not in best or total < best[label]["total"]:
                    best[label] = {"total": total, "trials": trials}
    base = best["off"]["total"]
    print(f"demo{'' if args.full else ' --quick'}, resources.cpus=1, fastest of {args.repeats}\n")
    print("| eval.during_training | fine-tuning s (all trials) | × off | curve points per trial |")
    print("|---|---|---|---|")
    for label, run in best.items():
        points = ", ".join(str(p) for _, _, p in run["trials"].values())
        print(f"| {label} | {run['total']:.1f} | {run['total'] / base:.2f}× | {points} |")
    print("\nper trial (fine-tuning s, steps):")
    for label, run in best.items():
        for trial, (seconds, steps, _) in run["trials"].items():
            print(f"  {label:>16}  {trial}: {seconds:.1f} s, {steps} steps")


if __name__ == "__main__":
    main()
