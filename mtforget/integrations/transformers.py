"""Forgetting measured inside a user's own ``transformers.Trainer`` run.

``ForgettingCallback(study_file, every=N)`` reads a study file for the base (``model.path``), the
benchmark (``corpus``), the directions fine-tuned on (``finetune.directions``) and the sampling
settings (``eval.during_training.directions`` / ``.sentences``, ``seed``). At the start of training
the model (still the base) is evaluated on every direction of the study, as ``mtforget run``
evaluates a base, and cached under the base's contents: that evaluation picks the fixed, seeded
sample of :mod:`mtforget.evaluate.during_training`. At step 0 and every ``N`` optimizer steps (and
the last) the sample is translated by the model being trained, in place, and the change of its
chrF since step 0 per direction category is

- logged through the Trainer's own ``log`` as ``forgetting/<category>/chrf`` (so
  ``state.log_history``, TensorBoard, W&B ... get it), and
- written to ``<output_dir>/forgetting_curve.json``, whose ``forgetting_curve`` and
  ``forgetting_proxy`` have the schema of a trial's ``result.json`` (``mtforget report
  <output_dir>`` shows it).

``stop_at`` (or the study's ``finetune.forgetting_budget``) stops training
(``control.should_training_stop``) at the first check where a watched category fell more than
that many chrF points; the Trainer keeps the weights it has (its own checkpoints hold earlier ones).

Under a multi-process launch the main process samples and the others wait for it at each check;
its values and its decision to stop are sent to every process, so all log the same and stop at
the same step. Sharded weights (FSDP, DeepSpeed ZeRO-3) cannot be translated by one process: the
callback refuses them.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from mtforget.atomic import write_json_atomic
from mtforget.errors import UsageError
from mtforget.evaluate.during_training import ForgettingCurve, ForgettingProbe, curve_of, proxy_of, sample_again
from mtforget.evaluate.forgetting import BaseGate
from mtforget.evaluate.sharding import launch_group
from mtforget.report.curve import CURVE_FILE
from mtforget.mitigations.forgetting_budget import over_budget, watched_categories
from mtforget.models.language import LanguageTokens
from mtforget.models.loading import make_control
from mtforget.study.config import StudyConfig, load_study
from mtforget.study.grid import Trial
from mtforget.study.trial import (LoadedBase, TrialMemo, TrialRun, _language_names, eval_settings, evaluate_base,
                                  hub_revision, make_probe, probe_of_sample, study_data)
from mtforget.train.callbacks import TrainState

log = logging.getLogger("mtforget")


@dataclass
class _Run:
    """What :class:`ForgettingCurve` reads of a run: its steps and history (``TrainOutcome``'s)."""

    steps: int = 0
    history: list[dict] = field(default_factory=list)


class ForgettingCallback(TrainerCallback):
    """Samples forgetting while a ``transformers.Trainer`` trains (see the module docstring).

    ``study_file``: a study YAML naming the base, the benchmark and the directions; ``every``:
    optimizer steps between checks (default: the study's ``eval.during_training.every``);
    ``stop_at``: chrF points a watched category may lose before training stops (default: the
    study's ``finetune.forgetting_budget.max_drop``; the watched categories are its ``category``,
    else every unseen one); ``overrides``: ``KEY=VALUE`` strings as ``mtforget run --set`` takes.
    """

    def __init__(self, study_file: str | Path, every: int | None = None, stop_at: float | None = None,
                 overrides: list[str] | None = None) -> None:
        self.study: StudyConfig = load_study(study_file, overrides)
        self.study_file = str(study_file)
        if not self.study.model.path:
            raise UsageError(f"{study_file}: model.path: name the base the Trainer fine-tunes")
        if not self.study.finetune.directions:
            raise UsageError(f"{study_file}: finetune.directions: list the directions the Trainer fine-tunes on "
                             "(e.g. [en-de, de-en]); they decide each direction's category")
        self.every = every or self.study.eval.during_training.every
        if self.every < 1:
            raise UsageError("ForgettingCallback: every: give the optimizer steps between checks (>= 1), or "
                             "eval.during_training.every in the study")
        budget = self.study.finetune.forgetting_budget
        self.stop_at = stop_at if stop_at is not None else budget.max_drop
        if self.stop_at is not None and self.stop_at <= 0:
            raise UsageError(f"ForgettingCallback: stop_at: {self.stop_at} is not a positive number of chrF points")
        self._budget_category = budget.category
        self.probe: ForgettingProbe | None = None
        self.watched: list[str] = []
        self.stopped_at: int | None = None
        self.reason: str | None = None
        self._curve: ForgettingCurve | None = None
        self._run = _Run()
        self._trainer: Trainer | None = None
        self._state: TrainState | None = None
        self._path: Path | None = None

    # -- Trainer events -------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        """Evaluate the base once (cached), draw the sample and measure step 0."""
        _refuse_sharded(args)
        self._trainer = _calling_trainer(self)
        self._path = Path(args.output_dir) / CURVE_FILE
        if state.is_world_process_zero:
            self._prepare(model, processing_class, state)
        return self._check(state, control, model, state.global_step, start=True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """A check every ``every`` optimizer steps and at the last one."""
        step = state.global_step
        if step % self.every == 0 or step == state.max_steps:
            return self._check(state, control, model, step)
        return control

    # -- Checks -----------------------------------------------------------------------------------

    def _prepare(self, model: torch.nn.Module, tokenizer, state) -> None:
        """The study's data, the base's evaluation (the model as it starts), the sample and the curve."""
        cfg = self.study
        shared = TrialMemo()
        data = study_data(cfg, shared)
        revision = hub_revision(cfg.model.path, cfg.model.revision)
        tokenizer = tokenizer if hasattr(tokenizer, "get_vocab") else _base_tokenizer(cfg, revision)
        control = _control(model, tokenizer, data.languages, cfg)
        base = LoadedBase(cfg.model.path, model, tokenizer, control, [], next(model.parameters()).device,
                          eval_settings(cfg), revision=revision)
        kept = self._kept_sample() if state.global_step else None
        if state.global_step and kept is None:
            # The Trainer loaded its checkpoint before this call: the model is no longer the base,
            # and measuring it as one would record (and cache) the wrong reference.
            raise UsageError(f"ForgettingCallback: the run resumes at step {state.global_step}, but {self._path} holds "
                             "no sample from its start; resume a run that the callback followed from step 0")
        if kept is not None:  # the sample and its step-0 scores are the run's own, from its start
            self.probe = probe_of_sample(cfg, data, base, sample_again(kept, data.splits.test, cfg.eval.max_sentences,
                                                                       cfg.eval.during_training.sentences))
        else:  # step 0 of a fresh run: the model is the base
            run = TrialRun(Trial("callback", cfg, {}), Path(self._path).parent, shared, False, True)
            gate = BaseGate(**cfg.eval.base_gate.model_dump())
            with torch.no_grad():
                base_eval = evaluate_base(run, data, base)
            self.probe = make_probe(cfg, data, base, base_eval, gate)
        if self.probe is None:
            raise UsageError("ForgettingCallback: no direction of the base passes the base-quality gate "
                             "(eval.base_gate), so there is nothing to sample; see the base's scores in the study's "
                             "report, or set eval.base_gate.include_flagged: true")
        if self.stop_at is not None:
            self.watched = watched_categories(self._budget_category, self.probe.categories)
        self._curve = ForgettingCurve(self.probe, self.every)
        self._run = _Run(steps=state.global_step, history=self._resumed_history(state.global_step))
        self._state = TrainState(self._run, state.max_steps, lambda: state.num_input_tokens_seen or None)

    def _check(self, state, control, model, step: int, start: bool = False):
        """Measure (main process), share the values and the decision to stop, log and write."""
        values, stop = None, None
        if state.is_world_process_zero:
            values, stop = self._measure(model, step, start)
        values, stop = launch_group().broadcast((values, stop))  # every process logs and stops alike
        if values:
            self._log(values, state)
        if stop:
            self.stopped_at, self.reason = step, stop
            log.warning("forgetting budget: %s; training stops", stop)
            control.should_training_stop = True
        return control

    def _measure(self, model: torch.nn.Module, step: int, start: bool) -> tuple[dict | None, str | None]:
        """The new curve point's logged values (None when this step made none) and a budget's reason
        to stop; the curve file is rewritten after each point."""
        assert self._curve is not None and self._state is not None
        before = len(self._run.history)
        with torch.no_grad():
            if start:
                self._curve.on_steps_start(model, self._state)
            else:
                self._run.steps = step
                self._curve.on_step_end(step, model, self._state)
        points = [h for h in self._run.history[before:] if "forgetting" in h]
        if not points:
            return None, None
        deltas = points[-1]["forgetting"]
        stop = over_budget(deltas, self.watched, self.stop_at, step) if self.stop_at is not None and step else None
        if stop:
            self.stopped_at, self.reason = step, stop
        self._write()
        values = {f"forgetting/{category}/{self.probe.metric.name}": round(delta, 4) for category, delta in deltas.items()}
        if points[-1].get("unseen_dev_loss") is not None:
            values["forgetting/unseen_dev_loss"] = round(points[-1]["unseen_dev_loss"], 4)
        return values, stop

    def _log(self, values: dict[str, float], state) -> None:
        """Through the Trainer's own ``log`` (its history and every reporting callback)."""
        if self._trainer is not None:
            self._trainer.log(dict(values))
        else:  # called outside a Trainer's loop: the history still gets the values
            state.log_history.append({**values, "step": state.global_step})

    def _write(self) -> None:
        history = self._run.history
        write_json_atomic(self._path, {
            "forgetting_curve": curve_of(history), "forgetting_proxy": proxy_of(history),
            "study": self.study_file, "base": self.study.model.path, "metric": self.probe.metric.name,
            "every": self.every, "sample": [{"src": d.src, "tgt": d.tgt, "category": d.category}
                                            for d in self.probe.sample],
            "stop_at": self.stop_at, "watched": self.watched, "stopped_at": self.stopped_at, "reason": self.reason,
            "history": history})

    def _kept_sample(self) -> list[dict] | None:
        """The sample that the curve file of this output folder recorded, or None."""
        try:
            kept = json.loads(self._path.read_text(encoding="utf-8")).get("sample")
        except (OSError, ValueError):
            return None
        return kept or None

    def _resumed_history(self, step: int) -> list[dict]:
        """A resumed run's history up to ``step`` (its step-0 reference above all), from the curve
        file the run wrote; a run starting at step 0 starts afresh."""
        if not step or not self._path.is_file():
            return []
        try:
            kept = json.loads(self._path.read_text(encoding="utf-8")).get("history") or []
        except (OSError, ValueError):
            return []
        return [h for h in kept if h.get("step", 0) <= step]


def _control(model: torch.nn.Module, tokenizer, languages: list[str], cfg: StudyConfig):
    """The language control of the model being trained, which must not change it: every language
    token it needs must be there already."""
    if getattr(model.config, "is_encoder_decoder", False):
        tokens = LanguageTokens.for_tokenizer(tokenizer, cfg.finetune.max_length)
        missing = [lang for lang in languages if not tokens.has(lang)]
        if missing:
            raise UsageError(f"the tokenizer has no language token for {', '.join(missing)}: add them (and resize "
                             "the embeddings) before training, or leave these languages out (corpus.languages)")
    control, _ = make_control(model, tokenizer, languages, _language_names(cfg.corpus), cfg.finetune.max_length)
    return control


def _base_tokenizer(cfg: StudyConfig, revision: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code,
                                         revision=revision)


def _calling_trainer(callback: TrainerCallback) -> Trainer | None:
    """The Trainer whose callback handler is calling ``callback`` (found on the call stack: a
    TrainerCallback is given no reference to its Trainer, and logging through the Trainer's own
    ``log`` is what reaches its history and every reporting integration)."""
    for frame in inspect.stack(context=0):
        owner = frame.frame.f_locals.get("self")
        if isinstance(owner, Trainer) and callback in owner.callback_handler.callbacks:
            return owner
    return None


def _refuse_sharded(args) -> None:
    deepspeed = getattr(args, "hf_deepspeed_config", None)
    if args.world_size > 1 and (args.fsdp or (deepspeed is not None and deepspeed.is_zero3())):
        raise UsageError("ForgettingCallback: the weights are sharded over processes (FSDP or DeepSpeed ZeRO-3); "
                         "the main process cannot translate with them alone")
