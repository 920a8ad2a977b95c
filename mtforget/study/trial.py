"""One trial of a study, top to bottom (``run_trial``): corpus → split → base model (built or
loaded) → base evaluation (cached, shared by every trial with the same base) → fine-tune →
evaluate → forgetting rows → ``result.json`` (atomically, last).

This is what a worker process runs; :mod:`mtforget.study.runner` decides which trials run where
and records their results.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import operator
import os
import platform
import resource
import shutil
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import transformers
from accelerate import PartialState

from mtforget.atomic import atomic_path, write_json_atomic
from mtforget.bases.tiny import tiny_base
from mtforget.cache import cached_dir, content_fingerprint, existing_entry, fingerprint
from mtforget.data.bitext import BitextSample, BitextSource, cached_sample, held_out_texts
from mtforget.data.categories import CATEGORIES, NO_EXPOSURE, Exposure, categorize, parse_direction
from mtforget.data.corpus import Corpus, read_jsonl
from mtforget.data.languages import default_script, normalize_code, split_code
from mtforget.data.loaders import load_corpus
from mtforget.data.splits import Example, Splits, direction_examples, pivot_language, sample_directions, split_by_id
from mtforget.data.synthetic import SyntheticWorld, write_jsonl
from mtforget.errors import USAGE_PREFIX, UsageError
from mtforget.hub import resolve_revision
from mtforget.evaluate.drift import output_languages
from mtforget.evaluate.during_training import (ForgettingCurve, ForgettingProbe, SampledDirection,
                                               curve_by_direction_of, curve_of, draw_sample, proxy_of,
                                               unseen_dev_pairs)
from mtforget.evaluate.engines.base import GenerationEngine, make_engine
from mtforget.evaluate.forgetting import BaseGate, EvalSettings, evaluate_directions, forgetting_rows
from mtforget.evaluate.lid import make_identifier
from mtforget.evaluate.metrics import all_metrics, signatures
from mtforget.evaluate.representations import layerwise_retrieval
from mtforget.evaluate.sharding import ALONE, EvalGroup, launch_group
from mtforget.memory import release_memory
from mtforget.mitigations import MITIGATIONS, active_mitigations
from mtforget.mitigations.base import Evaluation, Mitigation, TrialContext
from mtforget.models.control import Control
from mtforget.models.hidden import resolve_layer
from mtforget.models.loading import count_parameters, default_device, load_model, make_control
from mtforget.models.lora import apply_lora, merge_lora, merge_survival
from mtforget.study.checkpoints import load_checkpoint
from mtforget.study.config import CorpusConfig, StudyConfig, study_to_dict
from mtforget.study.grid import Trial
from mtforget.study.result import TrialResult
from mtforget.study.store import BASE_FAILURES, warn
from mtforget.train.checkpoint import CheckpointUnusable
from mtforget.train.distributed import describe
from mtforget.train.loop import TrainOutcome, TrainSettings, train

log = logging.getLogger("mtforget")

# Below this share of LoRA's changed entries surviving the merge, a trial warns (see merge_survival).
MERGE_SURVIVAL_WARNING = 0.9


@dataclass
class TrialMemo:
    """What trials run in one process share: corpora, splits, identifiers and base evaluations."""

    corpora: dict[str, tuple[Corpus, Splits]] = field(default_factory=dict)
    identifiers: dict[str, tuple[object, float]] = field(default_factory=dict)
    base_evals: dict[str, dict] = field(default_factory=dict)
    base_representations: dict[str, dict] = field(default_factory=dict)
    # The marker a failure writes while the trial builds, loads or evaluates its base (None after).
    base_stage: Path | None = None


def execute_trial(trial: Trial, out: Path, progress: bool, memo: TrialMemo | None) -> dict:
    """Run one trial and write its directory; never raises for a trial's own failure.

    Returns ``{"status": "done", "rows", "info"}`` or ``{"status": "failed", "reason"}``. A bad
    config or input fails the trial with a reason that the runner turns into exit code 2.
    """
    trial_dir = out / "trials" / trial.id
    trial_dir.mkdir(parents=True, exist_ok=True)
    handler = _trial_log(trial_dir)
    memo = memo or TrialMemo()
    try:
        result = run_trial(trial, trial_dir, memo, progress)
        if result is None:  # not the main process of a multi-process run
            return {"status": "done", "rows": [], "info": {}}
        rows, info = result[0], result[1].to_dict()
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
        # A failure shared by the processes of a launch carries the failing process's own reason.
        reason = describe(exc)
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
    after = ("representations", "representation_sentences", "paired_resamples", "bootstrap_resamples",
             "base_gate", "during_training", *(m.key.split(".", 1)[1] for m in MITIGATIONS.values() if m.key.startswith("eval.")))
    eval_settings = {k: v for k, v in cfg.eval.model_dump(mode="json").items() if k not in after}
    key = fingerprint([cfg.model.model_dump(mode="json"), cfg.corpus.model_dump(mode="json"), eval_settings,
                       cfg.finetune.max_length])  # the language control cuts evaluation inputs to it
    return out / BASE_FAILURES / f"{key}.json"


def run_trial(trial: Trial, trial_dir: Path, shared: TrialMemo,
              progress: bool = True) -> tuple[list[dict], TrialResult] | None:
    """Run one trial; returns its forgetting rows and what it records about itself.

    Under ``accelerate launch`` every process trains and translates its share of each
    evaluation; only the main one scores, records and returns.
    """
    run = TrialRun(trial, trial_dir, shared, progress, PartialState().is_main_process, launch_group())
    with run.stage("corpus"):
        data = prepare_data(run)
    with run.stage("base_model"):
        base = load_base(run, data)
    with run.stage("base_eval"):
        base_eval = evaluate_base(run, data, base)
    base_representations = None
    if run.main and run.cfg.eval.representations:  # before fine-tuning changes the weights in place
        with run.stage("base_representations"):
            base_representations = _base_representations(base, data, run.cfg.eval.representation_sentences,
                                                         shared)
    with run.stage("finetune"):
        if run.trial.checkpoint is not None:
            tuned = from_checkpoint(run, data, base)
        else:
            try:
                tuned = finetune(run, data, base, base_eval)
            except CheckpointUnusable:
                # Its load may have changed the weights already: the trial starts again from its base.
                base = _reloaded(run, data, base)
                tuned = finetune(run, data, base, base_eval)
    with run.stage("finetuned_eval"):
        ft_eval = _evaluate(run, data, base, tuned.model, "evaluate fine-tuned", run.group, tuned.control)
    if not run.main:
        return None
    analyses = {}
    with run.stage("paired_bootstrap"):
        rows, category_ci = forgetting_rows(base_eval, ft_eval, data.directions, base.lid,
                                            run.cfg.eval.paired_resamples, run.cfg.seed, run.gate, tuned.exposure)
        _write_outputs(trial_dir, base_eval, ft_eval)
    with run.stage("drift"):
        analyses["output_languages"] = {key: {"base": output_languages(base.lid, base_eval[key]["hypotheses"]),
                                              "finetuned": output_languages(base.lid, ft_eval[key]["hypotheses"])}
                                        for key in ft_eval if key in base_eval}
    if base_representations is not None:
        with run.stage("representations"):
            analyses["representations"] = _representations(run, data, base, tuned, base_representations)
    evaluation = Evaluation(base_eval, ft_eval, lambda m, desc: _evaluate(run, data, base, m, desc),
                            lambda scores: _category_means(base_eval, scores, data.directions, run.gate,
                                                           tuned.exposure))
    mitigations = {}
    for mitigation in tuned.mitigations:
        with run.stage(mitigation.name):
            mitigations[mitigation.name] = mitigation.after_training(tuned.model, tuned.outcome, evaluation)
    result = _trial_result(run, data, base, tuned, base_eval, category_ci, mitigations, analyses)
    if run.trial.checkpoint is not None:  # nothing here trained it: no batch settings to record
        result = replace(result, grad_accumulation=None, effective_batch_size=None,
                         checkpoint=run.trial.checkpoint.describe())
    return rows, result


class TrialRun:
    """One trial's settings and bookkeeping: where it writes, and each stage's time and memory."""

    def __init__(self, trial: Trial, trial_dir: Path, shared: TrialMemo, progress: bool, main: bool,
                 group: EvalGroup = ALONE) -> None:
        self.trial, self.cfg, self.dir, self.shared = trial, trial.config, trial_dir, shared
        self.progress, self.main = progress, main
        self.group = group  # the processes that share each evaluation
        self.gate = BaseGate(**self.cfg.eval.base_gate.model_dump())
        self.timings: dict[str, float] = {}
        self.peak_rss: dict[str, float] = {}  # the process's peak resident memory (MB) after each stage

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage, note the peak memory after it, and hand back what it freed."""
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 2)
        self.peak_rss[name] = _peak_rss_mb()
        # A process otherwise stays at the high-water mark of every stage so far, and workers
        # running side by side add theirs up.
        release_memory(collect=False)


@dataclass
class TrialData:
    """The trial's corpus, splits, languages and directions."""

    corpus: Corpus
    splits: Splits
    languages: list[str]
    directions: list[tuple[str, str]]  # fine-tuned on
    all_directions: list[tuple[str, str]]  # evaluated
    pivot: str


@dataclass
class LoadedBase:
    """The base model ready to evaluate and fine-tune, and what evaluating it takes."""

    dir: Path | str
    model: torch.nn.Module
    tokenizer: object
    control: Control
    added: list[str]  # language tokens added to the vocabulary
    device: torch.device
    settings: EvalSettings
    lid: object | None = None  # the language identifier (evaluating process only)
    lid_accuracy: float | None = None
    probe: tuple[str, str, str] | None = None  # the sentence a fast engine must translate first
    engine_kind: str = ""  # the engine the base was evaluated with; the fine-tuned model gets the same
    engine_name: str = ""
    engine_fallback: str | None = None
    revision: str | None = None  # a hub base's commit

    @property
    def identity(self) -> str:
        """What decides this base's numbers: the contents of a local checkpoint, a hub id at its commit."""
        identity = _model_fingerprint(self.dir)
        return f"{identity}@{self.revision}" if self.revision else identity


@dataclass
class Finetuned:
    """The fine-tuned model (adapters merged) and how it got there."""

    model: torch.nn.Module
    outcome: TrainOutcome
    examples: int
    trainable: int
    overlap_dropped: int
    finetune_data: dict | None
    mitigations: list[Mitigation]
    control: Control | None = None  # how to steer it, when not as the base (its own tokenizer)
    exposure: Exposure = NO_EXPOSURE  # what its mitigations trained on beyond the fine-tuning directions


def prepare_data(run: TrialRun) -> TrialData:
    """Corpus, splits, study languages and directions; writes the trial's resolved config."""
    data = study_data(run.cfg, run.shared)
    if run.main:
        write_json_atomic(run.dir / "config.json", {**study_to_dict(run.cfg), "resolved_directions":
                                                    [f"{s}-{t}" for s, t in data.directions]})
    return data


def study_data(cfg: StudyConfig, shared: TrialMemo) -> TrialData:
    """The corpus, splits, languages and directions a study's config names."""
    corpus, splits = _corpus_and_splits(cfg.corpus, shared)
    languages = _study_languages(corpus, cfg.corpus)
    directions = resolve_directions(cfg.finetune.directions, corpus, languages)
    return TrialData(corpus, splits, languages, directions, [(s, t) for s in languages for t in languages if s != t],
                     pivot_language(corpus, languages))


def load_base(run: TrialRun, data: TrialData) -> LoadedBase:
    """The base model (built, cached or loaded) with its language control, on the trial's device.

    A failure from here until the base is evaluated is the base's: the other trials of that base
    in this run fail at once with the same reason.
    """
    cfg = run.cfg
    marker = base_failure_marker(run.dir.parent.parent, cfg)
    if marker.is_file():  # another trial of this run already failed on the same base
        raise BaseFailed(json.loads(marker.read_text(encoding="utf-8"))["reason"])
    run.shared.base_stage = marker if run.main else None
    base_dir = _base_model(cfg, data.corpus, data.splits, run.progress)
    revision = hub_revision(base_dir, cfg.model.revision)
    model, tokenizer = load_model(base_dir, cfg.model.trust_remote_code, cfg.model.gradient_checkpointing,
                                  cfg.model.dtype, revision)
    control, added = make_control(model, tokenizer, data.languages, _language_names(cfg.corpus),
                                  cfg.finetune.max_length)
    if added:
        log.info("added language tokens for %s (embeddings resized)", ", ".join(added))
    device = default_device()
    model.to(device)
    return LoadedBase(base_dir, model, tokenizer, control, added, device, eval_settings(cfg), revision=revision)


def hub_revision(base: Path | str, revision: str | None) -> str | None:
    """The commit of a hub base (``model.revision`` resolved, the default branch when unset), or
    None for a local one (where a revision is an error, which loading reports)."""
    local = Path(str(base))
    if local.exists() or local.is_absolute() or str(base).startswith(("./", "../", "~")):
        return revision
    return resolve_revision(str(base), revision)


def _reloaded(run: TrialRun, data: TrialData, base: LoadedBase) -> LoadedBase:
    """``base`` with its weights loaded again as the trial began with them (its evaluation kept)."""
    fresh = load_base(run, data)
    run.shared.base_stage = None  # the base was evaluated already: a failure now is this trial's
    return replace(base, model=fresh.model, tokenizer=fresh.tokenizer, control=fresh.control, added=fresh.added)


def eval_settings(cfg: StudyConfig) -> EvalSettings:
    """How a study evaluates every direction (decoding, batches, metrics)."""
    comet = cfg.eval.comet
    return EvalSettings(cfg.eval.max_sentences, cfg.eval.batch_size, cfg.eval.max_new_tokens,
                        (comet.python, comet.checkpoint, comet.scorer, comet.batch_size, comet.gpus)
                        if "comet" in cfg.eval.metrics else None, tuple(cfg.eval.metrics))


def evaluate_base(run: TrialRun, data: TrialData, base: LoadedBase) -> dict | None:
    """The base's scores on every direction (cached, shared by every trial of the base); picks the
    engine the fine-tuned model will get too. Every process of a launch translates its share; the
    others get None."""
    if run.main:
        base.lid, base.lid_accuracy = _identifier(data.corpus, data.splits, data.languages, run.shared)
    base.probe = _probe_sentence(data.splits.test, data.all_directions)
    # The base's conversion is cached (every trial on this base reuses it); the fine-tuned model
    # then gets the same kind of engine, so base and fine-tuned scores are comparable. The main
    # process picks it ("auto" tries the fast one first); the others open the same kind.
    with _picked_engine(run, base) as engine:
        base.engine_kind, base.engine_name, base.engine_fallback = engine.kind, engine.name, engine.fallback_reason
        scores = _base_evaluation(base.identity, data.corpus, data.splits, data.all_directions, engine, base.lid,
                                  base.settings, run.shared, run.progress, base.added,
                                  str(next(base.model.parameters()).dtype), run.group)
    run.shared.base_stage = None
    return scores


def _picked_engine(run: TrialRun, base: LoadedBase) -> GenerationEngine:
    """The base's engine of ``eval.engine``, of the kind the main process picked on every process."""
    def opened(kind: str) -> GenerationEngine:
        return _engine(kind, base.model, base.control, run.cfg.eval.compute_type, base.settings, True, base.probe)

    if run.group.size == 1:
        return opened(run.cfg.eval.engine)
    if not run.main:
        kind = run.group.broadcast(None)
        if kind is None:
            raise RuntimeError("the main process could not open a generation engine")
        return opened(kind)
    try:
        engine = opened(run.cfg.eval.engine)
    except BaseException:
        run.group.broadcast(None)  # the others must not wait for a kind that will not come
        raise
    run.group.broadcast(engine.kind)
    return engine


def finetune(run: TrialRun, data: TrialData, base: LoadedBase, base_eval: dict | None) -> Finetuned:
    """Fine-tune the base in place on the trial's examples, with every mitigation that is on (and
    forgetting sampled as it trains when asked); returns the fine-tuned model with adapters merged."""
    cfg, ft = run.cfg, run.cfg.finetune
    examples, dev, overlap_dropped, finetune_data = _finetune_examples(cfg, data)
    mitigations = active_mitigations(cfg)
    # A budget without eval.during_training checks at the dev checks; the curve records its checks.
    context = TrialContext(base.model, base.tokenizer, data.splits.train, data.languages, data.pivot,
                           data.directions, examples, ft.batch_size, ft.max_length, cfg.seed, run.main,
                           None, cfg.eval.during_training.every or ft.eval_every)
    # What the mitigations train on decides the categories, the sampled ones during training too.
    exposure = functools.reduce(operator.or_, (m.exposure(context) for m in mitigations), NO_EXPOSURE)
    probe = _forgetting_probe(run, data, base, base_eval, mitigations, exposure)
    context = replace(context, forgetting_probe=probe)
    for mitigation in mitigations:
        mitigation.prepare(context)
    model = base.model
    if ft.method == "lora":
        # Adapters start from random matrices: seeded here, or they would depend on what this
        # process ran before (building a base or loading it from the cache draws differently).
        torch.manual_seed(cfg.seed)
        model = apply_lora(model, ft.lora.rank, ft.lora.alpha, ft.lora.dropout, ft.lora.target_modules)
    trainable = count_parameters(model, trainable_only=True)
    settings = TrainSettings(lr=ft.lr, batch_size=ft.batch_size, epochs=ft.epochs, max_steps=ft.steps,
                             schedule=ft.schedule,
                             warmup_ratio=ft.warmup_ratio, eval_every=ft.eval_every, patience=ft.patience,
                             seed=cfg.seed, log_every=10, checkpoint_every=ft.checkpoint_every,
                             grad_accumulation=ft.grad_accumulation, precision=ft.precision)
    extra = [e for m in mitigations for e in m.extra_examples()]
    outcome = train(model, base.control, examples + extra, settings, dev=dev, desc=f"fine-tune {run.trial.id}",
                    progress=run.progress, checkpoint_dir=run.dir / "checkpoint",
                    log_dir=run.dir / "tensorboard" if cfg.tensorboard else None,
                    callbacks=[c for m in mitigations for c in m.callbacks()]
                    + ([ForgettingCurve(probe, context.check_every)] if probe else []))
    log.info("fine-tuned %d steps in %.1fs (best dev loss %s at step %s%s%s)", outcome.steps, outcome.seconds,
             outcome.best_dev_loss, outcome.best_step, ", stopped early" if outcome.stopped_early else "",
             f", resumed from step {outcome.resumed_from}" if outcome.resumed_from else "")
    # Evaluate a plain model: adapters folded into the weights.
    if ft.method == "lora":
        outcome.merge_survival = merge_survival(model)
        if outcome.merge_survival is not None and outcome.merge_survival < MERGE_SURVIVAL_WARNING:
            warn(f"trial {run.trial.id}: folded into the {next(model.parameters()).dtype} base weights, only "
                 f"{outcome.merge_survival:.0%} of the entries LoRA changed still differ from the base (the rest "
                 "round away): the evaluated model is closer to the base than the trained one; load the base in "
                 "float32 (model.dtype) to evaluate the adapters' full update")
    return Finetuned(merge_lora(model), outcome, len(examples), trainable, overlap_dropped, finetune_data,
                     mitigations, exposure=exposure)


def from_checkpoint(run: TrialRun, data: TrialData, base: LoadedBase) -> Finetuned:
    """The fine-tuned model of a trial that evaluates a checkpoint made elsewhere
    (``finetune.checkpoints``): the base, loaded as for training, turned into the checkpoint."""
    folder = run.trial.checkpoint
    loaded = load_checkpoint(folder, base.model, base.tokenizer, base.dir)
    control = None
    if loaded.tokenizer is not None:  # steered through its own tokenizer (its chat template, say)
        control, _ = make_control(loaded.model, loaded.tokenizer, data.languages, _language_names(run.cfg.corpus),
                                  run.cfg.finetune.max_length)
    log.info("evaluating %s (%s%s) instead of fine-tuning", folder.path, folder.method,
             f", step {folder.step}" if folder.step is not None else "")
    outcome = TrainOutcome(steps=folder.step or 0, seconds=0.0,
                           train_loss=folder.train_loss if folder.train_loss is not None else float("nan"),
                           tokens=folder.tokens or 0, precision="external", precision_mode="external")
    return Finetuned(loaded.model, outcome, 0, loaded.trainable, 0, None, [], control)


def _forgetting_probe(run: TrialRun, data: TrialData, base: LoadedBase, base_eval: dict | None,
                      mitigations: list[Mitigation], exposure: Exposure = NO_EXPOSURE) -> ForgettingProbe | None:
    """The sampled evaluation during training, when ``eval.during_training.every`` or a mitigation
    asks for it. It translates with Hugging Face generate: a converting engine would convert the
    weights again at every check. Under a launch, the main process draws the sample (it holds the
    base's scores) and every process translates its share of each check."""
    sampled = run.cfg.eval.during_training
    needing = [m.key for m in mitigations if m.needs_forgetting_probe]
    if not sampled.every and not needing:
        return None
    probe = make_probe(run.cfg, data, base, base_eval, run.gate, run.group, exposure)
    if probe is None:
        reason = "no direction of the base passes the base-quality gate (eval.base_gate), so none can be sampled"
        if needing:  # a budget that cannot watch anything would let the trial forget without a word
            raise UsageError(f"{needing[0]}: needs forgetting sampled during training, but {reason}")
        if run.main:
            warn(f"trial {run.trial.id}: eval.during_training skipped: {reason}; the trial runs without its curve")
    return probe


def make_probe(cfg: StudyConfig, data: TrialData, base: LoadedBase, base_eval: dict | None,
               gate: BaseGate, group: EvalGroup = ALONE, exposure: Exposure = NO_EXPOSURE) -> ForgettingProbe | None:
    """The sampled evaluation of ``eval.during_training`` for the model of ``base`` (whose
    evaluation ``base_eval`` decides which directions can be sampled), or None when the base
    passes the base-quality gate on no direction. The main process of ``group`` draws the sample
    (it alone holds the base's scores); every process translates its share of each check."""
    sampled = cfg.eval.during_training
    sample = group.broadcast(draw_sample(base_eval, data.directions, gate, sampled.directions, sampled.sentences,
                                         cfg.seed, exposure.replayed) if group.is_main else None)
    return probe_of_sample(cfg, data, base, sample, group) if sample else None


def probe_of_sample(cfg: StudyConfig, data: TrialData, base: LoadedBase, sample: list[SampledDirection],
                    group: EvalGroup = ALONE) -> ForgettingProbe:
    """The sampled evaluation of a sample drawn before (see :func:`make_probe`)."""
    sampled = cfg.eval.during_training
    dev_pairs = unseen_dev_pairs(data.splits.dev, sample, sampled.sentences)

    def engine(model: torch.nn.Module) -> GenerationEngine:
        return _engine("hf", model, base.control, cfg.eval.compute_type, base.settings, False, None)

    return ForgettingProbe(sample, engine, base.control, dev_pairs, group=group)


def _finetune_examples(cfg: StudyConfig, data: TrialData) -> tuple[list[Example], list[Example], int, dict | None]:
    """Training and dev examples of the fine-tuning directions, from ``finetune.data`` or the
    corpus's splits; pairs dropped for overlapping the evaluation, and the sources' facts."""
    if cfg.finetune.data:
        sample = _bitext_sample(cfg, data.splits, data.directions)
        facts = {"sources": [d.path for d in cfg.finetune.data], "available": sample.available}
        examples, dev, dropped = sample.train, sample.dev, sample.overlap_dropped
    else:
        examples = sample_directions(data.splits.train, data.directions, cfg.finetune.size, cfg.seed)
        dev = sample_directions(data.splits.dev, data.directions, cfg.finetune.dev_size, cfg.seed)
        facts, dropped = None, 0
    if not examples:
        raise UsageError(f"finetune.directions: the corpus has no training pairs for {data.directions}")
    if len(examples) < cfg.finetune.size:
        # Capping silently would label the condition with a size it never trained on.
        available = ", ".join(f"{s}-{t}: {len(direction_examples(data.splits.train, s, t))}"
                              for s, t in data.directions)
        raise UsageError(f"finetune.size: {cfg.finetune.size} pairs asked for, but the training split gives only "
                         f"{len(examples)} spread evenly over the fine-tuning directions ({available} pairs); "
                         "use a smaller finetune.size or a larger corpus")
    return examples, dev, dropped, facts


def _evaluate(run: TrialRun, data: TrialData, base: LoadedBase, model: torch.nn.Module, desc: str,
              group: EvalGroup = ALONE, control: Control | None = None) -> dict | None:
    """Scores of ``model`` on every direction, with the engine the base was evaluated with (and
    the base's control unless ``control`` is given); the processes of ``group`` share the
    translation, and the others than the main one get None."""
    with _engine(base.engine_kind, model, control or base.control, run.cfg.eval.compute_type, base.settings, False,
                 base.probe) as engine:
        return evaluate_directions(engine, data.splits.test, data.all_directions, base.lid, base.settings,
                                   desc=desc, progress=run.progress, group=group)


def _representations(run: TrialRun, data: TrialData, base: LoadedBase, tuned: Finetuned,
                     base_representations: dict) -> dict:
    """Layer-wise retrieval of the base and the fine-tuned model, and the layer plots mark: the one
    a mitigation trains (alignment), else the middle one."""
    marked = next((layer for layer in (m.trained_layer() for m in tuned.mitigations) if layer), None)
    return {"base": base_representations,
            "finetuned": layerwise_retrieval(tuned.model, base.tokenizer, data.splits.test, data.languages,
                                             data.pivot, run.cfg.eval.representation_sentences),
            "marked_layer": marked or resolve_layer(tuned.model, "middle")}


def _trial_result(run: TrialRun, data: TrialData, base: LoadedBase, tuned: Finetuned, base_eval: dict,
                  category_ci: dict, mitigations: dict[str, dict], analyses: dict) -> TrialResult:
    """What the trial records about itself."""
    cfg, model, outcome = run.cfg, tuned.model, tuned.outcome
    curve = curve_of(outcome.history)
    return TrialResult(
        model=run.trial.model_label, base_dir=str(base.dir), parameters=count_parameters(model),
        trainable_parameters=tuned.trainable, method=run.trial.method,
        architecture="encoder-decoder" if model.config.is_encoder_decoder else "decoder-only",
        language_control=base.control.description,
        finetune_directions=[f"{s}-{t}" for s, t in data.directions], finetune_examples=tuned.examples,
        languages=data.languages, added_language_tokens=base.added, train=asdict(outcome),
        precision=outcome.precision_mode, dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        grad_accumulation=cfg.finetune.grad_accumulation,
        effective_batch_size=cfg.finetune.batch_size * cfg.finetune.grad_accumulation,
        max_length=cfg.finetune.max_length, overlap_dropped=tuned.overlap_dropped,
        missing_directions=[f"{s}-{t}" for s, t in data.all_directions if f"{s}-{t}" not in base_eval],
        category_ci=category_ci, lid=base.lid.name, lid_accuracy=base.lid_accuracy,
        metric_signatures=signatures(data.languages, run.cfg.eval.metrics), device=str(base.device),
        gpu=torch.cuda.get_device_name(base.device) if base.device.type == "cuda" else None,
        engine=base.engine_name, engine_fallback_reason=base.engine_fallback, base_revision=base.revision,
        eval_processes=run.group.size, processes=PartialState().num_processes, threads=torch.get_num_threads(),
        pid=os.getpid(),
        timings_s=dict(run.timings), peak_rss_mb=run.peak_rss, finetune_data=tuned.finetune_data,
        mitigations=mitigations, representations=analyses.get("representations"),
        forgetting_curve=curve or None, forgetting_proxy=proxy_of(outcome.history) if curve else None,
        forgetting_curve_by_direction=curve_by_direction_of(outcome.history) or None,
        exposure=tuned.exposure.to_dict(), pivot=data.pivot, output_languages=analyses.get("output_languages"),
        language_facts=_language_facts(cfg, data.languages),
    )


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
    # The generator's own source, not a version string: a change to how the world is made is a new corpus.
    key = fingerprint({"languages": n_languages, "segments": segments, "seed": seed,
                       "generator": content_fingerprint(inspect.getsourcefile(SyntheticWorld))})

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


def _language_facts(cfg: StudyConfig, languages: list[str]) -> dict[str, dict]:
    """What is known of each study language: family and script (the synthetic world's own, a real
    code's usual script) and its pre-training weight in a tiny base (``model.pretrain_mix``; None
    for a checkpoint's, which is not known here)."""
    cards = {}
    if not cfg.corpus.path:
        world = SyntheticWorld(seed=cfg.corpus.synthetic.seed, n_languages=cfg.corpus.synthetic.languages)
        cards = {lang.code: {"family": lang.family, "script": lang.script} for lang in world.languages}
    weight = None if cfg.model.path else 1.0
    facts = {}
    for lang in languages:
        base, script = split_code(lang)
        card = cards.get(lang, {})
        facts[lang] = {"family": card.get("family"), "script": card.get("script") or script or default_script(base),
                       "pretrain_weight": cfg.model.pretrain_mix.get(lang, weight) if weight else None}
    return facts


def _language_names(cfg: CorpusConfig) -> dict[str, str]:
    """Names for instructions: the synthetic world's invented ones (real codes use the registry)."""
    if cfg.path:
        return {}
    world = SyntheticWorld(seed=cfg.synthetic.seed, n_languages=cfg.synthetic.languages)
    return {lang.code: lang.name for lang in world.languages}


def _study_languages(corpus: Corpus, cfg: CorpusConfig) -> list[str]:
    if not cfg.languages:
        if len(corpus.languages) < 2:
            raise UsageError(f"{corpus.source}: the corpus has {len(corpus.languages)} language "
                             f"({', '.join(corpus.languages)}); a study needs at least two")
        return list(corpus.languages)
    chosen = list(dict.fromkeys(normalize_code(lang) for lang in cfg.languages))
    for lang in chosen:
        if lang not in corpus.languages:
            raise UsageError(f"corpus.languages: {lang!r} is not in {corpus.source} "
                             f"(it has {', '.join(corpus.languages)})")
    if len(chosen) < 2:
        raise UsageError(f"corpus.languages: {', '.join(chosen)}: a study needs at least two languages")
    return chosen


def _base_model(cfg: StudyConfig, corpus: Corpus, splits: Splits, progress: bool) -> Path | str:
    if cfg.model.path:
        return cfg.model.path
    mix = {normalize_code(lang): weight for lang, weight in cfg.model.pretrain_mix.items()}
    for lang in mix:
        if lang not in corpus.languages:
            raise UsageError(f"model.pretrain_mix: {lang} is not a language of the corpus "
                             f"({', '.join(corpus.languages)})")
    return tiny_base(cfg.model.tiny, corpus, splits, cfg.model.seed, steps=cfg.model.pretrain_steps,
                     progress=progress, names=_language_names(cfg.corpus), prebuilt=cfg.model.prebuilt, mix=mix)


def _ids(segments) -> str:
    """A digest of which segments a split holds."""
    return fingerprint([s.id for s in segments])


def _identifier(corpus: Corpus, splits: Splits, languages: list[str], shared: TrialMemo) -> tuple[object, float]:
    # The split's contents, not its size: a split_seed grid in one process trains one identifier per split.
    key = fingerprint([corpus.fingerprint(), languages, _ids(splits.train), _ids(splits.dev)])
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


def _base_evaluation(identity: str, corpus, splits, directions, engine, lid, settings, shared,
                     progress, added, dtype: str, group: EvalGroup = ALONE) -> dict | None:
    """Scores of the base model on every direction, cached on disk under everything that decides
    them. The processes of ``group`` all call it: the main one looks the scores up and tells the
    others whether they translate with it; it alone returns them."""
    key = cached = None
    if group.is_main:
        key = fingerprint({
            "base": identity,  # LoadedBase.identity
            "dtype": dtype,  # model.dtype: the arithmetic of the translations
            "engine": engine.name,  # engines differ in floating-point detail: never reuse another's scores
            "added_tokens": added,
            "max_length": engine.control.max_length,  # the control cuts longer sources
            "corpus": corpus.fingerprint(),
            "test": [s.id for s in splits.test],
            "directions": directions,
            "settings": asdict(settings),
            # What an evaluation stores (sources, references, per-sentence flags), and how it is
            # batched (3: the engine's planned batches, whole, whatever the number of processes).
            "format": 3,
            "metrics": signatures(sorted({t for _, t in directions})),
            "lid": type(lid).__name__,
            "lid_train": _ids(splits.train),  # the identifier is trained on the training split
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        })
        cached = shared.base_evals.get(key)
        entry = existing_entry("base_evals", key) if cached is None else None
        if entry is not None:
            cached = shared.base_evals[key] = json.loads((entry / "eval.json").read_text(encoding="utf-8"))
    if not group.broadcast(cached is None):
        return cached
    # Translated here rather than inside the cache's build, so that every process joins it
    # whether or not the entry appears meanwhile.
    result = evaluate_directions(engine, splits.test, directions, lid, settings, desc="evaluate base",
                                 progress=progress, with_copy=True, group=group)
    if not group.is_main:
        return None

    def build(out: Path) -> None:
        (out / "eval.json").write_text(json.dumps(result, ensure_ascii=False))

    path = cached_dir("base_evals", key, build) / "eval.json"
    shared.base_evals[key] = json.loads(path.read_text(encoding="utf-8"))
    return shared.base_evals[key]


def _base_representations(base: LoadedBase, data: TrialData, sentences: int, shared: TrialMemo) -> dict:
    """Layer-wise retrieval accuracy of the base model, cached like the base evaluation."""
    key = fingerprint({
        "base": base.identity,
        "dtype": str(next(base.model.parameters()).dtype),  # the arithmetic of the hidden states
        "added_tokens": base.added,
        "corpus": data.corpus.fingerprint(),
        "test": [s.id for s in data.splits.test],
        "languages": data.languages,
        "pivot": data.pivot,
        "sentences": sentences,
        "format": 1,  # what layerwise_retrieval returns
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    })
    if key not in shared.base_representations:
        def build(out: Path) -> None:
            result = layerwise_retrieval(base.model, base.tokenizer, data.splits.test, data.languages, data.pivot,
                                         sentences)
            (out / "representations.json").write_text(json.dumps(result))

        path = cached_dir("base_representations", key, build) / "representations.json"
        shared.base_representations[key] = json.loads(path.read_text(encoding="utf-8"))
    return shared.base_representations[key]


def _category_means(base_eval: dict, evaluated: dict, directions: list[tuple[str, str]],
                    gate: BaseGate, exposure: Exposure = NO_EXPOSURE) -> dict[str, dict]:
    """Per direction category: the mean of each metric over the directions ``gate`` counts, and
    its mean delta vs the base."""
    keys = [key for key in evaluated if key in base_eval and gate.counts(gate.flag(base_eval[key]))]
    metrics = [m.name for m in all_metrics() if all(m.name in evaluated[k] and m.name in base_eval[k] for k in keys)]
    by_category: dict[str, list[str]] = {}
    for key in keys:
        by_category.setdefault(categorize(*key.split("-"), directions, exposure.replayed), []).append(key)
    summary = {}
    for category in (c for c in CATEGORIES if c in by_category):
        keys = by_category[category]
        summary[category] = {"directions": len(keys)}
        for m in metrics:
            summary[category][m] = sum(evaluated[k][m] for k in keys) / len(keys)
            summary[category][f"{m}_delta"] = sum(evaluated[k][m] - base_eval[k][m] for k in keys) / len(keys)
        if "chrf" in metrics:  # the units of the report's frontier intervals
            summary[category]["chrf_by_direction"] = {k: evaluated[k]["chrf"] - base_eval[k]["chrf"] for k in keys}
    return summary


def _model_fingerprint(base_dir: Path | str) -> str:
    """Identity of a checkpoint: the contents of its weight, config and tokenizer files (a hub id
    stands for itself)."""
    return content_fingerprint(base_dir) or str(base_dir)


def _write_outputs(trial_dir: Path, base_eval: dict, ft_eval: dict) -> None:
    """Every test translation of the trial, base beside fine-tuned, as JSON lines."""
    with atomic_path(trial_dir / "outputs.jsonl") as tmp, tmp.open("w", encoding="utf-8") as f:
        for key, ft in ft_eval.items():
            src, tgt = key.split("-")
            base = base_eval[key]
            for seg_id, source, ref, base_hyp, ft_hyp in zip(base["ids"], base["sources"], base["references"],
                                                             base["hypotheses"], ft["hypotheses"]):
                f.write(json.dumps({"id": seg_id, "src_lang": src, "tgt_lang": tgt, "source": source,
                                    "reference": ref, "base": base_hyp, "finetuned": ft_hyp},
                                   ensure_ascii=False) + "\n")


def _trial_log(trial_dir: Path) -> logging.Handler:
    """The trial's log file: ``trial.log``, or ``trial.rank<N>.log`` for process N > 0 of a launch
    (each process its own file, never two appending to one)."""
    rank = int(os.environ.get("RANK", "0"))
    handler = logging.FileHandler(trial_dir / ("trial.log" if rank == 0 else f"trial.rank{rank}.log"), encoding="utf-8")
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
