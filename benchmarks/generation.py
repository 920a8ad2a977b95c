"""Generation engines on the demo's base model: speed and agreement on the same sentences.

    python benchmarks/generation.py                      # tiny:base on the demo corpus (built if missing)
    python benchmarks/generation.py --model DIR          # any local checkpoint trained on that corpus
    python benchmarks/generation.py --threads 1          # one thread for every method

Translates the demo's test sentences in every direction (40 per direction, 90 directions: 3,600
sentences) with a per-sentence ``generate`` loop (on a subset of directions; its rate is per
sentence, so it carries over), batched Hugging Face ``generate`` (length-sorted, token-budget
batches), and CTranslate2 in float32 and int8. It prints one table: sentences/s, speed-ups over
the loop and over batched HF, mean chrF over directions, its distance from batched HF's, and the
share of outputs identical to batched HF's. Every method runs with the same thread count; the
CTranslate2 rows exclude the one-off conversion, shown in its own column. Not a test: numbers
vary by machine and by what else runs on it (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtforget.bases.tiny import tiny_base
from mtforget.data.corpus import read_jsonl
from mtforget.data.splits import direction_examples, split_by_id
from mtforget.evaluate.engines.base import ENGINE_CHRF_TOLERANCE, GenerationEngine, make_engine
from mtforget.evaluate.generate import translate
from mtforget.evaluate.metrics import score
from mtforget.models.loading import count_parameters, load_model, make_control
from mtforget.study.config import parse_study
from mtforget.study.demo import demo_study
from mtforget.study.trial import synthetic_corpus_path

Direction = tuple[str, str]


@dataclass
class Run:
    """One method's translations of every direction it ran, and how long they took."""

    method: str
    outputs: dict[Direction, list[str]]
    seconds: float
    setup_seconds: float | None = None

    @property
    def sentences(self) -> int:
        return sum(len(v) for v in self.outputs.values())

    @property
    def rate(self) -> float:
        return self.sentences / self.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: tiny:base on the demo corpus)")
    parser.add_argument("--per-direction", type=int, default=40, help="test sentences per direction")
    parser.add_argument("--loop-directions", type=int, default=8,
                        help="directions the per-sentence loop translates (its sent/s applies to all)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of every method")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each batched method (best kept)")
    args = parser.parse_args()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)  # the CTranslate2 engine takes the same count from torch

    study = parse_study(demo_study(), "demo")
    c = study.corpus
    corpus = read_jsonl(synthetic_corpus_path(c.synthetic.languages, c.synthetic.segments, c.synthetic.seed))
    splits = split_by_id(corpus, c.dev_size, c.test_size, c.split_seed)
    languages = list(corpus.languages)
    model_dir = args.model or tiny_base("base", corpus, splits, study.model.seed, progress=True)
    model, tokenizer = load_model(model_dir)
    control, added = make_control(model, tokenizer, languages)
    if added:
        raise SystemExit(f"{model_dir} lacks language tokens for {added}: not a model of the demo corpus")
    max_new_tokens = study.eval.max_new_tokens

    directions = [(s, t) for s in languages for t in languages if s != t]
    test = {d: direction_examples(splits.test, *d)[: args.per_direction] for d in directions}
    test = {d: ex for d, ex in test.items() if ex}
    sources = {d: [e.src for e in ex] for d, ex in test.items()}
    loop_dirs = list(test)[: args.loop_directions]
    load_before = os.getloadavg()

    def timed(method: str, fn: Callable[[str, list[str], str], list[str]], dirs: list[Direction],
              repeats: int) -> Run:
        fn(dirs[0][0], sources[dirs[0]][:4], dirs[0][1])  # warm-up: first-call allocations and caches
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            outputs = {d: fn(d[0], sources[d], d[1]) for d in dirs}
            runs.append(Run(method, outputs, time.perf_counter() - start))
        return min(runs, key=lambda r: r.seconds)  # the least disturbed by other work on the machine

    def timed_many(method: str, engine: GenerationEngine, dirs: list[Direction], repeats: int) -> Run:
        """As a study evaluates: every direction handed to the engine in one call."""
        engine.translate(sources[dirs[0]][:4], *dirs[0])  # warm-up
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            outputs = dict(zip(dirs, engine.translate_many([(sources[d], d[0], d[1]) for d in dirs])))
            runs.append(Run(method, outputs, time.perf_counter() - start))
        return min(runs, key=lambda r: r.seconds)

    def engine_run(method: str, kind: str, compute_type: str = "default") -> Run:
        start = time.perf_counter()
        # Converted to a scratch directory: the setup column is a real conversion, not a cache hit.
        with make_engine(kind, model, control, max_new_tokens, compute_type, cache_conversion=False) as engine:
            setup = time.perf_counter() - start
            run = timed_many(f"{method} ({engine.name})", engine, list(test), args.repeats)
        run.setup_seconds = setup if kind != "hf" else None
        return run

    loop = timed("per-sentence HF generate loop", lambda src, texts, tgt: translate(
        model, control, texts, src, tgt, batch_size=1, max_new_tokens=max_new_tokens), loop_dirs, 1)
    hf = engine_run("batched HF generate", "hf")
    runs = [loop, hf, engine_run("CTranslate2 float32", "ctranslate2", "float32"),
            engine_run("CTranslate2 int8", "ctranslate2", "int8")]
    load_after = os.getloadavg()

    refs = {d: [e.tgt for e in ex] for d, ex in test.items()}
    print(f"\nGreedy translation, {model_dir} ({count_parameters(model) / 1e6:.1f}M parameters)")
    print(f"{hf.sentences} sentences in {len(test)} directions (per-sentence loop: {loop.sentences} sentences "
          f"in {len(loop_dirs)} directions), max_new_tokens {max_new_tokens}, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores\n")
    header = (f"{'method':<50} {'sent/s':>8} {'x loop':>7} {'x HF':>6} {'chrF':>6} {'|dchrF|':>8} "
              f"{'same %':>7} {'setup s':>8}")
    print(header)
    print("-" * len(header))
    for run in runs:
        dirs = list(run.outputs)
        chrf = _mean_chrf(run.outputs, refs)
        delta = abs(chrf - _mean_chrf({d: hf.outputs[d] for d in dirs}, refs))
        same = 100 * np.mean([a == b for d in dirs for a, b in zip(run.outputs[d], hf.outputs[d])])
        setup = f"{run.setup_seconds:.2f}" if run.setup_seconds is not None else "-"
        print(f"{run.method:<50} {run.rate:>8.1f} {run.rate / loop.rate:>6.1f}x {run.rate / hf.rate:>5.2f}x "
              f"{chrf:>6.2f} {delta:>8.2f} {same:>7.1f} {setup:>8}")
    print(f"\nchrF: mean over directions (the loop's row: over its {len(loop_dirs)} directions, compared with "
          f"batched HF on the same ones); tolerance between engines: {ENGINE_CHRF_TOLERANCE} chrF.")



def _mean_chrf(outputs: dict[Direction, list[str]], refs: dict[Direction, list[str]]) -> float:
    """Mean over directions of corpus chrF, as a study averages a category's directions."""
    return float(np.mean([score(hyps, refs[d], d[1])["chrf"] for d, hyps in outputs.items()]))


if __name__ == "__main__":
    main()
