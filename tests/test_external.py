"""Forgetting where users already train: checkpoints and adapters made by a plain
``transformers.Trainer`` measured by ``mtforget run`` (``finetune.checkpoints``), and the
``ForgettingCallback`` inside the Trainer's own run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import M2M100Config, M2M100ForConditionalGeneration, Trainer, TrainingArguments

from mtforget.bases.prebuilt import PREBUILT_DIR
from mtforget.cli import main
from mtforget.data.categories import BY_FINETUNING
from mtforget.data.splits import sample_directions
from mtforget.integrations.transformers import ForgettingCallback
from mtforget.models.loading import load_model, make_control
from mtforget.study.config import parse_study
from mtforget.study.grid import expand
from mtforget.study.trial import TrialMemo, study_data

ROOT = Path(__file__).resolve().parents[1]
BASE = PREBUILT_DIR / "small"
DIRECTIONS = ["en-xa", "xa-en", "en-xb"]  # seen: en, xa, xb; unseen: xc, xd — all five categories


def _study(**finetune) -> dict:
    """The shipped small base on the world it was pre-trained on (its test split unseen), five languages."""
    return {
        "model": {"path": str(BASE)},
        "corpus": {"languages": ["en", "xa", "xb", "xc", "xd"], "test_size": 40},
        "finetune": {"directions": DIRECTIONS, **finetune},
        "eval": {"max_sentences": 8, "max_new_tokens": 16, "engine": "hf", "representations": False,
                 "bootstrap_resamples": 200, "paired_resamples": 200, "base_gate": {"min_sentences": 8},
                 "during_training": {"directions": 1, "sentences": 4}},
        "resources": {"cpus": 1},
    }


def _trainer(model, control, examples, out, callbacks=(), tokenizer=None, **args) -> Trainer:
    settings = {"max_steps": 6, "per_device_train_batch_size": 16, "learning_rate": 3e-3, "save_strategy": "no",
                "logging_steps": 1, "report_to": "none", "use_cpu": True, "lr_scheduler_type": "constant",
                "seed": 0, "disable_tqdm": True, **args}
    return Trainer(model=model, args=TrainingArguments(output_dir=str(out), **settings), train_dataset=examples,
                   data_collator=control.batch, processing_class=tokenizer, callbacks=list(callbacks))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """A full fine-tuning run with the callback and two saved checkpoints (no tokenizer files), and
    a LoRA run saved as an adapter (with the tokenizer), both by a plain Trainer."""
    tmp = tmp_path_factory.mktemp("external")
    (tmp / "study.yaml").write_text(yaml.safe_dump(_study()))
    data = study_data(parse_study(_study(), "study"), TrialMemo())
    examples = sample_directions(data.splits.train, data.directions, 96, seed=0)

    model, tokenizer = load_model(BASE)
    control, _ = make_control(model, tokenizer, data.languages, {}, 64)
    callback = ForgettingCallback(tmp / "study.yaml", every=2)
    full = _trainer(model, control, examples, tmp / "run", [callback], save_strategy="steps", save_steps=3)
    full.train()

    model, tokenizer = load_model(BASE)
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "fc1", "fc2"],
                                            task_type="SEQ_2_SEQ_LM"))
    trainer = _trainer(lora, control, examples, tmp / "lora", [ForgettingCallback(tmp / "study.yaml", every=3)],
                       tokenizer=tokenizer, learning_rate=1e-2)
    trainer.train()
    trainer.save_model(str(tmp / "adapter"))
    return {"dir": tmp, "history": full.state.log_history, "lora_history": trainer.state.log_history}


def _run(tmp, name, raw) -> tuple[int, str]:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return main(["run", str(path), "--out", str(tmp / name), "--no-progress"])


def test_the_callback_logs_its_curve_through_the_trainer_and_writes_forgetting_curve_json(runs, capsys):
    logged = [h for h in runs["history"] if any(k.startswith("forgetting/") for k in h)]
    assert [h["step"] for h in logged] == [0, 2, 4, 6]
    assert all(f"forgetting/{c}/chrf" in h for h in logged for c in BY_FINETUNING)
    assert all("epoch" in h for h in logged)  # through Trainer.log, which adds the epoch
    assert all(logged[0][f"forgetting/{c}/chrf"] == 0 for c in BY_FINETUNING)
    assert any(h[k] != 0 for h in logged[1:] for k in h if k.endswith("/chrf"))  # training moved it

    saved = json.loads((runs["dir"] / "run" / "forgetting_curve.json").read_text())
    curve = saved["forgetting_curve"]
    assert [p["step"] for p in curve] == [0, 2, 4, 6]
    for point, entry in zip(curve, logged):  # the file holds what the Trainer logged
        assert set(point) == {"step", "tokens", *BY_FINETUNING}
        assert all(round(point[c], 4) == entry[f"forgetting/{c}/chrf"] for c in BY_FINETUNING)
    assert saved["forgetting_proxy"]["points"] and saved["stopped_at"] is None

    # The same inside a LoRA run: the model being trained is the peft model, translated as it is.
    assert [h["step"] for h in runs["lora_history"] if "forgetting/supervised/chrf" in h] == [0, 3, 6]
    assert json.loads((runs["dir"] / "lora" / "forgetting_curve.json").read_text())["forgetting_curve"][-1]["step"] == 6

    assert main(["report", str(runs["dir"] / "run")]) == 0
    assert "| 6 |" in (runs["dir"] / "run" / "forgetting_curve.md").read_text()
    assert (runs["dir"] / "run" / "forgetting_curve.png").stat().st_size > 0


def test_stop_at_stops_the_trainer_at_the_first_check_over_the_budget(runs, tmp_path):
    data = study_data(parse_study(_study(), "study"), TrialMemo())
    model, tokenizer = load_model(BASE)
    control, _ = make_control(model, tokenizer, data.languages, {}, 64)
    callback = ForgettingCallback(runs["dir"] / "study.yaml", every=1, stop_at=1e-6)
    examples = sample_directions(data.splits.train, data.directions, 96, seed=0)
    trainer = _trainer(model, control, examples, tmp_path / "stop", [callback], learning_rate=2e-2)
    trainer.train()
    saved = json.loads((tmp_path / "stop" / "forgetting_curve.json").read_text())
    assert callback.stopped_at is not None and trainer.state.global_step == callback.stopped_at < 6
    assert saved["stopped_at"] == callback.stopped_at and "more than the budget" in saved["reason"]
    assert saved["watched"] == ["unseen_source", "unseen_target", "unseen_both"]


def test_checkpoints_and_an_adapter_made_elsewhere_are_measured_without_training(runs, monkeypatch):
    import mtforget.study.trial as trial_module

    monkeypatch.setattr(trial_module, "train", lambda *a, **k: pytest.fail("a checkpoint trial must not train"))
    tmp = runs["dir"]
    raw = _study(checkpoints=["run/checkpoint-*", "adapter"])
    assert _run(tmp, "measured", raw) == 0
    out = tmp / "measured"
    with (out / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "chrf"]
    by_trial: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_trial[r["trial_id"]][r["category"]].append(float(r["delta"]))
    assert len(by_trial) == 3
    for categories in by_trial.values():
        assert set(categories) == set(BY_FINETUNING)
        assert any(d != 0 for d in categories["supervised"])

    results = {t: json.loads((out / "trials" / t / "result.json").read_text())["info"] for t in by_trial}
    facts = sorted((r["checkpoint"]["kind"], r["checkpoint"]["step"], r["checkpoint"]["tokenizer"], r["method"])
                   for r in results.values())
    assert facts == [("adapter", None, "own", "lora"), ("full", 3, "base", "full"), ("full", 6, "base", "full")]
    assert all(r["train"]["seconds"] == 0 for r in results.values())
    summary = (out / "report" / "summary.md").read_text()
    assert "run/checkpoint-*" in summary and "ckpt=adapter" in summary  # the run's curve, and the adapter

    stamps = {t: (out / "trials" / t / "result.json").stat().st_mtime_ns for t in by_trial}
    assert _run(tmp, "measured", raw) == 0  # resumes: nothing left to do
    assert stamps == {t: (out / "trials" / t / "result.json").stat().st_mtime_ns for t in by_trial}


def test_a_checkpoint_trial_is_identified_by_its_contents_and_globs_expand_in_step_order(runs, tmp_path):
    for step in (9, 10):
        shutil.copytree(runs["dir"] / "run" / "checkpoint-3", tmp_path / "run" / f"checkpoint-{step}")
        state = json.loads((tmp_path / "run" / f"checkpoint-{step}" / "trainer_state.json").read_text())
        (tmp_path / "run" / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({**state, "global_step": step}))
    study = parse_study(_study(checkpoints=[str(tmp_path / "run" / "checkpoint-*")]), "study")
    assert [t.checkpoint.step for t in expand(study)] == [9, 10]
    original = expand(parse_study(_study(checkpoints=[str(runs["dir"] / "run" / "checkpoint-3")]), "study"))[0]
    shutil.copytree(runs["dir"] / "run" / "checkpoint-3", tmp_path / "copy" / "run" / "checkpoint-3")
    copy = tmp_path / "copy" / "run" / "checkpoint-3"
    assert expand(parse_study(_study(checkpoints=[str(copy)]), "study"))[0].id == original.id
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("\n}", ', "note": 1\n}'))
    assert expand(parse_study(_study(checkpoints=[str(copy)]), "study"))[0].id != original.id


def _other_vocabulary(folder):
    config = M2M100Config.from_pretrained(BASE)
    config.vocab_size += 8
    M2M100ForConditionalGeneration(config).save_pretrained(folder)


def _lm_adapter(folder):
    model, _ = load_model(PREBUILT_DIR / "lm")
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)


def _no_weights(folder):
    folder.mkdir()
    shutil.copy(BASE / "config.json", folder / "config.json")


@pytest.mark.parametrize("case, make, expected", [
    ("no_directions", None, "finetune.directions: required with finetune.checkpoints"),
    ("training_key", None, "finetune.lr: has no effect with finetune.checkpoints"),
    ("no_weights", _no_weights, "has no .safetensors weights"),
    ("architecture", lambda f: shutil.copytree(PREBUILT_DIR / "lm", f), "is a llama model, the base"),
    ("vocabulary", _other_vocabulary, "has a vocabulary of"),
    ("adapter_base", _lm_adapter, "was trained on"),
])
def test_bad_checkpoints_exit_2_naming_the_folder(runs, tmp_path, capsys, case, make, expected):
    folder = tmp_path / case
    if make:
        make(folder)
    raw = _study(checkpoints=[str(folder if make else runs["dir"] / "adapter")])
    if case == "no_directions":
        del raw["finetune"]["directions"]
    if case == "training_key":
        raw["finetune"]["lr"] = 1e-3
    assert _run(tmp_path, "bad", raw) == 2
    err = capsys.readouterr().err
    assert expected in err
    if make:
        assert str(folder) in err


def test_a_resumed_trainer_run_keeps_its_step_0_reference(runs, tmp_path, monkeypatch):
    shutil.copytree(runs["dir"] / "run", tmp_path / "run")
    before = json.loads((tmp_path / "run" / "forgetting_curve.json").read_text())
    data = study_data(parse_study(_study(), "study"), TrialMemo())
    # A cold cache: the Trainer loads checkpoint-3 before the callback starts, so the model it sees
    # is no longer the base; it must neither be measured as the base nor cached as it.
    cold = tmp_path / "cold-cache"
    monkeypatch.setenv("MTFORGET_CACHE", str(cold))
    model, tokenizer = load_model(BASE)
    control, _ = make_control(model, tokenizer, data.languages, {}, 64)
    examples = sample_directions(data.splits.train, data.directions, 96, seed=0)
    callback = ForgettingCallback(runs["dir"] / "study.yaml", every=2)
    trainer = _trainer(model, control, examples, tmp_path / "run", [callback])
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    after = json.loads((tmp_path / "run" / "forgetting_curve.json").read_text())
    assert [p["step"] for p in after["forgetting_curve"]] == [0, 2, 4, 6]
    assert after["forgetting_curve"][:2] == before["forgetting_curve"][:2]  # kept, not measured again
    reference = [h for h in after["history"] if "forgetting_reference" in h]
    assert reference == [h for h in before["history"] if "forgetting_reference" in h]
    logged = [h["step"] for h in trainer.state.log_history if "forgetting/supervised/chrf" in h]
    assert logged[-2:] == [4, 6]
    assert after["sample"] == before["sample"]
    assert not list(cold.glob("base_evals/*/eval.json"))  # nothing was cached as the base


def test_under_two_processes_the_main_one_samples_and_every_process_logs_and_stops_alike(runs, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the project"
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from accelerate import PartialState
        from tests.test_external import BASE, _study, _trainer
        from mtforget.data.splits import sample_directions
        from mtforget.integrations.transformers import ForgettingCallback
        from mtforget.models.loading import load_model, make_control
        from mtforget.study.config import parse_study
        from mtforget.study.trial import TrialMemo, study_data

        state = PartialState(cpu=True)
        assert state.num_processes == 2
        data = study_data(parse_study(_study(), "study"), TrialMemo())
        examples = sample_directions(data.splits.train, data.directions, 96, seed=0)
        out = {{}}
        for name, stop_at, lr in (("plain", None, 3e-3), ("budget", 1e-6, 2e-2)):
            model, tokenizer = load_model(BASE)
            control, _ = make_control(model, tokenizer, data.languages, {{}}, 64)
            callback = ForgettingCallback({str(runs["dir"] / "study.yaml")!r}, every=2, stop_at=stop_at)
            trainer = _trainer(model, control, examples, sys.argv[1] + "/" + name, [callback], max_steps=4,
                               per_device_train_batch_size=8, learning_rate=lr)
            trainer.train()
            out[name] = {{"logged": [h for h in trainer.state.log_history if "forgetting/supervised/chrf" in h],
                         "step": trainer.state.global_step, "sampled": callback.probe is not None}}
        with open(f"{{sys.argv[1]}}/rank{{state.process_index}}.json", "w") as f:
            json.dump(out, f)
        # An explicit teardown: gloo's default one at interpreter exit can abort a process
        state.wait_for_everyone()
        import torch.distributed
        torch.distributed.destroy_process_group()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=500, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    main_rank, other = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert main_rank["plain"]["sampled"] and not other["plain"]["sampled"]  # the main process alone translates
    assert [h["step"] for h in main_rank["plain"]["logged"]] == [0, 2, 4]
    for run in ("plain", "budget"):
        assert main_rank[run]["logged"] == other[run]["logged"]  # every process logs the main one's values
        assert main_rank[run]["step"] == other[run]["step"]  # and stops at the same step
    assert main_rank["budget"]["step"] < 4
    assert json.loads((tmp_path / "plain" / "forgetting_curve.json").read_text())["forgetting_curve"]


def test_trl_sft_trainer_on_a_chat_model_with_the_callback_and_its_checkpoint_measured(tmp_path, one_thread):
    """TRL's SFTTrainer (a Trainer) on the shipped instruction-tuned decoder-only base: the callback
    logs through it, and its checkpoint (with its tokenizer and chat template) is measured."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from mtforget.study.trial import _language_names

    chat = PREBUILT_DIR / "lm-instruct"
    raw = _study()
    raw["model"]["path"] = str(chat)
    raw["corpus"]["languages"] = ["en", "xa", "xb", "xc"]
    raw["finetune"]["directions"] = ["en-xa", "xa-en"]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    cfg = parse_study(raw, "study")
    data = study_data(cfg, TrialMemo())
    model, tokenizer = load_model(chat)
    control, _ = make_control(model, tokenizer, data.languages, _language_names(cfg.corpus), 64)
    rows = [{"prompt": [{"role": "system", "content": control.instruction(e.src_lang, e.tgt_lang)},
                        {"role": "user", "content": e.src}],
             "completion": [{"role": "assistant", "content": e.tgt}]}
            for e in sample_directions(data.splits.train, data.directions, 32, seed=0)]
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=4, per_device_train_batch_size=8,
                         learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="steps", save_steps=4,
                         lr_scheduler_type="constant", seed=0, disable_tqdm=True)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             callbacks=[ForgettingCallback(tmp_path / "study.yaml", every=4)])
    trainer.train()
    logged = [h for h in trainer.state.log_history if "forgetting/unseen_both/chrf" in h]
    assert [h["step"] for h in logged] == [0, 4]
    assert json.loads((tmp_path / "sft" / "forgetting_curve.json").read_text())["forgetting_curve"][-1]["step"] == 4

    raw["finetune"]["checkpoints"] = [str(tmp_path / "sft" / "checkpoint-*")]
    assert _run(tmp_path, "measured", raw) == 0
    (trial,) = (tmp_path / "measured" / "trials").iterdir()
    info = json.loads((trial / "result.json").read_text())["info"]
    assert info["checkpoint"]["step"] == 4 and info["checkpoint"]["tokenizer"] == "own"
    assert info["architecture"] == "decoder-only" and info["language_control"] == "chat template"
    deltas = [r["delta"] for r in json.loads((trial / "result.json").read_text())["rows"]
              if r["metric"] == "chrf" and r["category"] == "supervised"]
    assert deltas and any(d != 0 for d in deltas)


def test_checkpoint_trials_give_the_same_results_csv_on_two_processes_as_on_one(runs, tmp_path):
    """Nothing trains in a checkpoint trial, so a two-process launch, where each process translates
    a share of the batches, must give the one-process results.csv cell for cell."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the project"
    raw = _study(checkpoints=[str(runs["dir"] / "run" / "checkpoint-3"), str(runs["dir"] / "adapter")])
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    outs = {}
    for processes in (1, 2):
        outs[processes] = out = tmp_path / f"p{processes}"
        # A cache of its own for each run, so that each evaluates its base too (none reuses the other's).
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
               "MTFORGET_CACHE": str(tmp_path / f"c{processes}")}
        command = ["-m", "mtforget.cli", "run", str(study), "--out", str(out), "--no-progress"]
        if processes == 1:
            done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=500)
        else:
            done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                   "--mixed_precision", "no", "--dynamo_backend", "no", *command],
                                  env=env, capture_output=True, text=True, timeout=500, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]

    def table(out):
        with (out / "results.csv").open() as f:
            return sorted(tuple(r.values()) for r in csv.DictReader(f))

    assert table(outs[2]) == table(outs[1]) and len(table(outs[1])) > 0
    for processes, out in outs.items():
        infos = [json.loads(p.read_text())["info"] for p in (out / "trials").glob("*/result.json")]
        assert len(infos) == 2 and all(info["eval_processes"] == processes for info in infos)
