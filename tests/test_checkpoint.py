"""Checkpoints that survive a kill at any file-system step of a save, and checkpoints that cannot
be loaded (training starts again, it never fails for good)."""

import logging
import os
import shutil

import pytest
import torch
from accelerate import Accelerator

import mtforget.train.loop as loop
from mtforget.bases.specs import TinySpec
from mtforget.bases.tiny_seq2seq import build_model
from mtforget.models.language import LanguageTokens
from mtforget.train.checkpoint import POINTER, CheckpointUnusable
from mtforget.train.loop import TrainSettings, train
from tests.conftest import Kill, tiny_world

SPEC = TinySpec(d_model=32, layers=1, heads=2, ffn_dim=64, vocab_size=300, steps=1, batch_size=8, lr=1e-3)
# Saves at steps 2 and 4, dev checks (and best weights) at steps 3 and 6.
SETTINGS = TrainSettings(lr=3e-3, batch_size=8, max_steps=6, eval_every=3, checkpoint_every=2, seed=0)


@pytest.fixture(scope="module")
def setup(one_thread):
    _, _, tokenizer, examples = tiny_world(n_languages=3, segments=200, n_examples=60)
    reference = _model(tokenizer)
    outcome = train(reference, LanguageTokens(tokenizer), examples[16:], SETTINGS, dev=examples[:16], progress=False)
    return tokenizer, examples, reference.state_dict(), outcome


def _model(tokenizer):
    torch.manual_seed(0)
    return build_model(SPEC, tokenizer)


def _train(setup, directory):
    tokenizer, examples, _, _ = setup
    model = _model(tokenizer)  # fresh weights: everything must come from the checkpoint
    outcome = train(model, LanguageTokens(tokenizer), examples[16:], SETTINGS, dev=examples[:16], progress=False,
                    checkpoint_dir=directory)
    return model, outcome


def _assert_equal_to_reference(setup, model, outcome):
    _, _, weights, reference = setup
    for (name, a), b in zip(weights.items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    # What a resume reproduces bit for bit: the weights, the steps and every dev check (the mean
    # training loss of the last log interval counts only the steps run since the resume).
    assert (outcome.steps, outcome.best_step, outcome.best_dev_loss) == (
        reference.steps, reference.best_step, reference.best_dev_loss)
    assert [h for h in outcome.history if "dev_loss" in h] == [h for h in reference.history if "dev_loss" in h]


# Every call that creates, replaces, flushes or deletes something during a save.
_STEPS = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "remove"), (os, "rmdir"), (os, "makedirs"),
          (os, "mkdir"), (os, "fsync"), (shutil, "rmtree"), (Accelerator, "save_state")]


class _Faults:
    """Counts the file-system calls made during the ``save``-th checkpoint save and raises
    :class:`Kill` before the ``kill_at``-th of them (None: never)."""

    def __init__(self, monkeypatch, save: int, kill_at: int | None) -> None:
        self.save, self.kill_at, self.calls, self.saves, self.active = save, kill_at, [], 0, False
        for owner, name in _STEPS:
            monkeypatch.setattr(owner, name, self._wrap(name, getattr(owner, name)))
        real_save = loop.save_checkpoint

        def save_checkpoint(*args, **kwargs):
            self.saves += 1
            self.active = self.saves == self.save
            try:
                return real_save(*args, **kwargs)
            finally:
                self.active = False

        monkeypatch.setattr(loop, "save_checkpoint", save_checkpoint)

    def _wrap(self, name, real):
        def step(*args, **kwargs):
            if self.active:
                if len(self.calls) == self.kill_at:
                    raise Kill(f"killed before {name} (step {self.kill_at} of the save)")
                self.calls.append(name)
            return real(*args, **kwargs)

        return step


def test_a_kill_before_any_file_system_step_of_a_save_resumes_to_the_uninterrupted_result(setup, tmp_path,
                                                                                        monkeypatch):
    with monkeypatch.context() as patch:
        counting = _Faults(patch, save=2, kill_at=None)
        _train(setup, tmp_path / "count")
    steps = counting.calls
    assert "replace" in steps and "save_state" in steps and len(steps) >= 5, steps
    for k, name in enumerate(steps):
        directory = tmp_path / f"kill{k}"
        with monkeypatch.context() as patch, pytest.raises(Kill):
            _Faults(patch, save=2, kill_at=k)
            _train(setup, directory)
        model, outcome = _train(setup, directory)
        _assert_equal_to_reference(setup, model, outcome)
        # The save at step 4 took effect only once its pointer was swapped in.
        assert outcome.resumed_from in (2, 4), (k, name)
        # Nothing is left of the interrupted save: only what the last pointer names (and the best
        # weights of the last dev check, found after it).
        names = {p.name for p in directory.iterdir()}
        assert names == {POINTER, "state-0000004", "best-0000003.safetensors", "best-0000006.safetensors"}, (
            k, name, names)


def test_an_unloadable_checkpoint_is_a_warning_and_training_starts_again(setup, tmp_path, monkeypatch, caplog):
    with monkeypatch.context() as patch, pytest.raises(Kill):
        _Faults(patch, save=2, kill_at=0)  # killed at the start of the second save: step 2 is current
        _train(setup, tmp_path)
    (tmp_path / "state-0000002" / "model.safetensors").write_bytes(b"not safetensors")
    with caplog.at_level(logging.WARNING, logger="mtforget"), pytest.raises(CheckpointUnusable):
        _train(setup, tmp_path)  # what it loaded into may be half-changed: no copy is kept to undo it
    assert "the checkpoint cannot be loaded" in caplog.text and "starts again from the beginning" in caplog.text
    assert not list(tmp_path.iterdir())  # cleared: the next call starts from the beginning
    model, outcome = _train(setup, tmp_path)  # on the weights training began with, as a trial reloads its base
    assert outcome.resumed_from is None
    _assert_equal_to_reference(setup, model, outcome)


def test_a_trial_whose_checkpoint_cannot_be_loaded_starts_again_from_its_base(tmp_path, monkeypatch):
    import csv

    from mtforget.study.config import parse_study
    from mtforget.study.runner import run_study
    from tests.conftest import tiny_study, watch_trials

    raw = tiny_study(**{"finetune.size": [48]})
    raw["finetune"].update(checkpoint_every=2, eval_every=2, patience=0)
    study = parse_study(raw, "t")

    def table(out):
        with (out / "results.csv").open() as f:
            return sorted((r["src"], r["tgt"], r["metric"], r["finetuned"]) for r in csv.DictReader(f))

    assert run_study(study, tmp_path / "reference", progress=False) == 0

    def kill(trial_id, step, loss):
        if step == 3:
            raise Kill()
        return loss

    out = tmp_path / "damaged"
    with monkeypatch.context() as patch, pytest.raises(Kill):
        watch_trials(patch, kill)
        run_study(study, out, progress=False)
    (state,) = out.glob("trials/*/checkpoint/state-0000002")
    (state / "model.safetensors").write_bytes(b"not safetensors")
    assert run_study(study, out, progress=False) == 0
    assert table(out) == table(tmp_path / "reference")


def test_a_damaged_pointer_is_a_warning_and_training_starts_again(setup, tmp_path, monkeypatch, caplog):
    with monkeypatch.context() as patch, pytest.raises(Kill):
        _Faults(patch, save=2, kill_at=0)
        _train(setup, tmp_path)
    (tmp_path / POINTER).write_text('{"format": 1, "state": "state-00')
    with caplog.at_level(logging.WARNING, logger="mtforget"):
        model, outcome = _train(setup, tmp_path)
    assert f"{POINTER}: unreadable" in caplog.text
    assert outcome.resumed_from is None
    _assert_equal_to_reference(setup, model, outcome)


def test_a_checkpoint_of_an_earlier_version_is_cleared_not_trusted(setup, tmp_path):
    (tmp_path / "state").mkdir(parents=True)
    (tmp_path / "progress.json").write_text("{}")
    (tmp_path / "best.safetensors").write_bytes(b"")
    model, outcome = _train(setup, tmp_path)
    _assert_equal_to_reference(setup, model, outcome)
    assert not {"state", "progress.json", "best.safetensors"} & {p.name for p in tmp_path.iterdir()}


def test_best_weights_go_to_disk_only_for_a_resumable_run_and_hold_only_what_trains(setup, tmp_path):
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    tokenizer, examples, _, _ = setup
    plain = tmp_path / "plain"
    train(_model(tokenizer), LanguageTokens(tokenizer), examples[16:], replace(SETTINGS, checkpoint_every=0),
          dev=examples[:16], progress=False, checkpoint_dir=plain)
    assert not list(plain.glob("best-*.safetensors"))  # nothing to resume, so no copy on disk

    lora = tmp_path / "lora"
    model = get_peft_model(_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    outcome = train(model, LanguageTokens(tokenizer), examples[16:], SETTINGS, dev=examples[:16], progress=False,
                    checkpoint_dir=lora)
    best = sorted(lora.glob("best-*.safetensors"))[-1]
    kept = load_file(best)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert kept and set(kept) == trainable and all("lora_" in n for n in kept)  # the adapters, not the model
    assert outcome.best_step is not None
