"""Where trials run: in this process, in a pool of local processes, or on Ray.

Each executor takes the trials to run and two callbacks; the caller (the runner, in the main
process) records states and results, so the store has exactly one writer. A trial writes its own
directory (``result.json`` atomically, last), so a result survives even if the caller is killed
before recording it: the next run picks it up from the file.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from mtforget.console import quiet_libraries
from mtforget.resources import trial_threads
from mtforget.study.config import StudyConfig
from mtforget.study.grid import Trial

# (trial) -> None before a trial starts; (trial, outcome) -> None when it ends.
OnStart = Callable[[Trial], None]
OnDone = Callable[[Trial, dict], None]


def run_trials(study: StudyConfig, trials: list[Trial], out: Path, progress: bool,
               on_start: OnStart, on_done: OnDone) -> None:
    """Run ``trials`` with the executor the study asks for."""
    if study.executor == "ray":
        _run_on_ray(study, trials, out, on_start, on_done)
    elif study.workers > 1:
        _run_in_pool(study, trials, out, on_start, on_done)
    else:
        import torch

        from mtforget.study.trial import TrialMemo, execute_trial

        threads = torch.get_num_threads()
        torch.set_num_threads(trial_threads(study.resources.cpus))
        try:
            memo = TrialMemo()
            for trial in trials:
                on_start(trial)
                on_done(trial, execute_trial(trial, out, progress, memo))
        finally:
            torch.set_num_threads(threads)


def _worker_init(threads: int, env: dict[str, str], parent: int) -> None:
    import torch

    os.environ.update(env)
    torch.set_num_threads(threads)
    quiet_libraries()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # A scheduling process killed outright (SIGKILL, SIGTERM) runs no clean-up: its workers would
    # go on writing into a study directory whose lock died with it, beside the next run.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _worker_env() -> dict[str, str]:
    # Workers must see the same cache and quiet settings as the parent.
    keep = ("MTFORGET_CACHE", "XDG_CACHE_HOME", "HOME", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")
    return {k: os.environ[k] for k in keep if k in os.environ}


def _pool_trial(trial: Trial, out: Path) -> dict:
    # Imported here, in the worker: the parent process only schedules and stays free of PyTorch.
    from mtforget.study.trial import execute_trial

    return execute_trial(trial, out, False, None)


def process_pool(study: StudyConfig) -> ProcessPoolExecutor:
    """The pool of ``study.workers`` processes; with ``resources.fresh_process`` a process exits
    after one trial and the pool starts a new one (CPython frees little of its heap back to the
    system, so a long-lived worker holds the peak of every trial it ran)."""
    # spawn, not fork: forking a process that already holds torch threads can deadlock.
    ctx = multiprocessing.get_context("spawn")
    threads = trial_threads(study.resources.cpus, study.workers)
    return ProcessPoolExecutor(max_workers=study.workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(threads, _worker_env(), os.getpid()),
                               max_tasks_per_child=1 if study.resources.fresh_process else None)


def _run_in_pool(study: StudyConfig, trials: list[Trial], out: Path, on_start: OnStart, on_done: OnDone) -> None:
    with process_pool(study) as pool:
        pending = {}
        for trial in trials:
            on_start(trial)
            pending[pool.submit(_pool_trial, trial, out)] = trial
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                trial = pending.pop(future)
                on_done(trial, future.result())


def _run_on_ray(study: StudyConfig, trials: list[Trial], out: Path, on_start: OnStart, on_done: OnDone) -> None:
    try:
        import ray
    except ImportError:
        from mtforget.errors import UsageError

        raise UsageError("executor: ray needs the ray package (pip install 'mtforget[ray]')") from None

    started_here = not ray.is_initialized()
    if started_here:
        env = {"env_vars": _worker_env()}
        if study.ray.address:
            ray.init(address=study.ray.address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(runtime_env=env, include_dashboard=False, log_to_driver=False)
    try:
        cpus = study.resources.cpus or 1
        remote = ray.remote(num_cpus=cpus, num_gpus=study.resources.gpus, max_retries=0,
                            max_calls=1 if study.resources.fresh_process else 0)(_ray_trial)
        pending = {}
        for trial in trials:
            on_start(trial)
            pending[remote.remote(trial, str(out), cpus)] = trial
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                trial = pending.pop(ref)
                try:
                    on_done(trial, ray.get(ref))
                except ray.exceptions.RayError as exc:  # the worker died (OOM kill, node lost)
                    on_done(trial, {"status": "failed", "reason": f"ray: {type(exc).__name__}: {exc}"})
    finally:
        if started_here:
            ray.shutdown()


def _ray_trial(trial: Trial, out: str, threads: int) -> dict:
    import torch

    from mtforget.study.trial import execute_trial

    torch.set_num_threads(threads)
    quiet_libraries()
    return execute_trial(trial, Path(out), False, None)
