"""Training throughput: the project's loop against a bare PyTorch loop on the same model and batches.

Both loops train the same tiny:small-sized M2M-100 (the same initial weights) on the same
length-grouped batches of the demo corpus, with AdamW, gradient clipping and a linear schedule.
Tokens are source + target tokens without padding. The table also shows what the batching and
precision choices are worth: random (ungrouped) batches, those batches cut into length-sorted
pieces (how tiny bases pre-train), and bf16 autocast with the fused (SDPA) or plain ("eager")
attention. bf16 only pays on hardware that multiplies it natively (AVX-512 BF16, AMX, GPUs).

    python benchmarks/training.py [--steps 200] [--model small|base]
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

import torch
from transformers import get_scheduler

from mtforget.bases.specs import TINY_SPECS
from mtforget.bases.tiny_seq2seq import build_model
from mtforget.data.corpus import read_jsonl
from mtforget.data.splits import sample_all_directions, split_by_id
from mtforget.models.language import LanguageTokens
from mtforget.models.tokenizer import train_tokenizer
from mtforget.study.demo import demo_study
from mtforget.study.trial import synthetic_corpus_path
from mtforget.train.loop import StepBatches, TrainSettings, _length, train

WARMUP = 10  # steps left out of the timing (allocator and kernel warm-up)


def bare_loop(model, control, examples, settings: TrainSettings, grouped: bool, bf16: bool = False) -> dict:
    """The minimal loop: batches, forward, backward, clip, step. Tokens/s after the warm-up."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=settings.max_steps)
    lengths = [_length(ex) for ex in examples] if grouped else None
    sampler = StepBatches(len(examples), settings.batch_size, settings.seed, 0, settings.max_steps, lengths)
    model.train()
    tokens, padded, start = 0, 0, None
    for step, indices in enumerate(sampler):
        if step == WARMUP:
            tokens, padded, start = 0, 0, time.perf_counter()
        batch = control.batch([examples[i] for i in indices])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())
        padded += batch["input_ids"].numel() + batch["labels"].numel()
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens / seconds, "padding": 1 - tokens / padded}


def project_loop(model, control, examples, settings: TrainSettings) -> dict:
    """mtforget's train(): Accelerate, step batches, logging; timed after the same warm-up."""
    train(model, control, examples, replace(settings, max_steps=WARMUP), progress=False)  # builds the Accelerator and warms the kernels
    outcome = train(model, control, examples, settings, progress=False)
    return {"tokens_per_s": outcome.tokens / outcome.seconds, "padding": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--model", choices=sorted(TINY_SPECS), default="small")
    args = parser.parse_args()
    corpus_cfg = demo_study()["corpus"]
    corpus = read_jsonl(synthetic_corpus_path(corpus_cfg["synthetic"]["languages"],
                                              corpus_cfg["synthetic"]["segments"], 0))
    splits = split_by_id(corpus, corpus_cfg["dev_size"], corpus_cfg["test_size"])
    spec = TINY_SPECS[args.model]
    languages = list(corpus.languages)
    tokenizer = train_tokenizer((t for s in splits.train for t in s.translation.values()), languages, spec.vocab_size)
    control = LanguageTokens(tokenizer)
    torch.manual_seed(0)
    initial = build_model(spec, tokenizer)
    eager = build_model(spec, tokenizer, "eager")
    eager.load_state_dict(initial.state_dict())  # the same weights, plain attention
    settings = TrainSettings(lr=spec.lr, batch_size=spec.batch_size, max_steps=args.steps, warmup_ratio=0.0,
                             seed=0, log_every=50)
    examples = sample_all_directions(splits.train, languages, args.steps * spec.batch_size, 0)

    pieces = replace(settings, group_by_length=False, micro_batches=2)
    runs = [
        ("bare PyTorch loop, length-grouped (baseline)", initial, lambda m: bare_loop(m, control, examples, settings, True)),
        ("mtforget train(), length-grouped", initial, lambda m: project_loop(m, control, examples, settings)),
        ("bare loop, random batches", initial, lambda m: bare_loop(m, control, examples, settings, False)),
        ("mtforget train(), random batches in 2 pieces", initial,
         lambda m: project_loop(m, control, examples, pieces)),
        ("bare loop, length-grouped, bf16, SDPA attention", initial,
         lambda m: bare_loop(m, control, examples, settings, True, True)),
        ("bare loop, length-grouped, bf16, plain attention", eager,
         lambda m: bare_loop(m, control, examples, settings, True, True)),
        ("mtforget train(), random in 2 pieces, bf16, plain", eager,
         lambda m: project_loop(m, control, examples, replace(pieces, bf16=True))),
    ]
    results = [(name, fn(copy.deepcopy(model))) for name, model, fn in runs]
    base = results[0][1]["tokens_per_s"]
    print(f"\nTraining throughput, tiny:{args.model} ({sum(p.numel() for p in initial.parameters()):,} parameters), "
          f"batch {spec.batch_size}, {args.steps} steps ({WARMUP} warm-up steps not timed), "
          f"{torch.get_num_threads()} threads\n")
    print(f"{'loop':52s} {'tokens/s':>10s} {'vs bare':>8s} {'padding':>8s}")
    for name, r in results:
        padding = f"{r['padding']:.0%}" if r["padding"] is not None else "–"
        print(f"{name:52s} {r['tokens_per_s']:10.0f} {r['tokens_per_s'] / base:7.2f}x {padding:>8s}")


if __name__ == "__main__":
    main()
