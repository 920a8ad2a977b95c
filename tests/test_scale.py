"""Studies at scale: kill -9 and resume, Ray and worker processes, multi-process training."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mtforget.study.config import StudyConfig, parse_study
from mtforget.study.executors import process_pool
from mtforget.study.runner import run_study
from tests.conftest import resume_and_check, tiny_study

PYTHON = sys.executable


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def _table(out: Path) -> list[tuple]:
    """The result table without anything run-specific (sorted, values rounded)."""
    return sorted((r["trial_id"], r["src"], r["tgt"], r["metric"], round(float(r["base"]), 6),
                   round(float(r["finetuned"]), 6)) for r in _rows(out))


def _study_file(tmp_path: Path, **overrides) -> Path:
    raw = tiny_study(**{"finetune.size": [16, 1000]})  # 1,096 pairs of en-xa and xa-en in the training split
    raw["finetune"].update(checkpoint_every=10, eval_every=10, patience=0)
    raw.update(overrides)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sigkill_after_first_trial_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    study_path = _study_file(tmp_path)
    study = parse_study(yaml.safe_load(study_path.read_text()), "t")
    reference = tmp_path / "reference"
    assert run_study(study, reference, progress=False) == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen([PYTHON, "-m", "mtforget.cli", "run", str(study_path), "--out", str(out), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 240
    while not list(out.glob("trials/*/result.json")):
        assert proc.poll() is None, "the study ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [p.parent for p in out.glob("trials/*/result.json")]
    assert len(finished) == 1, "kill came after the second trial finished: make it longer"
    resume_and_check(monkeypatch, study, out, finished[0], _table(reference), _table)


def test_worker_processes_and_ray_give_the_same_results_as_in_process(tmp_path):
    study_path = _study_file(tmp_path)
    raw = yaml.safe_load(study_path.read_text())
    raw["grid"] = {"finetune.size": [16, 48]}
    raw["resources"] = {"cpus": 1}  # the same threads per trial everywhere, so numbers match bit for bit
    local = tmp_path / "local"
    assert run_study(parse_study(raw, "t"), local, progress=False) == 0

    # The pooled run in a process of its own, to see what it imported: the process that schedules
    # and records trials must not load PyTorch (the models' memory belongs to the workers).
    pooled = tmp_path / "pool"
    pooled_study = tmp_path / "pooled.yaml"
    pooled_study.write_text(yaml.safe_dump({**raw, "workers": 2}))
    script = ("import sys, yaml\nfrom pathlib import Path\nfrom mtforget.study.config import parse_study\n"
              "from mtforget.study.runner import run_study\n"
              f"raw = yaml.safe_load(Path({str(pooled_study)!r}).read_text())\n"
              f"code = run_study(parse_study(raw, 't'), Path({str(pooled)!r}), progress=False)\n"
              "print('exit', code, 'torch', 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    assert done.stdout.split()[-4:] == ["exit", "0", "torch", "False"], done.stdout + done.stderr
    assert _table(pooled) == _table(local)

    pytest.importorskip("ray")
    on_ray = tmp_path / "ray"
    assert run_study(parse_study({**raw, "executor": "ray"}, "t"), on_ray, progress=False) == 0
    assert _table(on_ray) == _table(local)


@pytest.mark.parametrize("fresh", [True, False])
def test_worker_processes_are_fresh_for_each_trial_unless_asked_to_stay(fresh):
    study = StudyConfig(workers=2, resources={"cpus": 1, "fresh_process": fresh})
    with process_pool(study) as pool:
        pids = [pool.submit(os.getpid).result() for _ in range(3)]
    assert os.getpid() not in pids
    # Fresh: every trial in a process of its own. Kept: the (at most two) workers serve all three.
    assert len(set(pids)) == 3 if fresh else len(set(pids)) <= 2


def test_two_process_training_under_accelerate_launch_matches_one_process(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(PYTHON).parent))
    assert accelerate, "accelerate's launcher is installed with the project"
    study_path = _study_file(tmp_path)
    raw = yaml.safe_load(study_path.read_text())
    raw["grid"] = {"finetune.size": [60]}  # 16 a step: every epoch ends with a short batch of 12
    raw["finetune"].update(batch_size=16, epochs=2)
    raw["eval"]["during_training"] = {"every": 2, "directions": 1, "sentences": 3}
    study_path.write_text(yaml.safe_dump(raw))

    single = tmp_path / "single"
    assert run_study(parse_study(raw, "t"), single, progress=False) == 0
    # The launch finds the base built, and translates the base evaluation again, on both processes.
    shutil.rmtree(Path(os.environ["MTFORGET_CACHE"]) / "base_evals")
    multi = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu selects the torchrun launcher; on a machine without CUDA the processes join over gloo.
    done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mtforget.cli", "run",
                           str(study_path), "--out", str(multi), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    import json

    info = [json.loads(p.read_text())["info"] for p in (multi / "trials").glob("*/result.json")]
    ref = [json.loads(p.read_text())["info"] for p in (single / "trials").glob("*/result.json")]
    assert info[0]["processes"] == 2 and ref[0]["processes"] == 1
    assert info[0]["eval_processes"] == 2 and ref[0]["eval_processes"] == 1
    # Forgetting sampled while training, the checks shared by both processes: the same points.
    assert [p["step"] for p in info[0]["forgetting_curve"]] == [p["step"] for p in ref[0]["forgetting_curve"]]
    def reference(result):  # the sample's scores on the base (step 0)
        return next(h["forgetting_reference"] for h in result["train"]["history"] if "forgetting_reference" in h)

    assert reference(info[0]) == reference(ref[0])  # the base's sampled scores, exactly
    # Each process translated whole batches of one plan: the base's scores are those of one process.
    base = {(r["src"], r["tgt"], r["metric"]): r["base"] for r in _rows(multi)}
    assert base == {(r["src"], r["tgt"], r["metric"]): r["base"] for r in _rows(single)}
    # Every example once per epoch, each token weighted by the step's global count: one process's steps,
    # tokens and losses (float32: the same sums in another order, see tests/test_launch.py).
    assert info[0]["train"]["steps"] == ref[0]["train"]["steps"] == 8
    assert info[0]["train"]["tokens"] == ref[0]["train"]["tokens"]
    assert info[0]["train"]["best_dev_loss"] == pytest.approx(ref[0]["train"]["best_dev_loss"], rel=1e-5)
    multi_chrf = [float(r["finetuned"]) for r in _rows(multi) if r["metric"] == "chrf"]
    single_chrf = [float(r["finetuned"]) for r in _rows(single) if r["metric"] == "chrf"]
    assert sum(multi_chrf) / len(multi_chrf) == pytest.approx(sum(single_chrf) / len(single_chrf), abs=0.05)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent to reap it has stopped running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_the_scheduling_process_is_killed(tmp_path, sig):
    script = ("import os, time\nfrom mtforget.study.config import StudyConfig\n"
              "from mtforget.study.executors import process_pool\n"
              "pool = process_pool(StudyConfig(workers=2, resources={'cpus': 1}))\n"
              "futures = [pool.submit(time.sleep, 300) for _ in range(2)]\n"
              "while len(pool._processes) < 2: time.sleep(0.05)\n"
              "print(*pool._processes, flush=True)\n"
              "time.sleep(300)\n")
    proc = subprocess.Popen([PYTHON, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    proc.send_signal(sig)
    proc.wait()
    deadline = time.time() + 20
    try:
        while any(_alive(pid) for pid in workers):
            assert time.time() < deadline, "a worker outlived the process that scheduled its trial"
            time.sleep(0.1)
    finally:
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)
