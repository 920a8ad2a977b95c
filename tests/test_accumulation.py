"""Training at real size: gradient accumulation, the token budget per side, and the precision a
trial records."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mtforget.bases.specs import TinySpec
from mtforget.bases.tiny_seq2seq import build_model
from mtforget.errors import UsageError
from mtforget.mitigations.alignment import AlignmentCallback
from mtforget.models.hidden import resolve_layer
from mtforget.models.instruction import InstructionControl
from mtforget.models.language import LanguageTokens
from mtforget.models.loading import make_control
from mtforget.study.config import parse_study
from mtforget.study.runner import run_study
from mtforget.train.alignment import AlignmentObjective, sample_alignment_pairs
from mtforget.train.loop import TrainSettings, _step_micro_batches, train, training_precision
from tests.conftest import EQUIVALENCE_ATOL, Kill, OnLoss, tiny_study, tiny_world

SPEC = TinySpec(d_model=32, layers=2, heads=2, ffn_dim=64, vocab_size=300, steps=1, batch_size=8, lr=1e-3)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world():
    corpus, languages, tokenizer, examples = tiny_world(n_languages=3, segments=200, n_examples=120)
    return corpus, languages, tokenizer, examples


# Float64 by default: see EQUIVALENCE_ATOL.
def _model(tokenizer, dtype=torch.float64):
    torch.manual_seed(0)
    return build_model(SPEC, tokenizer).to(dtype)


def _trained(tokenizer, examples, auxiliary=None, **settings):
    model = _model(tokenizer)
    widths = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape),
                                    with_kwargs=True)
    outcome = train(model, LanguageTokens(tokenizer), examples, TrainSettings(lr=3e-3, seed=0, **settings),
                    progress=False, callbacks=[AlignmentCallback(auxiliary)] if auxiliary else [])
    return model.state_dict(), outcome, widths


def _assert_same_weights(a: dict, b: dict) -> None:
    for name, value in a.items():
        assert value.dtype == b[name].dtype and (value.dtype == torch.float64 or not value.is_floating_point())
        assert torch.allclose(value, b[name], rtol=0, atol=EQUIVALENCE_ATOL), name


@pytest.mark.parametrize("pieces", [1, 2])
def test_accumulated_micro_batches_train_as_one_large_batch(world, pieces):
    _, _, tokenizer, examples = world
    one, a, whole = _trained(tokenizer, examples, batch_size=32, max_steps=4, micro_batches=pieces)
    accumulated, b, forwards = _trained(tokenizer, examples, batch_size=8, grad_accumulation=4, max_steps=4,
                                        micro_batches=pieces)
    # The same examples per step, seen 8 at a time (or 4 at a time in two pieces) ...
    assert len(whole) == 4 * pieces and len(forwards) == 16 * pieces
    assert max(shape[0] for shape in forwards) == 8 // pieces
    assert a.steps == b.steps == 4 and a.tokens == b.tokens
    # ... give the gradient of the whole batch: the same loss and the same weights.
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-6)  # logged in float32
    _assert_same_weights(one, accumulated)


def test_epochs_count_optimizer_steps_of_the_effective_batch(world):
    _, _, tokenizer, examples = world
    _, plain, _ = _trained(tokenizer, examples, batch_size=8, epochs=1)
    _, accumulated, _ = _trained(tokenizer, examples, batch_size=8, grad_accumulation=3, epochs=1)
    assert plain.steps == 15 and accumulated.steps == 5  # 120 examples: 15 × 8, 5 × 24
    assert plain.tokens == accumulated.tokens  # every example once either way


def test_a_short_last_batch_is_cut_into_smaller_micro_batches(world):
    _, _, tokenizer, examples = world
    micro = _step_micro_batches(LanguageTokens(tokenizer), 4, 1, 1, examples[:10])
    assert [len(pieces) for pieces in micro] == [1, 1, 1, 1]
    assert [pieces[0]["input_ids"].shape[0] for pieces in micro] == [3, 3, 3, 1]
    (pieces,) = _step_micro_batches(LanguageTokens(tokenizer), 1, 2, 1, examples[:10])
    assert [piece["input_ids"].shape[0] for piece in pieces] == [5, 5]  # no accumulation: the pieces as before


@pytest.mark.parametrize("schedule", ["alternate", "weighted"])
def test_accumulation_leaves_the_alignment_steps_whole(world, schedule):
    corpus, languages, tokenizer, examples = world
    pairs = sample_alignment_pairs(corpus.segments, languages, "en", 32, seed=0)
    layer = resolve_layer(_model(tokenizer), "middle")

    def objective():
        # Alignment batches are not accumulated: InfoNCE's negatives span the whole batch.
        return AlignmentObjective(pairs, tokenizer, True, layer, schedule=schedule, batch_size=16)

    one, a, _ = _trained(tokenizer, examples, objective(), batch_size=16, max_steps=3, log_every=1)
    accumulated, b, _ = _trained(tokenizer, examples, objective(), batch_size=8, grad_accumulation=2, max_steps=3,
                                 log_every=1)
    assert a.steps == b.steps == (6 if schedule == "alternate" else 3)
    assert [h.keys() for h in a.history] == [h.keys() for h in b.history]
    assert b.extra_losses["align_loss"] == pytest.approx(a.extra_losses["align_loss"], rel=1e-6)
    _assert_same_weights(one, accumulated)


def test_resumed_accumulation_equals_uninterrupted(world, tmp_path):
    _, _, tokenizer, examples = world
    settings = TrainSettings(lr=3e-3, batch_size=8, grad_accumulation=2, max_steps=8, checkpoint_every=3, seed=0)
    # Float32 and bit-identical: a resumed run does the very same operations in the same order on
    # the same kernels and thread count as the uninterrupted one, so it must not differ at all.
    reference = _model(tokenizer, torch.float32)
    train(reference, LanguageTokens(tokenizer), examples, settings, progress=False)

    def kill_at_5(step, loss):
        if step == 5:
            raise Kill()
        return loss

    with pytest.raises(Kill):
        train(_model(tokenizer, torch.float32), LanguageTokens(tokenizer), examples, settings, progress=False,
              callbacks=[OnLoss(kill_at_5)], checkpoint_dir=tmp_path)
    resumed = _model(tokenizer, torch.float32)
    outcome = train(resumed, LanguageTokens(tokenizer), examples, settings, progress=False, checkpoint_dir=tmp_path)
    assert outcome.resumed_from == 3 and outcome.steps == 8
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_non_finite_loss_in_an_earlier_micro_batch_is_caught(world):
    from mtforget.errors import TrialDiverged

    _, _, tokenizer, examples = world
    model = _model(tokenizer)
    calls = []

    def poison(module, args, kwargs, output):
        calls.append(1)
        if len(calls) == 5:  # step 3, the first of its two micro-batches
            output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(poison, with_kwargs=True)
    with pytest.raises(TrialDiverged, match="at step 3"):
        train(model, LanguageTokens(tokenizer), examples,
              TrainSettings(lr=1e-3, batch_size=8, grad_accumulation=2, max_steps=4), progress=False)


def test_two_process_accumulation_matches_two_process_large_batches(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the project"
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import torch
        from accelerate import PartialState
        from mtforget.bases.specs import TinySpec
        from mtforget.bases.tiny_seq2seq import build_model
        from mtforget.models.language import LanguageTokens
        from mtforget.train.loop import TrainSettings, train
        from tests.conftest import tiny_world

        state = PartialState(cpu=True)  # torchrun's processes form a gloo group on a machine without CUDA
        assert state.num_processes == 2 and state.distributed_type.name == "MULTI_CPU"
        _, _, tokenizer, examples = tiny_world(n_languages=3, segments=200, n_examples=64)
        for batch, accumulation in ((16, 1), (8, 2)):
            torch.manual_seed(0)
            model = build_model(TinySpec(**{SPEC.__dict__!r}), tokenizer).double()  # see EQUIVALENCE_ATOL
            settings = TrainSettings(lr=3e-3, batch_size=batch, grad_accumulation=accumulation, max_steps=3, seed=0)
            train(model, LanguageTokens(tokenizer), examples, settings, progress=False)
            torch.save(model.state_dict(), f"{{sys.argv[1]}}/b{{batch}}a{{accumulation}}.{{state.process_index}}.pt")
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # --multi_gpu selects the torchrun launcher; on a machine without CUDA the processes join over gloo.
    done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = {(run, rank): torch.load(tmp_path / f"{run}.{rank}.pt") for run in ("b16a1", "b8a2") for rank in (0, 1)}
    for run in ("b16a1", "b8a2"):
        _assert_same_weights(weights[run, 0], weights[run, 1])  # the processes step alike: gradients averaged
    _assert_same_weights(weights["b16a1", 0], weights["b8a2", 0])


def test_max_length_reaches_the_control_and_cuts_training_inputs(world):
    _, languages, tokenizer, examples = world
    model = _model(tokenizer)
    default, _ = make_control(model, tokenizer, languages)
    assert default.max_length == 128  # as before the setting existed
    control, _ = make_control(model, tokenizer, languages, max_length=8)
    assert control.max_length == 8
    long = [ex for ex in examples if len(tokenizer(ex.src)["input_ids"]) > 10][:8]
    assert long, "the world has sentences longer than 8 tokens"
    batch = control.batch(long)
    assert batch["input_ids"].shape[1] == 8 and batch["labels"].shape[1] <= 8
    assert default.batch(long)["input_ids"].shape[1] > 8

    widths = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    train(model, control, examples, TrainSettings(lr=1e-3, batch_size=16, max_steps=3), progress=False)
    assert widths and max(widths) == 8


def test_max_length_caps_each_side_of_a_decoder_prompt(world):
    _, languages, tokenizer, examples = world
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    model = Qwen2ForCausalLM(config)
    assert make_control(model, tokenizer, languages)[0].max_length == InstructionControl(tokenizer).max_length
    control, added = make_control(model, tokenizer, languages, {lang: lang for lang in languages}, max_length=12)
    assert isinstance(control, InstructionControl) and control.max_length == 24 and added == []
    for ex in examples[:20]:
        assert len(control.prompt(ex.src, ex.src_lang, ex.tgt_lang)) <= 12 and len(control.target(ex.tgt)) <= 12


def test_training_precision_names_what_trains():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    assert training_precision(model) == "fp32"
    assert training_precision(model, "bf16") == "bf16 autocast"
    model[0].requires_grad_(False)
    model[0].to(torch.bfloat16)
    assert training_precision(model) == "fp32 (frozen weights bf16)"
    model.to(torch.bfloat16)
    assert training_precision(model, "bf16") == "bf16"  # bf16 weights: autocast changes nothing


@pytest.mark.parametrize("key,value", [("grad_accumulation", 0), ("grad_accumulation", -2), ("max_length", 4),
                                       ("max_length", -1)])
def test_bad_values_are_rejected_naming_the_key(key, value):
    raw = tiny_study()
    raw["finetune"][key] = value
    with pytest.raises(UsageError, match=rf"^t: finetune\.{key}: Input should be greater than or equal to"):
        parse_study(raw, "t")
    raw = tiny_study(**{f"finetune.{key}": [2, value]})
    with pytest.raises(UsageError, match=rf"finetune\.{key}"):
        parse_study(raw, "t")


def test_a_trial_records_its_batch_length_and_precision(tmp_path, monkeypatch):
    import mtforget.study.trial as trial_module

    controls = []
    original = trial_module.make_control

    def recording(*args, **kwargs):
        control, added = original(*args, **kwargs)
        controls.append(control)
        return control, added

    monkeypatch.setattr(trial_module, "make_control", recording)
    raw = tiny_study(**{"finetune.size": [16]})
    raw["finetune"].update(batch_size=4, grad_accumulation=2, max_length=16)
    out = tmp_path / "s"
    assert run_study(parse_study(raw, "t"), out, progress=False) == 0
    info = json.loads(next((out / "trials").glob("*/result.json")).read_text())["info"]
    assert info["grad_accumulation"] == 2 and info["effective_batch_size"] == 8 and info["max_length"] == 16
    assert info["precision"] == info["train"]["precision"] == "fp32"
    assert info["train"]["steps"] == 2  # 16 examples, 8 per optimizer step, one epoch
    assert [c.max_length for c in controls] == [16]
