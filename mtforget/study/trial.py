"""One trial of a study, top to bottom (``run_trial``): corpus → split → base model (built or
loaded) → base evaluation (cached, shared by every trial with the same base) → fine-tune →
evaluate → forgetting rows → ``result.json`` (atomically, last).

This is what a worker process runs; :mod:`mtforget.study.runner` decides which trials run where
and records their results.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from accelerate import PartialState

import mtforget
from mtforget.cache import cached_dir, content_fingerprint, fingerprint, write_json_atomic
from mtforget.data.categories import CATEGORIES, categorize, parse_direction
from mtforget.data.corpus import Corpus, read_jsonl
from mtforget.data.loaders import load_corpus
from mtforget.data.replay import replay_examples, replay_size
from mtforget.data.bitext import BitextSample, BitextSource, cached_sample, held_out_texts
from mtforget.data.splits import Splits, direction_examples, pivot_language, sample_directions, split_by_id
from mtforget.data.synthetic import SyntheticWorld, write_jsonl
from mtforget.errors import USAGE_PREFIX, UsageError
from mtforget.evaluate.engine import GenerationEngine, make_engine
from mtforget.evaluate.forgetting import BaseGate, EvalSettings, evaluate_directions, forgetting_rows
from mtforget.evaluate.lid import make_identifier
from mtforget.evaluate.metrics import all_metrics, signatures
from mtforget.evaluate.representations import layerwise_retrieval
from mtforget.memory import release_memory
from mtforget.models.hidden import resolve_layer
from mtforget.models.interpolation import cpu_state_dict, interpolation_sweep
from mtforget.models.languages import normalize_code
from mtforget.models.loading import count_parameters, default_device, load_model, make_control
from mtforget.models.lora import apply_lora, merge_lora
from mtforget.models.tiny import tiny_base
from mtforget.study.config import CorpusConfig, StudyConfig, study_to_dict
from mtforget.study.grid import Trial
from mtforget.study.store import BASE_FAILURES
from mtforget.train.alignment import AlignmentObjective
from mtforget.train.loop import TrainSettings, train

log = logging.getLogger("mtforget")

# Test hook: (trial, step, loss) -> loss, called at every fine-tuning step of in-process trials.
LossHook = Callable[[Trial, int, torch.Tensor], torch.Tensor]


@dataclass
class TrialMemo:
    """What trials run in one process share: corpora, splits, identifiers and base evaluations."""

    corpora: dict[str, tuple[Corpus, Splits]] = field(default_factory=dict)
    identifiers: dict[str, tuple[object, float]] = field(default_factory=dict)
    base_evals: dict[str, dict] = field(default_factory=dict)
    base_representations: dict[str, dict] = field(default_factory=dict)
    # The marker a failure writes while the trial builds, loads or evaluates its base (None after).
    base_stage: Path | None = None


def execute_trial(trial: Trial, out: Path, progress: bool, loss_hook: LossHook | None,
                  memo: TrialMemo | None) -> dict:
    """Run one trial and write its directory; never raises for a trial's own failure.

    Returns ``{"status": "done", "rows", "info"}`` or ``{"status": "failed", "reason"}``. A bad
    config or input fails the trial with a reason that the runner turns into exit code 2.
    """
    trial_dir = out / "trials" / trial.id
    trial_dir.mkdir(parents=True, exist_ok=True)
    handler = _trial_log(trial_dir)
    memo = memo or TrialMemo()
    try:
        result = run_trial(trial, trial_dir, memo, progress, loss_hook)
        if result is None:  # not the main process of a multi-process run
            return {"status": "done", "rows": [], "info": {}}
        rows, info = result
        write_json_atomic(trial_dir / "result.json", {"trial_id": trial.id, "info": info, "rows": rows})
        shutil.rmtree(trial_dir / "checkpoint", ignore_errors=True)
        return {"status": "done", "rows": rows, "info": info}
    except BaseFailed as exc:
        log.error("trial %s: its base failed in another trial of this run: %s", trial.id, exc)
        return {"status": "failed", "reason": str(exc)}
    except UsageError as exc:
        log.error("trial %s: %s", trial.id, exc)
        return _failed(USAGE_PREFIX + str(exc), memo)
    except Exception as exc:  # noqa: BLE001 - any crash fails this trial only
        reason = f"{type(exc).__name__}: {exc}"
        log.error("trial %s failed: %s\n%s", trial.id, reason, traceback.format_exc())
        return _failed(reason, memo)
    finally:
        memo.base_stage = None
        log.removeHandler(handler)
        handler.close()
        release_memory()  # this process may run the next trial (in-process, or a worker kept for the study)


def _failed(reason: str, memo: TrialMemo) -> dict:
    """The outcome of a failed trial; a failure while building, loading or evaluating the base is
    left for the other trials of that base, which then fail at once with the same reason."""
    if memo.base_stage is not None and not memo.base_stage.exists():
        write_json_atomic(memo.base_stage, {"reason": reason})
    return {"status": "failed", "reason": reason}


def base_failure_marker(out: Path, cfg: StudyConfig) -> Path:
    """Where a failure of this trial's base is recorded for the current run of the study.

    Trials share a base, and its evaluation, when they share the model, the corpus, the decoding
    settings and the input length; what is analysed after fine-tuning does not matter.
    """
    after = ("interpolation", "representations", "representation_sentences", "paired_resamples",
             "bootstrap_resamples", "base_gate")
    eval_settings = {k: v for k, v in cfg.eval.model_dump(mode="json").items() if k not in after}
    key = fingerprint([cfg.model.model_dump(mode="json"), cfg.corpus.model_dump(mode="json"), eval_settings,
                       cfg.finetune.max_length])  # the language control cuts evaluation inputs to it
    return out / BASE_FAILURES / f"{key}.json"


def run_trial(trial: Trial, trial_dir: Path, shared: TrialMemo, progress: bool = True,
              loss_hook: LossHook | None = None) -> tuple[list[dict], dict] | None:
    """Run one trial; returns its forgetting rows and facts about it (for ``result.json``).

    Under ``accelerate launch`` every process trains; only the main one evaluates and returns.
    """
    cfg = trial.config
    main = PartialState().is_main_process
    timings: dict[str, float] = {}
    peak_rss: dict[str, float] = {}  # the process's peak resident memory (MB) at the end of each stage
    clock = time.perf_counter()

    def end_stage(name: str) -> None:
        timings[name] = _lap(clock)
        peak_rss[name] = _peak_rss_mb()
        # What the stage freed goes back to the system now: a process otherwise stays at the
        # high-water mark of every stage so far, and workers running side by side add theirs up.
        release_memory(collect=False)

    corpus, splits = _corpus_and_splits(cfg.corpus, shared)
    languages = _study_languages(corpus, cfg.corpus)
    directions = resolve_directions(cfg.finetune.directions, corpus, languages)
    if main:
        write_json_atomic(trial_dir / "config.json", {**study_to_dict(cfg), "resolved_directions":
                                                      [f"{s}-{t}" for s, t in directions]})
    end_stage("corpus")

    clock = time.perf_counter()
    marker = base_failure_marker(trial_dir.parent.parent, cfg)
    if marker.is_file():  # another trial of this run already failed on the same base
        raise BaseFailed(json.loads(marker.read_text(encoding="utf-8"))["reason"])
    shared.base_stage = marker if main else None
    base_dir = _base_model(cfg, corpus, splits, progress)
    end_stage("base_model")
    clock = time.perf_counter()
    model, tokenizer = load_model(base_dir, cfg.model.trust_remote_code, cfg.model.gradient_checkpointing)
    control, added = make_control(model, tokenizer, languages, _language_names(cfg.corpus), cfg.finetune.max_length)
    if added:
        log.info("added language tokens for %s (embeddings resized)", ", ".join(added))
    device = default_device()
    model.to(device)

    comet = cfg.eval.comet
    eval_settings = EvalSettings(cfg.eval.max_sentences, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                                 (comet.python, comet.checkpoint, comet.scorer, comet.batch_size, comet.gpus)
                                 if "comet" in cfg.eval.metrics else None, tuple(cfg.eval.metrics))
    all_directions = [(s, t) for s in languages for t in languages if s != t]
    if main:
        lid, lid_accuracy = _identifier(corpus, splits, languages, shared)
        # The base's conversion is cached (every trial on this base reuses it); the fine-tuned
        # model then gets the same kind of engine, so base and fine-tuned scores are comparable.
        probe = _probe_sentence(splits.test, all_directions)
        with _engine(cfg.eval.engine, model, control, cfg.eval.compute_type, eval_settings, True, probe) as engine:
            engine_kind, engine_name, engine_fallback = engine.kind, engine.name, engine.fallback_reason
            base_eval = _base_evaluation(base_dir, corpus, splits, all_directions, engine, lid,
                                         eval_settings, shared, progress, added)
    end_stage("base_eval")
    shared.base_stage = None
    pivot = pivot_language(corpus, languages)
    if main and cfg.eval.representations:  # before fine-tuning changes the weights in place
        clock = time.perf_counter()
        base_representations = _base_representations(base_dir, corpus, splits, model, tokenizer, languages, pivot,
                                                     cfg.eval.representation_sentences, added, shared)
        end_stage("base_representations")

    clock = time.perf_counter()
    extra: dict = {}  # mitigations and analyses that are on, for result.json's info
    overlap_dropped = 0
    if cfg.finetune.data:
        sample = _bitext_sample(cfg, splits, directions)
        examples, dev, overlap_dropped = sample.train, sample.dev, sample.overlap_dropped
        extra["finetune_data"] = {"sources": [d.path for d in cfg.finetune.data], "available": sample.available}
    else:
        examples = sample_directions(splits.train, directions, cfg.finetune.size, cfg.seed)
        dev = sample_directions(splits.dev, directions, cfg.finetune.dev_size, cfg.seed)
    if not examples:
        raise UsageError(f"finetune.directions: the corpus has no training pairs for {directions}")
    if len(examples) < cfg.finetune.size:
        # Capping silently would label the condition with a size it never trained on.
        available = ", ".join(f"{s}-{t}: {len(direction_examples(splits.train, s, t))}" for s, t in directions)
        raise UsageError(f"finetune.size: {cfg.finetune.size} pairs asked for, but the training split gives only "
                         f"{len(examples)} spread evenly over the fine-tuning directions ({available} pairs); "
                         "use a smaller finetune.size or a larger corpus")
    ft = cfg.finetune
    settings = TrainSettings(lr=ft.lr, batch_size=ft.batch_size, epochs=ft.epochs, schedule=ft.schedule,
                             warmup_ratio=ft.warmup_ratio, eval_every=ft.eval_every, patience=ft.patience,
                             seed=cfg.seed, log_every=10, checkpoint_every=ft.checkpoint_every,
                             grad_accumulation=ft.grad_accumulation)
    replay = replay_examples(splits.train, languages, directions, replay_size(ft.replay.fraction, len(examples)),
                             ft.replay.source, cfg.seed)
    if replay:
        extra["replay"] = {"source": ft.replay.source, "fraction": ft.replay.fraction, "examples": len(replay),
                           "by_direction": dict(Counter(f"{e.src_lang}-{e.tgt_lang}" for e in replay))}
    auxiliary = (AlignmentObjective.from_config(ft.alignment, model, tokenizer, splits.train, languages, pivot,
                                                ft.batch_size, cfg.seed, ft.max_length)
                 if ft.alignment.enabled else None)
    # The base weights, kept on the CPU for interpolation (before LoRA renames the parameters).
    base_state = cpu_state_dict(model) if main and cfg.eval.interpolation else None
    if ft.method == "lora":
        # Adapters start from random matrices: seeded here, or they would depend on what this
        # process ran before (building a base or loading it from the cache draws differently).
        torch.manual_seed(cfg.seed)
        model = apply_lora(model, ft.lora.rank, ft.lora.alpha, ft.lora.dropout, ft.lora.target_modules)
    trainable = count_parameters(model, trainable_only=True)
    hook = (lambda step, loss: loss_hook(trial, step, loss)) if loss_hook else None
    outcome = train(model, control, examples + replay, settings, dev=dev, desc=f"fine-tune {trial.id}",
                    progress=progress, loss_hook=hook, checkpoint_dir=trial_dir / "checkpoint",
                    log_dir=trial_dir / "tensorboard" if cfg.tensorboard else None, auxiliary=auxiliary)
    if auxiliary:
        extra["alignment"] = {
            "label": auxiliary.label, "layer": auxiliary.layer, "schedule": auxiliary.schedule,
            "temperature": auxiliary.temperature, "weight": auxiliary.weight, "batch_size": auxiliary.batch_size,
            "pivot": pivot, "pairs": len(auxiliary.pairs),
            "pairs_per_language": dict(Counter(p.lang for p in auxiliary.pairs)),
            "loss_curve": [{"step": h["step"], "align_loss": h["align_loss"]}
                           for h in outcome.history if "align_loss" in h],
            "final_loss": outcome.align_loss,
        }
    model = merge_lora(model)  # evaluate a plain model: adapters folded into the weights
    end_stage("finetune")
    log.info("fine-tuned %d steps in %.1fs (best dev loss %s at step %s%s%s)", outcome.steps, outcome.seconds,
             outcome.best_dev_loss, outcome.best_step, ", stopped early" if outcome.stopped_early else "",
             f", resumed from step {outcome.resumed_from}" if outcome.resumed_from else "")
    if not main:
        return None

    clock = time.perf_counter()
    with _engine(engine_kind, model, control, cfg.eval.compute_type, eval_settings, False, probe) as engine:
        ft_eval = evaluate_directions(engine, splits.test, all_directions, lid, eval_settings,
                                      desc="evaluate fine-tuned", progress=progress)
    end_stage("finetuned_eval")
    clock = time.perf_counter()
    gate = BaseGate(**cfg.eval.base_gate.model_dump())
    rows, category_ci = forgetting_rows(base_eval, ft_eval, directions, lid, cfg.eval.paired_resamples, cfg.seed,
                                        gate)
    _write_outputs(trial_dir, base_eval, ft_eval)
    end_stage("paired_bootstrap")
    if cfg.eval.representations:
        clock = time.perf_counter()
        extra["representations"] = {
            "base": base_representations,
            "finetuned": layerwise_retrieval(model, tokenizer, splits.test, languages, pivot,
                                             cfg.eval.representation_sentences),
            # The alignment layer, or the one "middle" names when alignment is off (for plots).
            "alignment_layer": auxiliary.layer if auxiliary else resolve_layer(model, "middle"),
        }
        end_stage("representations")
    if cfg.eval.interpolation:
        clock = time.perf_counter()
        alphas = sorted(set(cfg.eval.interpolation))

        def evaluate_at(m: torch.nn.Module, alpha: float) -> dict:
            with _engine(engine_kind, m, control, cfg.eval.compute_type, eval_settings, False, probe) as engine:
                return evaluate_directions(engine, splits.test, all_directions, lid, eval_settings,
                                           desc=f"evaluate α={alpha:g}", progress=progress)

        evals = interpolation_sweep(model, base_state, alphas, evaluate_at)
        evals = {0.0: base_eval, **evals, 1.0: ft_eval}  # both ends are the models evaluated above
        extra["interpolation"] = [{"alpha": alpha,
                                   "categories": _category_means(base_eval, evals[alpha], directions, gate)}
                                  for alpha in evals]
        end_stage("interpolation")

    info = {
        "model": trial.model_label,
        "base_dir": str(base_dir),
        "parameters": count_parameters(model),
        "trainable_parameters": trainable,
        "method": ft.method,
        "finetune_directions": [f"{s}-{t}" for s, t in directions],
        "finetune_examples": len(examples),
        "languages": languages,
        "added_language_tokens": added,
        "architecture": "encoder-decoder" if model.config.is_encoder_decoder else "decoder-only",
        "language_control": getattr(control, "convention", None)
        or ("chat template" if control.use_chat else "plain prompt"),
        "train": asdict(outcome),
        "precision": outcome.precision,
        "grad_accumulation": ft.grad_accumulation,
        "effective_batch_size": ft.batch_size * ft.grad_accumulation,
        "max_length": ft.max_length,
        "overlap_dropped": overlap_dropped,
        "missing_directions": [f"{s}-{t}" for s, t in all_directions if f"{s}-{t}" not in base_eval],
        "category_ci": category_ci,
        "lid": lid.name,
        "lid_accuracy": lid_accuracy,
        "metric_signatures": signatures(languages, cfg.eval.metrics),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "peak_rss_mb": peak_rss,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "engine": engine_name,
        "engine_fallback_reason": engine_fallback,
        "processes": PartialState().num_processes,
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
        **extra,
    }
    return rows, info


class BaseFailed(Exception):
    """The trial's base failed in another trial of this run; the reason is that trial's."""


def resolve_directions(given: list[str] | None, corpus: Corpus, languages: list[str]) -> list[tuple[str, str]]:
    """The fine-tuning directions: as given, or English ↔ the first half of the other languages.

    Without English, the most frequent language of the corpus is the pivot.
    """
    if given:
        directions = [tuple(normalize_code(c) for c in parse_direction(d)) for d in given]
        for src, tgt in directions:
            for lang in (src, tgt):
                if lang not in languages:
                    raise UsageError(f"finetune.directions: {src}-{tgt}: language {lang!r} is not in the "
                                     f"corpus (it has {', '.join(languages)})")
        return directions
    pivot = pivot_language(corpus, languages)
    others = [lang for lang in languages if lang != pivot]
    chosen = others[: max(1, len(others) // 2)]
    return [d for lang in chosen for d in ((pivot, lang), (lang, pivot))]


def synthetic_corpus_path(n_languages: int, segments: int, seed: int) -> Path:
    """The cached JSON-lines file of a synthetic world corpus (generated on first use)."""
    key = fingerprint({"languages": n_languages, "segments": segments, "seed": seed,
                       "generator": mtforget.__version__})

    def build(out: Path) -> None:
        world = SyntheticWorld(seed=seed, n_languages=n_languages)
        write_jsonl(world.corpus(segments, seed=seed), out / "corpus.jsonl")

    return cached_dir("corpora", f"synthetic-{key}", build) / "corpus.jsonl"


def _corpus_and_splits(cfg: CorpusConfig, shared: TrialMemo) -> tuple[Corpus, Splits]:
    key = fingerprint(cfg.model_dump(mode="json"))
    if key not in shared.corpora:
        if cfg.path:
            corpus = load_corpus(cfg.format, cfg.path, cfg.tsv_languages, cfg.flores_splits, cfg.hf_config,
                                 cfg.hf_split)
        else:
            s = cfg.synthetic
            corpus = read_jsonl(synthetic_corpus_path(s.languages, s.segments, s.seed))
        if cfg.max_words:
            corpus = corpus.without_long_segments(cfg.max_words)
        shared.corpora[key] = (corpus, split_by_id(corpus, cfg.dev_size, cfg.test_size, cfg.split_seed))
    return shared.corpora[key]


def _bitext_sample(cfg: StudyConfig, splits: Splits, directions: list[tuple[str, str]]) -> BitextSample:
    """Fine-tuning and dev pairs from ``finetune.data`` (the evaluation corpus only evaluates),
    without any pair that repeats an evaluation or dev sentence."""
    sources = [BitextSource(d.path, d.format, tuple(d.tsv_languages or ()) or None,
                            tuple(d.flores_splits or ()) or None, d.hf_config, d.hf_split) for d in cfg.finetune.data]
    held_out = held_out_texts(splits.test + splits.dev)
    sample = cached_sample(sources, directions, cfg.finetune.size, cfg.finetune.dev_size, cfg.seed, held_out)
    log.info("fine-tuning pairs from finetune.data: %d train, %d dev; %d pairs dropped for repeating an "
             "evaluation or dev sentence", len(sample.train), len(sample.dev), sample.overlap_dropped)
    return sample


def _language_names(cfg: CorpusConfig) -> dict[str, str]:
    """Names for instructions: the synthetic world's invented ones (real codes use the registry)."""
    if cfg.path:
        return {}
    world = SyntheticWorld(seed=cfg.synthetic.seed, n_languages=cfg.synthetic.languages)
    return {lang.code: lang.name for lang in world.languages}


def _study_languages(corpus: Corpus, cfg: CorpusConfig) -> list[str]:
    if not cfg.languages:
        return list(corpus.languages)
    chosen = [normalize_code(lang) for lang in cfg.languages]
    for lang in chosen:
        if lang not in corpus.languages:
            raise UsageError(f"corpus.languages: {lang!r} is not in {corpus.source} "
                             f"(it has {', '.join(corpus.languages)})")
    return chosen


def _base_model(cfg: StudyConfig, corpus: Corpus, splits: Splits, progress: bool) -> Path | str:
    if cfg.model.path:
        return cfg.model.path
    return tiny_base(cfg.model.tiny, corpus, splits, cfg.model.seed, steps=cfg.model.pretrain_steps,
                     progress=progress, names=_language_names(cfg.corpus))


def _identifier(corpus: Corpus, splits: Splits, languages: list[str], shared: TrialMemo) -> tuple[object, float]:
    key = fingerprint([corpus.fingerprint(), languages, len(splits.train)])
    if key not in shared.identifiers:
        lid = make_identifier(splits.train, languages)
        shared.identifiers[key] = (lid, lid.accuracy(splits.dev))
    return shared.identifiers[key]


def _engine(kind: str, model, control, compute_type: str, settings: EvalSettings, cache_conversion: bool,
            probe: tuple[str, str, str] | None) -> GenerationEngine:
    """The generation engine of ``kind`` for ``model``, with the study's decoding settings; a fast
    engine is taken only once it has translated ``probe`` on the model's device."""
    return make_engine(kind, model, control, settings.max_new_tokens, compute_type,
                       max_batch_sentences=settings.batch_size, cache_conversion=cache_conversion, probe=probe)


def _probe_sentence(test, directions: list[tuple[str, str]]) -> tuple[str, str, str] | None:
    """The first test sentence of the first direction that has one, as (text, source, target)."""
    for src, tgt in directions:
        examples = direction_examples(test, src, tgt)
        if examples:
            return examples[0].src, src, tgt
    return None


def _base_evaluation(base_dir, corpus, splits, directions, engine, lid, settings, shared,
                     progress, added) -> dict:
    """Scores of the base model on every direction, cached on disk under everything that decides them."""
    key = fingerprint({
        "base": _model_fingerprint(base_dir),
        "engine": engine.name,  # engines differ in floating-point detail: never reuse another's scores
        "added_tokens": added,
        "max_length": engine.control.max_length,  # the control cuts longer sources
        "corpus": corpus.fingerprint(),
        "test": [s.id for s in splits.test],
        "directions": directions,
        "settings": asdict(settings),
        "format": 2,  # what an evaluation stores (sources, references, per-sentence flags)
        "metrics": signatures(sorted({t for _, t in directions})),
        "lid": type(lid).__name__,
        "lid_train": len(splits.train),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    })
    if key in shared.base_evals:
        return shared.base_evals[key]

    def build(out: Path) -> None:
        result = evaluate_directions(engine, splits.test, directions, lid, settings,
                                     desc="evaluate base", progress=progress, with_copy=True)
        (out / "eval.json").write_text(json.dumps(result, ensure_ascii=False))

    path = cached_dir("base_evals", key, build) / "eval.json"
    shared.base_evals[key] = json.loads(path.read_text(encoding="utf-8"))
    return shared.base_evals[key]


def _base_representations(base_dir, corpus, splits, model, tokenizer, languages, pivot, sentences, added,
                          shared) -> dict:
    """Layer-wise retrieval accuracy of the base model, cached like the base evaluation."""
    key = fingerprint({
        "base": _model_fingerprint(base_dir),
        "added_tokens": added,
        "corpus": corpus.fingerprint(),
        "test": [s.id for s in splits.test],
        "languages": languages,
        "pivot": pivot,
        "sentences": sentences,
        "format": 1,  # what layerwise_retrieval returns
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    })
    if key not in shared.base_representations:
        def build(out: Path) -> None:
            result = layerwise_retrieval(model, tokenizer, splits.test, languages, pivot, sentences)
            (out / "representations.json").write_text(json.dumps(result))

        path = cached_dir("base_representations", key, build) / "representations.json"
        shared.base_representations[key] = json.loads(path.read_text(encoding="utf-8"))
    return shared.base_representations[key]


def _category_means(base_eval: dict, evaluated: dict, directions: list[tuple[str, str]],
                    gate: BaseGate) -> dict[str, dict]:
    """Per direction category: the mean of each metric over the directions ``gate`` counts, and
    its mean delta vs the base."""
    keys = [key for key in evaluated if key in base_eval and gate.counts(gate.flag(base_eval[key]))]
    metrics = [m.name for m in all_metrics() if all(m.name in evaluated[k] and m.name in base_eval[k] for k in keys)]
    by_category: dict[str, list[str]] = {}
    for key in keys:
        by_category.setdefault(categorize(*key.split("-"), directions), []).append(key)
    summary = {}
    for category in (c for c in CATEGORIES if c in by_category):
        keys = by_category[category]
        summary[category] = {"directions": len(keys)}
        for m in metrics:
            summary[category][m] = sum(evaluated[k][m] for k in keys) / len(keys)
            summary[category][f"{m}_delta"] = sum(evaluated[k][m] - base_eval[k][m] for k in keys) / len(keys)
    return summary


def _model_fingerprint(base_dir: Path | str) -> str:
    """Identity of a checkpoint: the contents of its weight, config and tokenizer files (a hub id
    stands for itself)."""
    return content_fingerprint(base_dir) or str(base_dir)


def _write_outputs(trial_dir: Path, base_eval: dict, ft_eval: dict) -> None:
    """Every test translation of the trial, base beside fine-tuned, as JSON lines."""
    with (trial_dir / "outputs.jsonl").open("w", encoding="utf-8") as f:
        for key, ft in ft_eval.items():
            src, tgt = key.split("-")
            base = base_eval[key]
            for seg_id, source, ref, base_hyp, ft_hyp in zip(base["ids"], base["sources"], base["references"],
                                                             base["hypotheses"], ft["hypotheses"]):
                f.write(json.dumps({"id": seg_id, "src_lang": src, "tgt_lang": tgt, "source": source,
                                    "reference": ref, "base": base_hyp, "finetuned": ft_hyp},
                                   ensure_ascii=False) + "\n")


def _trial_log(trial_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(trial_dir / "trial.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _lap(start: float) -> float:
    return time.perf_counter() - start


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if platform.system() == "Darwin" else 2**10), 1)
