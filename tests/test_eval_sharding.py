"""Evaluation on every process of a launch: each translates whole batches of the same plan, and
the result is the one process's, sentence for sentence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtforget.evaluate.sharding import ALONE, EvalGroup, translate_shared

ROOT = Path(__file__).resolve().parent.parent


def evaluation_setup():
    """A tiny random M2M-100 (weights at a large scale, so outputs differ by sentence), its
    control, the tiny study's test split, directions and language identifier."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    from mtforget.data.corpus import read_jsonl
    from mtforget.data.splits import split_by_id
    from mtforget.evaluate.lid import make_identifier
    from mtforget.models.language import LanguageTokens
    from mtforget.models.tokenizer import train_tokenizer
    from mtforget.study.trial import synthetic_corpus_path

    corpus = read_jsonl(synthetic_corpus_path(5, 600, 0))
    splits = split_by_id(corpus, 40, 12, 0)
    languages = list(corpus.languages)
    texts = [t for s in corpus.segments for t in s.translation.values()]
    tokenizer = train_tokenizer(texts, languages, 400)
    config = M2M100Config(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, init_std=0.5, dropout=0.0,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(config).eval()
    directions = [(s, t) for s in languages for t in languages if s != t]
    return model, LanguageTokens.for_tokenizer(tokenizer), splits, directions, make_identifier(splits.train, languages)


def evaluate_all(group: EvalGroup) -> dict | None:
    """Every direction scored with each engine (small batches, so that there are many)."""
    from mtforget.evaluate.engines.base import make_engine
    from mtforget.evaluate.forgetting import EvalSettings, evaluate_directions

    model, control, splits, directions, lid = evaluation_setup()
    settings = EvalSettings(max_sentences=6, batch_size=5, max_new_tokens=10)
    results = {}
    for kind in ("hf", "ctranslate2"):
        with make_engine(kind, model, control, 10, max_batch_sentences=5, max_batch_tokens=60,
                         cache_conversion=False) as engine:
            results[kind] = evaluate_directions(engine, splits.test, directions, lid, settings, progress=False,
                                                group=group)
    return results if group.is_main else None


def test_two_processes_evaluate_as_one(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the project"
    script = tmp_path / "shared.py"
    script.write_text(
        "import json, sys, torch\n"
        "from mtforget.evaluate.sharding import launch_group\n"
        "from tests.test_eval_sharding import evaluate_all\n"
        "torch.set_num_threads(1)\n"
        "group = launch_group()\n"
        "assert group.size == 2\n"
        "results = evaluate_all(group)\n"
        "if group.is_main:\n"
        "    open(sys.argv[1], 'w').write(json.dumps(results))\n")
    out = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # --multi_gpu selects the torchrun launcher; on a machine without CUDA the processes join over gloo.
    done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = json.loads(json.dumps(evaluate_all(ALONE)))
    finally:
        torch.set_num_threads(before)
    two = json.loads(out.read_text())
    for kind in ("hf", "ctranslate2"):
        assert len(one[kind]) == 20 and sum(len(r["hypotheses"]) for r in one[kind].values()) == 120
        assert two[kind] == one[kind], kind  # every hypothesis and every score


def test_one_process_takes_the_batches_of_translate_many(one_thread):
    from mtforget.evaluate.engines.hf import HFEngine

    model, control, splits, directions, _ = evaluation_setup()
    jobs = [([s.translation[src] for s in splits.test if src in s.translation and tgt in s.translation][:6], src, tgt)
            for src, tgt in directions[:6]]
    engine = HFEngine(model, control, max_new_tokens=10, max_batch_sentences=4)
    rows = [r for texts, src, tgt in jobs for r in ((t, src, tgt) for t in texts)]
    plan = engine.plan_batches(rows)
    assert sorted(i for batch in plan for i in batch) == list(range(len(rows))) and len(plan) > 3
    # The planned batches are translate_many's own: the same strings, and each row's outputs
    # come back to its job in input order.
    assert translate_shared(engine, jobs, ALONE) == engine.translate_many(jobs)
