"""The demo end to end in a fresh cache: wall time per stage, peak memory, model evaluations.

    python benchmarks/demo_wall.py            # mtforget demo
    python benchmarks/demo_wall.py --quick    # mtforget demo --quick
    python benchmarks/demo_wall.py --full     # mtforget demo --full (--from-scratch: no shipped bases)
    python benchmarks/demo_wall.py --set model.pretrain_steps=300   # with overrides

Runs ``mtforget demo`` as a subprocess on an empty temporary cache and output folder and prints:
seconds per stage summed over the run (pre-training of each base from its metadata, then each
trial's own timings), the wall time, the peak memory of the process and its worker processes
(sampled every 0.2 s from /proc: RSS summed, RSS of the largest process, and PSS summed, which
counts the pages they share once), and how many times a model was evaluated on
every direction: K trials + B base evaluations (one per base, shared by its trials, counted from
the cache entries the run created) + the interpolation points.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path


def tree_memory_mb(pid: int, per_process: dict[int, float], now: dict[int, float]) -> tuple[float, float, float]:
    """Memory of ``pid`` and all its descendants in MB (Linux /proc): resident memory (RSS)
    summed and of the largest process, and the proportional set size (PSS) summed, which counts
    pages the processes share (the libraries every worker maps) once instead of once per process.
    Each process's RSS goes into ``now`` and raises its peak in ``per_process``."""
    total, largest, pss, stack = 0, 0, 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    largest = max(largest, int(line.split()[1]))
                    now[p] = int(line.split()[1]) / 1024
                    per_process[p] = max(per_process.get(p, 0.0), now[p])
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024, largest / 1024, pss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="mtforget demo --full (3 seeds)")
    parser.add_argument("--from-scratch", action="store_true", help="pre-train the bases instead of loading "
                        "the shipped ones")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override passed on to mtforget demo (repeatable)")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="mtforget-bench-"))
    out = Path(tempfile.mkdtemp(prefix="mtforget-demo-")) / "demo"
    command = [sys.executable, "-m", "mtforget.cli", "demo", "--no-progress", "--out", str(out)]
    command += ["--quick"] if args.quick else []
    command += ["--full"] if args.full else []
    command += ["--from-scratch"] if args.from_scratch else []
    command += [arg for override in args.set for arg in ("--set", override)]

    start = time.perf_counter()
    proc = subprocess.Popen(command, env={**os.environ, "MTFORGET_CACHE": str(cache)})
    peak, peak_one, peak_pss = 0.0, 0.0, 0.0
    per_process: dict[int, float] = {}
    at_peak: dict[int, float] = {}  # each process's RSS at the moment of the summed peak

    def sample() -> None:
        nonlocal peak, peak_one, peak_pss, at_peak
        while proc.poll() is None:
            now: dict[int, float] = {}
            summed, largest, pss = tree_memory_mb(proc.pid, per_process, now)
            if summed > peak:
                at_peak = now
            peak, peak_one, peak_pss = max(peak, summed), max(peak_one, largest), max(peak_pss, pss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    wall = time.perf_counter() - start
    sampler.join()

    stages: dict[str, float] = defaultdict(float)
    bases, interpolated, trials = set(), 0, 0
    trial_of_pid: dict[int, str] = {proc.pid: "main process"}
    for path in sorted((out / "trials").glob("*/result.json")):
        info = json.loads(path.read_text())["info"]
        trials += 1
        trial_of_pid.setdefault(info.get("pid", -1), f"worker: {path.parent.name[:44]}")
        bases.add(info["base_dir"])
        points = info.get("mitigations", {}).get("interpolation", {}).get("points", [])
        interpolated += max(0, len(points) - 2)  # α=0 and α=1 are evaluated anyway
        for stage, seconds in info["timings_s"].items():
            if stage != "base_model":  # pre-training is counted once per base, below
                stages[stage] += seconds
    shipped = sorted(Path(b).name for b in bases if not Path(b).is_relative_to(cache))
    for base in sorted(bases):
        if Path(base).is_relative_to(cache):  # pre-trained in this run (a shipped base costs nothing here)
            meta = json.loads((Path(base) / "mtforget_base.json").read_text())
            stages[f"pre-train tiny:{meta['tiny']}"] = meta["train_seconds"]
    base_evals = [d for d in (cache / "base_evals").iterdir() if d.is_dir()] if (cache / "base_evals").is_dir() else []

    print(f"\n{' '.join(command[2:4])}{' --quick' if args.quick else ''}: {trials} trials, {len(bases)} bases, "
          f"fresh cache, exit code {code}")
    print(f"shipped bases loaded: {', '.join(shipped) or 'none'}\n")
    print(f"{'stage (summed over trials and workers)':<40} {'seconds':>9}")
    for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"{stage:<40} {seconds:>9.1f}")
    print(f"{'wall time':<40} {wall:>9.1f}")
    print(f"{'peak RSS, all processes (MB)':<40} {peak:>9.0f}")
    print(f"{'peak RSS, largest process (MB)':<40} {peak_one:>9.0f}")
    print(f"{'peak PSS, all processes (MB)':<40} {peak_pss:>9.0f}")
    print("  at the summed peak, RSS (MB) / peak RSS of the process (MB):")
    for pid, mb in sorted(at_peak.items(), key=lambda kv: -kv[1]):
        print(f"    {trial_of_pid.get(pid, f'process {pid}'):<56} {mb:>6.0f} / {per_process[pid]:.0f}")
    print("\nper trial: its process's peak RSS (MB) at the end of each stage")
    for path in sorted((out / "trials").glob("*/result.json")):
        info = json.loads(path.read_text())["info"]
        peaks = " ".join(f"{k}={v:.0f}" for k, v in info.get("peak_rss_mb", {}).items())
        print(f"  {path.parent.name[:44]:<45} {peaks}")
    total = trials + len(base_evals) + interpolated
    print(f"\nmodel evaluations on every direction: {total} = {trials} trials + {len(base_evals)} base evaluations "
          f"(one per base, shared) + {interpolated} interpolation points")
    print(f"study directory (results and report): {out}")


if __name__ == "__main__":
    main()
