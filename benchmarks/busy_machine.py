"""A study on a machine where another job already runs: the default thread count against taking
every core.

Runs ``mtforget demo --quick`` (fresh cache each time, so pre-training is included):

1. alone, with the default threads (the free cores);
2. beside one CPU-bound process, with the default threads;
3. beside one CPU-bound process, with ``resources.cpus`` set to every core (what a trial took
   before the default followed the free cores); stopped after ``--limit`` seconds.

and prints each wall time with its ratio to the run alone.

    python benchmarks/busy_machine.py [--limit 600]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def quick_demo(out: str, cache: str, extra: list[str], limit: float) -> tuple[float, bool]:
    """Wall seconds of one quick demo, and whether it finished within ``limit``."""
    env = {**os.environ, "MTFORGET_CACHE": cache}
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "mtforget.cli", "demo", "--quick", "--no-progress", "--out", out,
                        *extra], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=limit)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, False
    return time.perf_counter() - start, True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, default=600, help="seconds before a run is stopped")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    runs = [("alone, default threads", False, []),
            ("beside a busy process, default threads", True, []),
            (f"beside a busy process, resources.cpus={cores} (every core)", True, ["--set", f"resources.cpus={cores}"])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, busy, extra) in enumerate(runs):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                time.sleep(1.0 if busy else 0)
                seconds, finished = quick_demo(f"{tmp}/out{i}", f"{tmp}/cache{i}", extra, args.limit)
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
            rows.append((label, seconds, finished))
    alone = rows[0][1]
    print(f"{cores} usable cores\n")
    print(f"| {'run':<60} | wall s | × alone |")
    print(f"|{'-' * 62}|--------|---------|")
    for label, seconds, finished in rows:
        mark = "" if finished else ">"
        print(f"| {label:<60} | {mark}{seconds:5.0f} | {mark}{seconds / alone:5.2f}× |")


if __name__ == "__main__":
    main()
