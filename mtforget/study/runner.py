"""Running a study: every trial of the grid, skipping finished ones, isolating failures.

The runner expands the grid, registers the trials in the store, hands the ones still to do to an
executor (:mod:`mtforget.study.executors`) and records each outcome as it arrives; a trial itself
runs in :mod:`mtforget.study.trial`. Run with a pool of workers or on Ray, this process never
imports PyTorch: it schedules and records, and the memory of the models stays in the workers. The
report is built from the records afterwards, by the caller (:mod:`mtforget.cli`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from datetime import timedelta
from importlib import metadata
from pathlib import Path

import yaml
from tqdm.auto import tqdm

import mtforget
from mtforget.atomic import write_text_atomic
from mtforget.cache import cache_root
from mtforget.errors import USAGE_PREFIX, UsageError
from mtforget.evaluate.metrics import signatures
from mtforget.mitigations import mitigation_labels
from mtforget.study.config import StudyConfig, study_to_dict
from mtforget.study.executors import run_trials
from mtforget.study.grid import Trial, expand
from mtforget.study.directory import claim_study_dir
from mtforget.study.store import ResultStore, clear_base_failures, open_store_for_run, warn

log = logging.getLogger("mtforget")

# How long a process of a launch waits at a collective for the others (see _launched_state).
PROCESS_GROUP_TIMEOUT = timedelta(hours=6)



def run_study(study: StudyConfig, out: Path, progress: bool = True, retry_failed: bool = False) -> int:
    """Run (or resume) every trial of ``study`` in ``out``; returns the exit code (0 or 1).

    Done trials are skipped; pending and interrupted ones run (again), from their last training
    checkpoint when they have one; failed ones only with ``retry_failed``. Under ``accelerate
    launch`` every process runs the same trials (training is shared); only the main process
    writes the store and ``results.csv``. The report is the caller's to build
    (:func:`mtforget.report.build.build_report`), once this returns or raises.
    """
    state = _launched_state()
    main = state is None or state.is_main_process
    trials = expand(study)
    if state is not None:
        check_launch(trials, state.num_processes)  # on every process: each one exits 2 alike
    # The main process locks the directory before it writes anything, until the run ends.
    lock = claim_study_dir(out) if main else None
    try:
        return _run_locked(study, out, trials, state, main, progress, retry_failed)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(study: StudyConfig, out: Path, trials: list[Trial], state, main: bool, progress: bool,
                retry_failed: bool) -> int:
    store, todo = _register(study, out, trials, retry_failed) if main else (None, [])
    if state is not None:
        from accelerate.utils import broadcast_object_list

        todo = broadcast_object_list([todo])[0]
        study = study.model_copy(update={"executor": "local", "workers": 1})
    if not main:
        _follow(todo, out)
        state.wait_for_everyone()
        return 0
    assert store is not None
    code = _execute(study, out, store, len(trials), todo, progress)
    if state is not None:
        state.wait_for_everyone()
    return code


def check_launch(trials: list[Trial], processes: int) -> None:
    """Refuse, before any trial runs, what ``processes`` launched together cannot train as one
    process would: a batch they cannot share evenly, FSDP settings the loop cannot honour, and
    under FSDP a mitigation that reads the whole model. A :class:`UsageError` names the key."""
    from mtforget.mitigations import active_mitigations
    from mtforget.train.distributed import check_batch_size, fsdp_from_launch

    fsdp = fsdp_from_launch()
    if fsdp is not None and processes < 2:
        raise UsageError("accelerate config distributed_type: FSDP with one process shards nothing; launch it "
                         "without FSDP")
    for trial in trials:
        if trial.checkpoint is not None:  # evaluated, not trained
            continue
        check_batch_size(trial.config.finetune.batch_size, processes)
        for mitigation in active_mitigations(trial.config) if fsdp is not None else ():
            if mitigation.needs_whole_model:
                raise UsageError(f"{mitigation.key}: reads the whole model, which FSDP shards over the processes; "
                                 "launch with DDP (examples/paper/accelerate_multi_gpu.yaml)")


def is_main_process() -> bool:
    """Whether this process records results: always, unless several were launched together and
    this is not their first."""
    state = _launched_state()
    return state is None or state.is_main_process


def _register(study: StudyConfig, out: Path, trials: list[Trial],
              retry_failed: bool) -> tuple[ResultStore, list[Trial]]:
    """Write ``study.yaml``, open the store and register every trial in it; the open store and the
    trials still to run."""
    try:
        write_text_atomic(out / "study.yaml", yaml.safe_dump(study_to_dict(study), sort_keys=False,
                                                             allow_unicode=True))
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write the study directory there "
                         f"({exc.strerror or exc})") from None
    # A base that failed in an earlier run gets another try (the user may have fixed it).
    clear_base_failures(out)
    store = open_store_for_run(out)
    dropped = store.keep_only({t.id for t in trials})
    if dropped:
        log.info("%d trial(s) of an earlier version of this study left out of its results (their "
                 "directories stay under %s)", len(dropped), out / "trials")
    store.set_meta(_environment())
    for t in trials:
        c = t.config
        store.register(t.id, t.model_label, t.method, mitigation_labels(c), t.condition,
                       t.finetune_size, c.seed, study_to_dict(c), t.grid_values)
        _recover_result(store, out, t)
    # A trial that failed on bad config or input is always retried: the user has fixed it.
    todo = [t for t in trials if store.status(t.id) != "done"
            and (retry_failed or store.status(t.id) != "failed"
                 or str(store.reason(t.id)).startswith(USAGE_PREFIX))]
    return store, todo


def _follow(todo: list[Trial], out: Path) -> None:
    """A process other than the main one under ``accelerate launch``: train the same trials (it
    holds part of every batch), record nothing."""
    from mtforget.study.trial import TrialMemo, execute_trial

    memo = TrialMemo()
    for trial in todo:
        execute_trial(trial, out, False, memo)


def _execute(study: StudyConfig, out: Path, store: ResultStore, total: int, todo: list[Trial],
             progress: bool) -> int:
    """Run ``todo`` on the study's executor, recording each outcome in ``store`` as it arrives,
    then export ``results.csv`` and close the store (also when a trial or the user interrupts);
    1 when some trial of the study has failed, else 0."""
    started = time.perf_counter()
    bar = tqdm(total=total, initial=total - len(todo), desc="trials", unit="trial", disable=not progress)

    def on_start(trial: Trial) -> None:
        store.mark_running(trial.id)

    def on_done(trial: Trial, outcome: dict) -> None:
        _record(store, trial, outcome)
        bar.set_postfix_str(f"{trial.id} {outcome['status']}")
        bar.update(1)

    if study.executor == "ray" or study.workers > 1:
        todo = interleave_by_base(todo)
    try:
        run_trials(study, todo, out, progress, on_start, on_done)
        usage = [t["reason"] for t in store.trials() if t["status"] == "failed"
                 and str(t["reason"]).startswith(USAGE_PREFIX)]
        if usage:
            raise UsageError(usage[0][len(USAGE_PREFIX):])
    finally:
        bar.close()
        store.set_meta({"last_run_seconds": round(time.perf_counter() - started, 1)})
        store.export_csv(out / "results.csv", dict(study.select))
        failed = any(t["status"] == "failed" for t in store.trials())
        store.close()
    return 1 if failed else 0


def _record(store: ResultStore, trial: Trial, outcome: dict) -> None:
    """Store one trial's outcome: its rows, or why it failed."""
    if outcome["status"] != "done":
        store.mark_failed(trial.id, outcome["reason"])
        return
    store.finish(trial.id, outcome["rows"], outcome["info"])
    reason = outcome["info"].get("engine_fallback_reason")
    if reason:  # why evaluation did not use the fast engine: run metadata, shown in the report
        fallbacks = store.meta().get("engine_fallback_reasons", [])
        store.set_meta({"engine_fallback_reasons": sorted(set(fallbacks) | {reason})})


def _launched_state():
    """accelerate's state of this process when several were launched together (``accelerate
    launch``, torchrun or MPI: they set the world size), else None, and PyTorch stays unimported."""
    sizes = (os.environ.get(k) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if max((int(v) for v in sizes if v), default=1) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # cpu=True on a machine without CUDA lets `accelerate launch --multi_gpu` (torchrun) processes
    # form a gloo group instead of running alone. The other processes wait at a collective while
    # the main one alone scores, records, and evaluates what a mitigation asks after training
    # (interpolated weights): the timeout leaves that its time. A failure during training reaches
    # every process at its next step (mtforget.train.distributed), not at this timeout.
    return PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)


def interleave_by_base(trials: list[Trial]) -> list[Trial]:
    """Trials reordered round-robin over their base models, first appearance first.

    Parallel workers take trials in order, and the first trial of a base builds it while later
    ones wait for it; interleaving starts different bases on different workers at once instead
    of leaving a worker waiting on the base its neighbour is building.
    """
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        m = trial.config.model
        groups.setdefault(json.dumps([m.path, m.tiny, m.seed, m.pretrain_steps]), []).append(trial)
    queues = list(groups.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def _recover_result(store: ResultStore, out: Path, trial: Trial) -> None:
    """Record a trial whose ``result.json`` was written but whose store update was lost to a kill."""
    path = out / "trials" / trial.id / "result.json"
    if store.status(trial.id) != "done" and path.is_file():
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            rows, info = result["rows"], result["info"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warn(f"{path} cannot be read ({exc}); the trial runs again")
            return
        store.finish(trial.id, rows, info)


def _environment() -> dict[str, object]:
    """Study-level facts about where it ran, for the store."""
    return {
        "mtforget": mtforget.__version__,
        # Installed versions, read without importing the libraries (the trials record the
        # versions they ran with too).
        **{name: metadata.version(name) for name in ("torch", "transformers", "sacrebleu", "scikit-learn")},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "metric_signatures": signatures(),
        "cache": str(cache_root()),
    }
