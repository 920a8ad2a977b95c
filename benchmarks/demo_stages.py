"""Time every stage of the demo, and generation throughput against a per-sentence loop.

    python benchmarks/demo_stages.py            # the quick demo's settings
    python benchmarks/demo_stages.py --full     # the full demo's settings, larger tiny base

Runs in a fresh temporary cache so nothing is reused, and prints two tables: seconds per stage,
and sentences/s of batched generation against a per-sentence ``generate`` loop measured on the same
sentences in the same run (the baseline of the ratio column). The evaluation stages use the
study's generation engine (``eval.engine``); ``benchmarks/generation.py`` compares the engines.
Not a test: numbers vary by machine.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from mtforget.bases.tiny import tiny_base
from mtforget.data.corpus import read_jsonl
from mtforget.data.splits import direction_examples, sample_directions, split_by_id
from mtforget.evaluate.engines.base import make_engine
from mtforget.evaluate.forgetting import EvalSettings, evaluate_directions
from mtforget.evaluate.generate import translate
from mtforget.evaluate.lid import make_identifier
from mtforget.models.loading import load_model, make_control
from mtforget.study.config import apply_overrides, grid_parts, parse_study
from mtforget.study.demo import demo_study
from mtforget.study.trial import resolve_directions, synthetic_corpus_path
from mtforget.train.loop import TrainSettings, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full demo's corpus and the 'base' size")
    parser.add_argument("--loop-sentences", type=int, default=200, help="sentences for the per-sentence baseline")
    args = parser.parse_args()
    os.environ["MTFORGET_CACHE"] = tempfile.mkdtemp(prefix="mtforget-bench-")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    raw = demo_study(quick=not args.full)
    tiny = "base" if args.full else raw["model"]["tiny"]
    size = max(v for part in grid_parts(raw["grid"]) for v in part.get("finetune.size", []))
    study = parse_study(apply_overrides(raw, [f"model.tiny={tiny}", f"finetune.size={size}"]), "bench")
    stages: list[tuple[str, float, str]] = []

    def timed(name, fn, note=""):
        start = time.perf_counter()
        value = fn()
        stages.append((name, time.perf_counter() - start, note if isinstance(note, str) else note(value)))
        return value

    syn = study.corpus.synthetic
    path = timed("generate synthetic corpus", lambda: synthetic_corpus_path(syn.languages, syn.segments, syn.seed),
                 f"{syn.languages} languages, {syn.segments} segments")
    corpus = timed("read + split corpus", lambda: read_jsonl(path))
    splits = split_by_id(corpus, study.corpus.dev_size, study.corpus.test_size, study.corpus.split_seed)
    base_dir = timed(f"pre-train tiny:{tiny}", lambda: tiny_base(tiny, corpus, splits, 0,
                                                                 study.model.pretrain_steps, progress=False))
    model, tokenizer = load_model(base_dir)
    languages = list(corpus.languages)
    control, _ = make_control(model, tokenizer, languages)
    lid = timed("train language identifier", lambda: make_identifier(splits.train, languages))
    directions = [(s, t) for s in languages for t in languages if s != t]
    settings = EvalSettings(study.eval.max_sentences, study.eval.batch_size, study.eval.max_new_tokens)

    def evaluate() -> dict:
        # A fresh engine each time, as the runner builds one: a converted engine holds the weights
        # it was built from, and fine-tuning changes them. Its build time counts in the stage.
        with make_engine(study.eval.engine, model, control, settings.max_new_tokens, study.eval.compute_type,
                         max_batch_sentences=settings.batch_size, cache_conversion=False) as engine:
            engine_names.append(engine.name)
            return evaluate_directions(engine, splits.test, directions, lid, settings, progress=False)

    engine_names: list[str] = []
    evaluation = timed("evaluate base (all directions)", evaluate,
                       lambda r: f"{sum(v['n'] for v in r.values())} sentences, {engine_names[-1]}")
    n_eval = sum(v["n"] for v in evaluation.values())
    eval_seconds = stages[-1][1]

    # Throughput on the base model: the same sentences, per-sentence loop vs batched.
    rng = random.Random(0)
    sample = []
    while len(sample) < args.loop_sentences:
        src, tgt = rng.choice(directions)
        sample += [(src, tgt, e.src) for e in direction_examples(splits.test, src, tgt)[:10]]
    sample = sample[: args.loop_sentences]
    by_dir: dict[tuple[str, str], list[str]] = {}
    for src, tgt, text in sample:
        by_dir.setdefault((src, tgt), []).append(text)

    def run(batch_size: int) -> float:
        start = time.perf_counter()
        for (src, tgt), texts in by_dir.items():
            translate(model, control, texts, src, tgt, batch_size=batch_size, max_new_tokens=settings.max_new_tokens)
        return time.perf_counter() - start

    loop_s, batched_s = run(1), run(settings.batch_size)

    ft_dirs = resolve_directions(None, corpus, languages)
    examples = sample_directions(splits.train, ft_dirs, size, 0)
    dev = sample_directions(splits.dev, ft_dirs, study.finetune.dev_size, 0)
    ft = study.finetune
    timed(f"fine-tune ({size} pairs)", lambda: train(
        model, control, examples, TrainSettings(lr=ft.lr, batch_size=ft.batch_size, epochs=ft.epochs,
                                                schedule=ft.schedule, eval_every=ft.eval_every,
                                                patience=ft.patience), dev=dev, progress=False),
        lambda o: f"{o.steps} steps")
    timed("evaluate fine-tuned (all directions)", evaluate, lambda r: engine_names[-1])

    print(f"\nDemo stages ({'full' if args.full else 'quick'} settings, tiny:{tiny}, fresh cache)\n")
    print(f"{'stage':<40} {'seconds':>9}  note")
    for name, seconds, note in stages:
        print(f"{name:<40} {seconds:>9.2f}  {note}")
    print(f"{'total':<40} {sum(s for _, s, _ in stages):>9.2f}")
    print(f"\nGeneration throughput (greedy, {len(sample)} sentences in {len(by_dir)} directions)\n")
    print(f"{'method':<40} {'sent/s':>9} {'vs loop':>9}")
    print(f"{'per-sentence generate loop (baseline)':<40} {len(sample) / loop_s:>9.1f} {1.0:>8.2f}x")
    print(f"{'batched generate, length-sorted':<40} {len(sample) / batched_s:>9.1f} {loop_s / batched_s:>8.2f}x")
    print(f"{'whole base evaluation (' + engine_names[0] + ')':<40} {n_eval / eval_seconds:>9.1f} "
          f"{(n_eval / eval_seconds) / (len(sample) / loop_s):>8.2f}x")


if __name__ == "__main__":
    main()
