"""Real model shapes on one device: evaluation and fine-tuning throughput, and peak memory.

    python benchmarks/gpu.py                  # Qwen2.5-0.5B and NLLB-600M shapes (for a GPU)
    python benchmarks/gpu.py --with-7b        # and a Qwen2.5-7B shape: mixed evaluation and LoRA only
    python benchmarks/gpu.py --scale small    # the same runs at small shapes (a CPU, a few minutes)

The checkpoints are random-initialised at the shapes of the real models (layers, widths, heads,
key/value heads, feed-forward sizes), with a vocabulary of at most ``--vocab`` entries from a
tokenizer trained on the synthetic corpus (as many as its text yields; printed per model): the
speed and memory of a model are those of its shape, and a real vocabulary of 150k-250k entries
would enlarge the embeddings, the last projection and each step's logits.
Random weights rarely stop a sentence, and would stop it at random places; every output is
decoded to exactly ``--max-new-tokens`` (``min_new_tokens`` equal to it), so every method does the
same work.

Evaluation translates every direction between ``--languages`` synthetic languages,
``--per-direction`` sentences each, as a study evaluates a model: Hugging Face ``generate`` one
direction after another (the per-direction baseline; each batch holds one direction's
sentences), Hugging Face with all directions mixed in length-sorted batches sized for the device,
and CTranslate2 (all directions in one call) when it can translate on this device. Each row shows
sentences/s, the ratio to the baseline measured in the same run, and the share of outputs
identical to the baseline's. Fine-tuning runs ``--train-steps`` steps of the project's
``train()`` (full and LoRA), timed after a few warm-up steps, in tokens/s (source + target
tokens, no padding). Peak memory: the most the device held during that row (CUDA
``max_memory_allocated``), or on a CPU the process's peak resident memory so far (it only grows,
so on a CPU it reads as "by the end of this row").

Precision rows fine-tune the first shape loaded in bfloat16 (as on a GPU, also on a CPU) in each
``finetune.precision`` at lr 1e-5: tokens/s, peak memory, the ratio to float32 master weights,
and (note) the share of weights the timed steps changed. Process rows evaluate that shape with
Hugging Face ``generate`` through the evaluation's sharing (mtforget.evaluate.sharding) in this
process and under ``accelerate launch`` with ``--processes`` processes (on a CPU each gets an
equal share of ``--threads``): sentences/s, the ratio to one process, and the share of outputs
identical to one process's (100 by construction).

Models run as a study loads them: bfloat16 on a GPU that supports it, else float32. Not a test:
numbers vary by machine and by what else runs on it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import M2M100Config, M2M100ForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

from mtforget.bases.tiny_decoder import CHAT_MARKERS, CHAT_TEMPLATE
from mtforget.data.corpus import corpus_from_records
from mtforget.data.splits import direction_examples, sample_all_directions
from mtforget.data.synthetic import SyntheticWorld
from mtforget.errors import UsageError
from mtforget.evaluate.engines.base import make_engine
from mtforget.evaluate.engines.hf import batch_limits
from mtforget.evaluate.generate import Job
from mtforget.evaluate.sharding import ALONE, launch_group, translate_shared
from mtforget.models.instruction import InstructionControl
from mtforget.models.language import LanguageTokens
from mtforget.models.lora import apply_lora
from mtforget.models.tokenizer import train_tokenizer
from mtforget.train.loop import TrainSettings, train

WARMUP_STEPS = 3  # training steps left out of the timing (allocator and kernel warm-up)


@dataclass(frozen=True)
class Shape:
    """A model shape: the architecture and the sizes that decide its speed and memory."""

    name: str
    kind: str  # "decoder" (Qwen2) or "encoder-decoder" (M2M-100, NLLB's architecture)
    layers: int  # decoder-only: layers; encoder-decoder: encoder and decoder layers each
    hidden: int
    heads: int
    kv_heads: int
    ffn: int


REAL = {
    "qwen2.5-0.5b": Shape("Qwen2.5-0.5B shape", "decoder", 24, 896, 14, 2, 4864),
    "nllb-600m": Shape("NLLB-600M shape", "encoder-decoder", 12, 1024, 16, 16, 4096),
    "qwen2.5-7b": Shape("Qwen2.5-7B shape", "decoder", 28, 3584, 28, 4, 18944),
}
SMALL = {
    "qwen2.5-0.5b": Shape("Qwen2.5-0.5B shape, small", "decoder", 4, 256, 4, 2, 1024),
    "nllb-600m": Shape("NLLB-600M shape, small", "encoder-decoder", 2, 256, 4, 4, 1024),
    "qwen2.5-7b": Shape("Qwen2.5-7B shape, small", "decoder", 6, 256, 8, 2, 1024),
}


@dataclass
class Row:
    """One line of the table."""

    model: str
    work: str
    method: str
    rate: float | None
    unit: str
    baseline: float | None = None
    same: float | None = None
    peak_mb: float | None = None
    note: str = ""


def build(shape: Shape, tokenizer, device: torch.device, dtype: torch.dtype):
    """A random model of ``shape`` over ``tokenizer``'s vocabulary, on ``device`` in ``dtype``."""
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    if shape.kind == "decoder":
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.ffn,
                             num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                             num_key_value_heads=shape.kv_heads, max_position_embeddings=4096,
                             tie_word_embeddings=True, **ids)
        architecture = Qwen2ForCausalLM
    else:
        config = M2M100Config(vocab_size=len(tokenizer), d_model=shape.hidden, encoder_layers=shape.layers,
                              decoder_layers=shape.layers, encoder_attention_heads=shape.heads,
                              decoder_attention_heads=shape.heads, encoder_ffn_dim=shape.ffn,
                              decoder_ffn_dim=shape.ffn, max_position_embeddings=1024, scale_embedding=True,
                              dropout=0.0, encoder_layerdrop=0.0, decoder_layerdrop=0.0,
                              decoder_start_token_id=tokenizer.eos_token_id, **ids)
        architecture = M2M100ForConditionalGeneration
    # Initialised where it runs, in its dtype: a 7B model built in float32 on the CPU first
    # would take 30 GB of host memory and minutes of initialisation.
    with torch.device(device):
        return architecture._from_config(config, dtype=dtype).eval()


def peak_mb(device: torch.device) -> float:
    """The device's peak allocated memory since the last reset (CUDA), or the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluation_rows(label: str, model, control, jobs: list[Job], max_new_tokens: int, device: torch.device,
                    modes: tuple[str, ...]) -> list[Row]:
    """Sentences/s of each evaluation mode on ``jobs``, ratios against per-direction HF."""
    sentences = sum(len(texts) for texts, _, _ in jobs)
    rows, baseline, reference = [], None, None

    def timed(method: str, kind: str, run: Callable) -> None:
        nonlocal baseline, reference
        reset_peak(device)
        try:
            engine = make_engine(kind, model, control, max_new_tokens, cache_conversion=False,
                                 min_new_tokens=max_new_tokens, probe=(jobs[0][0][0], jobs[0][1], jobs[0][2]))
        except UsageError as exc:  # CTranslate2 cannot translate here: say why instead of a rate
            rows.append(Row(label, "evaluation", method, None, "sent/s", note=str(exc).removeprefix("eval.engine: ")))
            return
        with engine:
            run(engine, [(texts[:2], src, tgt) for texts, src, tgt in jobs[:2]])  # warm-up
            synchronize(device)
            start = time.perf_counter()
            outputs = [h for hyps in run(engine, jobs) for h in hyps]
            synchronize(device)
            rate = sentences / (time.perf_counter() - start)
        if kind == "hf" and run is one_by_one:
            baseline, reference = rate, outputs
        same = 100 * sum(a == b for a, b in zip(outputs, reference)) / len(outputs) if reference else None
        rows.append(Row(label, "evaluation", method, rate, "sent/s", rate / baseline if baseline else None, same,
                        peak_mb(device), engine.name))

    def one_by_one(engine, some_jobs):
        return [engine.translate(texts, src, tgt) for texts, src, tgt in some_jobs]

    def together(engine, some_jobs):
        return engine.translate_many(some_jobs)

    if "per-direction" in modes:
        timed("HF generate, per direction (baseline)", "hf", one_by_one)
    timed("HF generate, directions mixed", "hf", together)
    if "ctranslate2" in modes:
        timed("CTranslate2, directions mixed", "ctranslate2", together)
    return rows


def training_rows(label: str, model, control, examples, steps: int, batch_size: int, device: torch.device,
                  methods: tuple[str, ...]) -> list[Row]:
    """Tokens/s of full and LoRA fine-tuning through the project's train(), after a warm-up.

    Both train ``model`` itself (LoRA wraps it after full fine-tuning has changed its random
    weights): a copy would add a model's weights to the peak memory of the row.
    """
    rows, full_rate = [], None
    settings = TrainSettings(lr=1e-4, batch_size=batch_size, max_steps=steps, warmup_ratio=0.0, seed=0,
                             log_every=10**9)
    for method in methods:
        reset_peak(device)
        trained = model if method == "full" else apply_lora(model, 16, 32, 0.0)
        train(trained, control, examples, replace(settings, max_steps=WARMUP_STEPS), progress=False)
        outcome = train(trained, control, examples, settings, progress=False)
        rate = outcome.tokens / outcome.seconds
        if method == "full":
            full_rate = rate
        rows.append(Row(label, "fine-tuning", "full" if method == "full" else "LoRA (r 16, all projections)", rate,
                        "tok/s", rate / full_rate if full_rate else None, None, peak_mb(device),
                        f"batch {batch_size}"))
        for p in trained.parameters():
            p.grad = None
    return rows


def precision_rows(label: str, make_model: Callable, control, examples, steps: int, batch_size: int,
                   device: torch.device) -> list[Row]:
    """Full fine-tuning of a model loaded in bfloat16, in each finetune.precision at lr 1e-5."""
    rows, base = [], None
    settings = TrainSettings(lr=1e-5, batch_size=batch_size, max_steps=steps, warmup_ratio=0.0, schedule="constant",
                             seed=0, log_every=10**9)
    for precision, method in (("fp32", "fp32 master weights, bf16 autocast"),
                              ("bf16-kahan", "bf16 + Kahan AdamW (torch-optimi)"), ("bf16", "pure bf16")):
        if precision == "bf16-kahan" and importlib.util.find_spec("optimi") is None:
            rows.append(Row(label, "precision", method, None, "tok/s", note="torch-optimi is not installed"))
            continue
        model = make_model(torch.bfloat16)
        reset_peak(device)
        train(model, control, examples, replace(settings, max_steps=WARMUP_STEPS, precision=precision),
              progress=False)
        outcome = train(model, control, examples, replace(settings, precision=precision), progress=False)
        rate = outcome.tokens / outcome.seconds
        base = base or rate
        rows.append(Row(label, "precision", method, rate, "tok/s", rate / base, None, peak_mb(device),
                        f"weights changed {100 * outcome.weights_changed:.1f}% in {steps} steps"))
        del model
    return rows


def process_rows(label: str, model, control, jobs: list[Job], args, device: torch.device) -> list[Row]:
    """Evaluation shared by 1 and ``args.processes`` processes (HF generate, fixed output length)."""
    with make_engine("hf", model, control, args.max_new_tokens, min_new_tokens=args.max_new_tokens) as engine:
        translate_shared(engine, jobs[:2], ALONE)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        one = [h for hyps in translate_shared(engine, jobs, ALONE) for h in hyps]
        synchronize(device)
        seconds = time.perf_counter() - start
    sentences = len(one)
    rows = [Row(label, "processes", "HF, shared by 1 process (baseline)", sentences / seconds, "sent/s",
                1.0, 100.0, peak_mb(device))]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shared.json"
        command = [accelerate, "launch", "--multi_gpu", "--num_processes", str(args.processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", __file__, "--eval-worker", str(out),
                   *args.forwarded]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // args.processes))}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            rows.append(Row(label, "processes", f"HF, shared by {args.processes} processes", None, "sent/s",
                            note=done.stderr.strip().splitlines()[-1][:80] if done.stderr.strip() else "failed"))
            return rows
        shared = json.loads(out.read_text())
    same = 100 * sum(a == b for a, b in zip(shared["outputs"], one)) / sentences
    rate = sentences / shared["seconds"]
    rows.append(Row(label, "processes", f"HF, shared by {args.processes} processes", rate, "sent/s",
                    rate / rows[0].rate, same, shared["peak_mb"], f"{shared['threads']} threads each"))
    return rows


def eval_worker(args, out: Path) -> None:
    """One process of the launched evaluation: the first shape, evaluated through the sharing."""
    group = launch_group()
    if group.size > 1:
        from accelerate import PartialState

        device = PartialState().device
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, args.threads // max(1, group.size)))
    world = setup(args)
    model, control, _ = world.shape(PLANS[0][0], device, world.dtype(device))
    with make_engine("hf", model, control, args.max_new_tokens, min_new_tokens=args.max_new_tokens) as engine:
        translate_shared(engine, world.jobs[:2], group)
        synchronize(device)
        start = time.perf_counter()
        outputs = [h for hyps in translate_shared(engine, world.jobs, group) for h in hyps]
        synchronize(device)
        seconds = time.perf_counter() - start
    if group.is_main:
        out.write_text(json.dumps({"seconds": seconds, "outputs": outputs, "peak_mb": peak_mb(device),
                                   "threads": torch.get_num_threads()}))


PLANS = [("qwen2.5-0.5b", ("per-direction", "ctranslate2"), ("full", "lora")),
         ("nllb-600m", ("per-direction", "ctranslate2"), ("full", "lora"))]


@dataclass
class World:
    """The synthetic corpus, its evaluation jobs and fine-tuning examples, and the shapes to build."""

    args: argparse.Namespace
    languages: list[str]
    names: dict[str, str]
    texts: list[str]
    jobs: list[Job]
    examples: list

    @staticmethod
    def dtype(device: torch.device) -> torch.dtype:
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32

    def shape(self, key: str, device: torch.device, dtype: torch.dtype):
        """The model of ``key`` (random, seeded), its control and a builder for more copies."""
        shape = (SMALL if self.args.scale == "small" else REAL)[key]
        if shape.kind == "decoder":
            instruction = ["Translate the following sentence from English to Wenufi. system user assistant"]
            tokenizer = train_tokenizer(self.texts + instruction * 5, [], self.args.vocab, CHAT_MARKERS)
            tokenizer.chat_template = CHAT_TEMPLATE
            control = InstructionControl(tokenizer, names=self.names)
        else:
            tokenizer = train_tokenizer(self.texts, self.languages, self.args.vocab)
            control = LanguageTokens.for_tokenizer(tokenizer)

        def make(in_dtype: torch.dtype):
            return build(shape, tokenizer, device, in_dtype)

        return make(dtype), control, make


def setup(args) -> World:
    """The world of ``args``: the same in the main process and in each launched worker (seeded)."""
    world = SyntheticWorld(seed=0, n_languages=args.languages)
    corpus = corpus_from_records(world.corpus(args.per_direction * 3 + 400, seed=0), "synthetic")
    languages = list(corpus.languages)
    directions = [(s, t) for s in languages for t in languages if s != t]
    jobs = [([e.src for e in direction_examples(corpus.segments, s, t)[: args.per_direction]], s, t)
            for s, t in directions]
    examples = sample_all_directions(corpus.segments, languages,
                                     (args.train_steps + WARMUP_STEPS) * args.train_batch, 0)
    return World(args, languages, {lang.code: lang.name for lang in world.languages},
                 [t for s in corpus.segments for t in s.translation.values()], jobs, examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("real", "small"), default="real",
                        help="real model shapes, or small ones that a CPU runs in a few minutes")
    parser.add_argument("--with-7b", action="store_true", help="add the Qwen2.5-7B shape (GPU memory)")
    parser.add_argument("--languages", type=int, help="synthetic languages (directions: n × (n-1))")
    parser.add_argument("--per-direction", type=int, help="test sentences per direction")
    parser.add_argument("--max-new-tokens", type=int, help="tokens every output is decoded to")
    parser.add_argument("--train-steps", type=int, help="timed fine-tuning steps")
    parser.add_argument("--train-batch", type=int, help="sentence pairs per fine-tuning step")
    parser.add_argument("--vocab", type=int, default=4000, help="tokenizer vocabulary")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads of every method (CTranslate2 takes torch's count)")
    parser.add_argument("--processes", type=int, default=max(1, torch.cuda.device_count()) if torch.cuda.is_available()
                        else 2, help="processes of the shared-evaluation row (default: the GPUs, or 2 on a CPU)")
    parser.add_argument("--eval-worker", type=Path, help=argparse.SUPPRESS)  # a process of that row
    args = parser.parse_args()
    # What a launched worker needs to rebuild the same world and model.
    args.forwarded = [a for a in sys.argv[1:] if a != "--eval-worker"]
    torch.set_num_threads(args.threads)
    small = args.scale == "small"
    defaults = {"languages": 5 if small else 10, "per_direction": 8 if small else 50,
                "max_new_tokens": 16 if small else 64, "train_steps": 4 if small else 20,
                "train_batch": 8 if small else 16}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if args.eval_worker:
        eval_worker(args, args.eval_worker)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = World.dtype(device)
    world = setup(args)
    jobs, examples = world.jobs, world.examples

    load_before = os.getloadavg()
    rows: list[Row] = []
    plans = list(PLANS)
    if args.with_7b:
        plans.append(("qwen2.5-7b", (), ("lora",)))
    for key, modes, methods in plans:
        model, control, make = world.shape(key, device, dtype)
        shape = (SMALL if small else REAL)[key]
        params = sum(p.numel() for p in model.parameters()) / 1e6
        label = f"{shape.name} ({params:.0f}M)"
        limits = batch_limits(model, args.max_new_tokens)
        print(f"{label}: vocabulary {len(control.tokenizer)}, HF batches of at most {limits.max_sentences} sentences "
              f"and {limits.max_tokens} positions (+{limits.reserve_per_row} a row)", flush=True)
        rows += evaluation_rows(label, model, control, jobs, args.max_new_tokens, device, modes)
        if key == plans[0][0]:
            rows += process_rows(label, model, control, jobs, args, device)
        rows += training_rows(label, model, control, examples, args.train_steps, args.train_batch, device, methods)
        del model
        reset_peak(device)
        if key == plans[0][0]:
            rows += precision_rows(label, make, control, examples, args.train_steps, args.train_batch, device)
            reset_peak(device)

    load_after = os.getloadavg()
    sentences = sum(len(t) for t, _, _ in jobs)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{where}, {dtype}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"evaluation: {sentences} sentences in {len(jobs)} directions, every output {args.max_new_tokens} tokens; "
          f"fine-tuning: {args.train_steps} timed steps of {args.train_batch} pairs "
          f"({WARMUP_STEPS} warm-up steps not timed)")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores\n")
    header = (f"{'model':<34} {'work':<11} {'method':<38} {'rate':>10} {'unit':<6} {'x base':>7} {'same %':>7} "
              f"{'peak MB':>8}  note")
    print(header)
    print("-" * len(header))
    for r in rows:
        rate = f"{r.rate:10.1f}" if r.rate is not None else f"{'-':>10}"
        ratio = f"{r.baseline:6.2f}x" if r.baseline is not None else f"{'-':>7}"
        same = f"{r.same:7.1f}" if r.same is not None else f"{'-':>7}"
        peak = f"{r.peak_mb:8.0f}" if r.peak_mb is not None else f"{'-':>8}"
        print(f"{r.model:<34} {r.work:<11} {r.method:<38} {rate} {r.unit:<6} {ratio} {same} {peak}  {r.note}")
    print(f"\nx base: against the first row of the same model and work (evaluation: HF per direction; "
          f"processes: one process; fine-tuning: full; precision: fp32 master weights). Peak MB: {'CUDA max_memory_allocated during the row' if device.type == 'cuda' else 'process peak RSS so far (it only grows)'}.")


if __name__ == "__main__":
    main()
