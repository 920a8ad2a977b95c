"""N processes train as one: two CPU processes over gloo under ``accelerate launch`` (DDP and FSDP2)
against one process, on a size the batch does not divide, over two epochs; and one failure stops all.

Each launch runs tests/launched_training.py, which trains with the real loop and writes the weights
every process holds afterwards.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtforget.errors import UsageError
from mtforget.train.distributed import FsdpSettings, check_batch_size, fsdp_from_launch, share_of
from tests.conftest import EQUIVALENCE_ATOL

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ACCELERATE = shutil.which("accelerate", path=str(Path(PYTHON).parent))
LAUNCHES = {
    "ddp": ["--multi_gpu"],
    "fsdp2": ["--use_fsdp", "--fsdp_version", "2", "--fsdp_cpu_ram_efficient_loading", "false"],
}
# Float32: the same sums in another order, so the weights agree to rounding, not bit for bit. Measured
# here over both launches and CPU kernel sets: the dev loss to 1e-7 relative, weights to 3e-6 absolute.
FLOAT32_DEV_LOSS_RTOL = 1e-5
FLOAT32_WEIGHTS_ATOL = 3e-5


def _launch(launch: str | None, *module: str) -> subprocess.CompletedProcess:
    """``python -m MODULE…`` in one process, or under ``accelerate launch`` on two CPU processes."""
    if launch is None:
        command = [PYTHON, "-m", *module]
    else:
        assert ACCELERATE, "accelerate's launcher is installed with the project"
        command = [ACCELERATE, "launch", *LAUNCHES[launch], "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", *module]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)


def _train(out: Path, launch: str | None, *args: str) -> subprocess.CompletedProcess:
    done = _launch(launch, "tests.launched_training", str(out), *args)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    runs = {}
    for dtype in ("float64", "float32"):
        out = tmp_path_factory.mktemp(f"one-{dtype}")
        _train(out, None, "--dtype", dtype)
        runs[dtype] = out
    return runs


def _outcome(out: Path) -> dict:
    return json.loads((out / "outcome.json").read_text())


@pytest.mark.parametrize("launch", sorted(LAUNCHES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_processes_train_as_one(tmp_path, one_process, launch, dtype):
    _train(tmp_path, launch, "--dtype", dtype)
    one, two = _outcome(one_process[dtype]), _outcome(tmp_path)
    assert one["processes"] == 1 and two["processes"] == 2 and two["sharding"] == launch
    # 75 examples, 16 a step: 5 steps an epoch, the last of 11; every example once per epoch.
    assert one["steps"] == two["steps"] == 10 and two["tokens"] == one["tokens"]
    assert two["best_step"] == one["best_step"]
    reference = load_file(one_process[dtype] / "weights-0.safetensors")
    for rank in (0, 1):  # every process ends with the whole trained weights
        weights = load_file(tmp_path / f"weights-{rank}.safetensors")
        assert weights.keys() == reference.keys()
        for name, value in reference.items():
            atol = EQUIVALENCE_ATOL if dtype == "float64" else FLOAT32_WEIGHTS_ATOL
            assert torch.allclose(weights[name], value, rtol=0, atol=atol), (rank, name)
    if dtype == "float64":
        assert two["best_dev_loss"] == pytest.approx(one["best_dev_loss"], rel=0, abs=EQUIVALENCE_ATOL)
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-6)  # logged in float32
    else:
        assert two["best_dev_loss"] == pytest.approx(one["best_dev_loss"], rel=FLOAT32_DEV_LOSS_RTOL)


@pytest.mark.parametrize("launch", sorted(LAUNCHES))
def test_a_failure_on_one_process_fails_the_run_on_all_with_its_reason(tmp_path, launch):
    _train(tmp_path, launch, "--fail-on-rank", "1", "--fail-at-step", "3")
    failed = [json.loads((tmp_path / f"failed-{rank}.json").read_text()) for rank in (0, 1)]
    assert [f["reason"] for f in failed] == ["RuntimeError: injected on rank 1"] * 2
    assert all(f["seconds"] < 30 for f in failed)
    # Both went on to the next run together, and agree on its weights.
    weights = [load_file(tmp_path / f"weights-{rank}.safetensors") for rank in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_each_process_gets_every_other_example_of_a_sorted_batch():
    examples = list(range(11))  # the short last batch of an epoch
    shares = [share_of(examples, rank, 2) for rank in (0, 1)]
    assert shares == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]
    assert sorted(shares[0] + shares[1]) == examples  # every example once, none repeated
    assert share_of([0], 1, 2) == []  # a process with nothing in a slot still runs a (zero-weighted) piece


def test_a_batch_the_processes_cannot_share_evenly_is_a_config_error():
    check_batch_size(32, 2)
    check_batch_size(31, 1)
    with pytest.raises(UsageError, match="finetune.batch_size: 31 .* 2 processes"):
        check_batch_size(31, 2)


def test_fsdp_settings_are_read_from_the_launch_or_refused_naming_the_key():
    assert fsdp_from_launch({}) is None
    launch = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"}
    assert fsdp_from_launch(launch) == FsdpSettings(reshard_after_forward=False)
    assert fsdp_from_launch({**launch, "FSDP_AUTO_WRAP_POLICY": "NO_WRAP"}).layer_classes is None
    refused = [({"FSDP_VERSION": "1"}, "fsdp_version"),
               ({"FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_offload_params"),
               ({"FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "fsdp_cpu_ram_efficient_loading"),
               ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, "fsdp_activation_checkpointing"),
               ({"FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"}, "fsdp_auto_wrap_policy")]
    for changed, key in refused:
        with pytest.raises(UsageError, match=key):
            fsdp_from_launch({**launch, **changed})


@pytest.mark.parametrize("launch", sorted(LAUNCHES))
def test_a_launch_stopped_after_a_checkpoint_resumes_to_the_one_process_weights(tmp_path, one_process, launch):
    out, checkpoint = tmp_path / "out", tmp_path / "checkpoint"
    stopped = _launch(launch, "tests.launched_training", str(out), "--checkpoint", str(checkpoint),
                      "--stop-at-step", "8")
    assert stopped.returncode != 0 and (checkpoint / "state-0000006").is_dir()
    _train(out, launch, "--checkpoint", str(checkpoint))
    outcome = _outcome(out)
    assert outcome["resumed_from"] == 6 and outcome["steps"] == 10
    assert outcome["tokens"] == _outcome(one_process["float64"])["tokens"]
    reference = load_file(one_process["float64"] / "weights-0.safetensors")
    for rank in (0, 1):
        weights = load_file(out / f"weights-{rank}.safetensors")
        for name, value in reference.items():
            assert torch.allclose(weights[name], value, rtol=0, atol=EQUIVALENCE_ATOL), (rank, name)


def test_a_study_under_fsdp2_gives_one_process_results_for_what_reads_the_whole_model(tmp_path):
    """The forgetting curve and budget (whole weights gathered at each check), the best dev weights,
    checkpoints, interpolation and representations after training (the whole model on every
    process), in a study launched with FSDP2, against the same study in one process."""
    import yaml

    from tests.conftest import tiny_study

    raw = tiny_study(**{"finetune.size": [60]})
    raw["finetune"].update(epochs=2, checkpoint_every=3, forgetting_budget={"max_drop": 50})
    raw["eval"].update(during_training={"every": 2, "directions": 1, "sentences": 3}, interpolation=[0.5],
                       representations=True, representation_sentences=6)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    for name, launch in (("one", None), ("fsdp", "fsdp2")):
        done = _launch(launch, "mtforget.cli", "run", str(study), "--out", str(tmp_path / name), "--no-progress")
        assert done.returncode == 0, done.stderr[-3000:]

    def info(name: str) -> dict:
        (path,) = (tmp_path / name / "trials").glob("*/result.json")
        return json.loads(path.read_text())["info"]

    one, two = info("one"), info("fsdp")
    # Each process logs to a file of its own.
    trial_dir = next((tmp_path / "fsdp" / "trials").glob("*/result.json")).parent
    assert (trial_dir / "trial.log").is_file() and (trial_dir / "trial.rank1.log").is_file()
    assert two["train"]["sharding"] == "fsdp2" and two["train"]["steps"] == one["train"]["steps"] == 8
    assert two["train"]["best_dev_loss"] == pytest.approx(one["train"]["best_dev_loss"], rel=1e-5)
    assert [p["step"] for p in two["forgetting_curve"]] == [p["step"] for p in one["forgetting_curve"]]
    for a, b in zip(one["forgetting_curve"], two["forgetting_curve"]):
        assert {k: pytest.approx(v, abs=1e-6) for k, v in a.items() if k != "tokens"} == \
            {k: v for k, v in b.items() if k != "tokens"}
    assert two["mitigations"]["interpolation"] == one["mitigations"]["interpolation"]
    assert two["representations"] == one["representations"]


def test_a_batch_the_launch_cannot_share_evenly_stops_it_before_any_trial_with_exit_2(tmp_path):
    import yaml

    from tests.conftest import tiny_study

    raw = tiny_study()
    raw["finetune"]["batch_size"] = 15
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    done = _launch("ddp", "mtforget.cli", "run", str(study), "--out", str(tmp_path / "out"), "--no-progress")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: finetune.batch_size: 15 examples per micro-batch cannot be shared evenly by 2 "
                      "processes; use a multiple of 2"]
    assert not (tmp_path / "out" / "trials").exists()
