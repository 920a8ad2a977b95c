"""``mtforget bases build``: pre-train the demo's bases on the demo's synthetic world, store them in
half precision with their tokenizers, score them, and write the manifest the demo checks
(:mod:`mtforget.bases.prebuilt`).

It lives with the studies because it needs the demo study's world and evaluation settings; the
bases themselves come from the same cached builder every study uses, so running it twice reuses
the first run's pre-training.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import safetensors
import tokenizers
import torch
import transformers

from mtforget.bases.prebuilt import (MANIFEST_FORMAT, MANIFEST_NAME, MAX_BYTES, PREBUILT_DIR,
                                     normalized_recipe, world_fingerprint)
from mtforget.bases.specs import TINY_NAMES
from mtforget.bases.tiny import tiny_base
from mtforget.atomic import write_json_atomic
from mtforget.cache import file_digest
from mtforget.evaluate.engines.base import make_engine
from mtforget.evaluate.forgetting import BaseGate, EvalSettings, evaluate_directions
from mtforget.evaluate.lid import make_identifier
from mtforget.models.loading import count_parameters, load_model, make_control
from mtforget.study.config import StudyConfig, parse_study
from mtforget.study.demo import demo_study
from mtforget.study.trial import TrialMemo, _corpus_and_splits, _language_names

log = logging.getLogger("mtforget")


def library_versions() -> dict[str, str]:
    """The versions that decide a base's weights and files, recorded in the manifest."""
    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__}


def export_half(src: Path, out: Path) -> None:
    """Copy the base in ``src`` to ``out`` with float16 weights (tokenizer, chat template and
    metadata files as they are)."""
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(src)
    model.to(torch.float16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copy2(src / "mtforget_base.json", out / "mtforget_base.json")


def direction_scores(base_dir: Path, study: StudyConfig, corpus, splits, lid) -> tuple[dict[tuple[str, str], dict], str]:
    """A base's scores on every direction of the study's languages, scored as the demo scores a
    base (its test split, sentence cap, engine and decoding settings); with the engine's name."""
    languages = list(corpus.languages)
    model, tokenizer = load_model(base_dir)
    control, _ = make_control(model, tokenizer, languages, _language_names(study.corpus), study.finetune.max_length)
    settings = EvalSettings(study.eval.max_sentences, study.eval.batch_size, study.eval.max_new_tokens)
    directions = [(s, t) for s in languages for t in languages if s != t]
    with make_engine(study.eval.engine, model, control, study.eval.max_new_tokens, study.eval.compute_type,
                     max_batch_sentences=study.eval.batch_size, cache_conversion=False) as engine:
        scores = evaluate_directions(engine, splits.test, directions, lid, settings, desc=f"score {base_dir.name}",
                                     progress=False)
        name = engine.name
    return {tuple(key.split("-", 1)): r for key, r in scores.items()}, name


def quality_summary(results: dict[tuple[str, str], dict], low_resource: list[str], gate: BaseGate) -> dict:
    """A base's mean chrF over all directions, its worst direction, the directions the demo's
    base-quality gate would flag (with why), and (with a pre-training mix) its mean over the
    directions between English and the low-resource languages, the ones the demo fine-tunes on."""
    scores = {key: r["chrf"] for key, r in results.items()}
    flagged = {f"{s}-{t}": reason for (s, t), r in sorted(results.items()) if (reason := gate.flag(r))}
    summary = {"mean_chrf": round(sum(scores.values()) / len(scores), 2), "worst_chrf": round(min(scores.values()), 2),
               "gate_flagged": flagged}
    low = [chrf for (s, t), chrf in scores.items() if {s, t} - {"en"} <= set(low_resource) and "en" in (s, t)]
    if low_resource and low:
        summary["low_resource_chrf"] = round(sum(low) / len(low), 2)
    return summary


def build_prebuilt_bases(out: Path = PREBUILT_DIR, progress: bool = True) -> dict:
    """Build, export and score every built-in base for the demo's world into ``out``; returns the
    manifest it wrote. Bases already in the cache are reused (the cache key covers everything
    that decides their weights)."""
    study = parse_study(demo_study(), "demo")
    corpus, splits = _corpus_and_splits(study.corpus, TrialMemo())
    names = _language_names(study.corpus)
    lid = make_identifier(splits.train, list(corpus.languages))
    world = world_fingerprint(corpus, splits, names)
    mix = dict(study.model.pretrain_mix)
    bases = {}
    for name in TINY_NAMES:
        started = time.perf_counter()
        built = tiny_base(name, corpus, splits, study.model.seed, progress=progress, names=names, prebuilt=False,
                          mix=mix)
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        export_half(built, target)
        meta = json.loads((built / "mtforget_base.json").read_text(encoding="utf-8"))
        scores, engine = direction_scores(target, study, corpus, splits, lid)
        quality = quality_summary(scores, list(mix), BaseGate(**study.eval.base_gate.model_dump()))
        model, _ = load_model(target)
        bases[name] = {
            "recipe": normalized_recipe(name), "world": world, "seed": study.model.seed,
            **({"pretrain_mix": mix} if mix else {}),
            "parameters": count_parameters(model), **quality, "engine": engine,
            "steps": meta.get("steps"), "pretrain_seconds": meta.get("train_seconds"),
            **({"builds_on": "lm", "instruct_steps": meta["instruct_steps"]} if "instruct_steps" in meta else {}),
            "precision": meta.get("precision"),
            "dtype": "float16", "files": {f.name: file_digest(f) for f in sorted(target.iterdir()) if f.is_file()},
        }
        log.info("tiny:%s: %d parameters, chrF %s (%.0f s)", name, bases[name]["parameters"], quality,
                 time.perf_counter() - started)
    manifest = {
        "format": MANIFEST_FORMAT,
        "world": {"synthetic": study.corpus.synthetic.model_dump(), "dev_size": study.corpus.dev_size,
                  "test_size": study.corpus.test_size, "languages": list(corpus.languages)},
        "scored_on": {"directions": len(corpus.languages) * (len(corpus.languages) - 1),
                      "sentences_per_direction": study.eval.max_sentences},
        "versions": library_versions(),
        "bases": bases,
    }
    write_json_atomic(out / MANIFEST_NAME, manifest)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    if total > MAX_BYTES:
        log.warning("the shipped bases take %d bytes, over the budget of %d", total, MAX_BYTES)
    return manifest
