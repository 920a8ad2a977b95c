"""Subsampling large fine-tuning bitext (``finetune.data``): time and peak memory of one pass.

Generates a TSV of ``--lines`` sentence pairs (random words, realistic lengths), then, each in a
fresh process so that peak resident memory is its own:

- the floor: read every line and split it on the tab, nothing kept (what any one pass costs);
- ``sample_bitext``: the project's seeded one-pass sample of ``--size`` pairs in two directions,
  with the contamination guard against a held-out set of 2,000 sentences;
- reading the whole file as a corpus (``read_tsv``), what a study did before ``finetune.data``.

    python benchmarks/bitext_sample.py [--lines 10000000] [--size 100000] [--skip-corpus]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [f"w{i}" for i in range(5000)]


def generate(path: Path, lines: int, seed: int = 0) -> None:
    """``lines`` pairs of 4-20 random words per side."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(lines):
            n = rng.randint(4, 20)
            f.write(" ".join(rng.choices(WORDS, k=n)) + "\t" + " ".join(rng.choices(WORDS, k=n + rng.randint(-2, 3)))
                    + "\n")


def run_one(kind: str, path: str, size: int) -> dict:
    """One measurement, in this process."""
    start = time.perf_counter()
    if kind == "floor":
        with open(path, encoding="utf-8") as f:
            n = sum(1 for line in f if len(line.rstrip("\n").split("\t")) == 2)
        detail = f"{n} lines"
    elif kind == "sample":
        from mtforget.data.bitext import BitextSource, sample_bitext

        held = {f"held out sentence {i}" for i in range(2000)}
        sample = sample_bitext([BitextSource(path, "tsv", ("cs", "en"))], [("cs", "en"), ("en", "cs")], size,
                               200, 0, held)
        detail = f"{len(sample.train)} train + {len(sample.dev)} dev pairs"
    else:
        from mtforget.data.loaders import read_tsv

        corpus = read_tsv(path, ["cs", "en"])
        detail = f"{len(corpus.segments)} segments held"
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "detail": detail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--skip-corpus", action="store_true", help="do not read the whole file as a corpus")
    parser.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        print(json.dumps(run_one(args._one[0], args._one[1], int(args._one[2]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bitext.tsv"
        start = time.perf_counter()
        generate(path, args.lines)
        print(f"generated {args.lines:,} lines ({path.stat().st_size / 2**20:.0f} MB) in "
              f"{time.perf_counter() - start:.1f} s")
        kinds = [("floor", "read and split every line (floor)"),
                 ("sample", f"sample_bitext: {args.size:,} pairs, 2 directions"),
                 ("corpus", "read_tsv: the whole file as a corpus")]
        rows = []
        for kind, label in kinds:
            if kind == "corpus" and args.skip_corpus:
                continue
            out = subprocess.run([sys.executable, __file__, "--_one", kind, str(path), str(args.size)],
                                 capture_output=True, text=True, check=True)
            rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    floor = rows[0][1]
    print(f"\n| {'method':<45} | seconds | × floor | peak RSS MB | × floor | result |")
    print(f"|{'-' * 47}|---------|---------|-------------|---------|--------|")
    for label, r in rows:
        print(f"| {label:<45} | {r['seconds']:7.1f} | {r['seconds'] / floor['seconds']:6.2f}× | "
              f"{r['peak_mb']:11.0f} | {r['peak_mb'] / floor['peak_mb']:6.2f}× | {r['detail']} |")


if __name__ == "__main__":
    main()
