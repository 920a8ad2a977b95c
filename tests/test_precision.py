"""The precision of fine-tuning: float32 master weights by default whatever the load dtype, pure
bfloat16 only when asked (and recorded), Kahan-summed AdamW, and the weights-changed count."""

import math

import pytest
import torch

from mtforget.bases.specs import TinySpec
from mtforget.bases.tiny_seq2seq import build_model
from mtforget.errors import UsageError
from mtforget.models.language import LanguageTokens
from mtforget.train.loop import TrainSettings, train
from mtforget.models.dtypes import resolve_dtype
from mtforget.train.precision import WeightChanges, plan_precision
from tests.conftest import tiny_world

SPEC = TinySpec(d_model=32, layers=1, heads=2, ffn_dim=64, vocab_size=300, steps=1, batch_size=8, lr=1e-3)


@pytest.fixture(scope="module")
def setup():
    _, _, tokenizer, examples = tiny_world(n_languages=3, segments=200, n_examples=120)
    return tokenizer, examples


def _model(tokenizer, dtype=torch.float32):
    torch.manual_seed(0)
    # Weights of a trained model's size (the tiny model starts near zero, where bf16 steps are fine).
    model = build_model(SPEC, tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05 + 0.02 * torch.sign(torch.randn_like(p)))
    return model.to(dtype)


def _run(setup, dtype, precision, lr=1e-5, steps=10):
    tokenizer, examples = setup
    model = _model(tokenizer, dtype)
    settings = TrainSettings(lr=lr, batch_size=16, max_steps=steps, seed=0, log_every=5, warmup_ratio=0.0,
                             schedule="constant", precision=precision)
    outcome = train(model, LanguageTokens(tokenizer), examples, settings, progress=False)
    return model, outcome


def test_default_keeps_the_updates_of_bf16_loaded_weights_and_pure_bf16_is_recorded(setup):
    model, default = _run(setup, torch.bfloat16, "auto")
    # Float32 master weights: the updates of lr 1e-5 are kept (as in float32), and the model is
    # handed back in the dtype it was loaded in, for evaluation with the base's arithmetic.
    assert default.precision_mode == "fp32" and default.precision == "bf16 autocast"
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    _, fp32 = _run(setup, torch.float32, "auto")
    assert fp32.precision_mode == "fp32" and fp32.precision == "fp32"
    # Entries without a gradient (embeddings of tokens no batch held) stay as they were in any
    # precision: the default changes at least 99% of what float32 training changes.
    assert fp32.weights_changed > 0.5
    assert default.weights_changed >= 0.99 * fp32.weights_changed

    _, pure = _run(setup, torch.bfloat16, "bf16")
    assert pure.precision_mode == "bf16" and pure.precision == "bf16"
    # Pure bfloat16 rounds most updates away: what the default exists to prevent.
    assert pure.weights_changed < 0.5 * fp32.weights_changed
    assert pure.weights_changed == pure.weights_changed_evaluated


def test_half_precision_modes_need_bf16_weights_and_say_which_key():
    model = torch.nn.Linear(4, 4)
    with pytest.raises(UsageError, match=r"^finetune\.precision: bf16 trains .* set model\.dtype: bfloat16"):
        plan_precision(model, "bf16")
    assert plan_precision(model.to(torch.float16)).autocast == torch.float16  # master weights, fp16 autocast
    assert plan_precision(model.to(torch.bfloat16), "fp32").weights == torch.float32


def test_lora_keeps_frozen_bf16_weights_and_float32_adapters(setup):
    from mtforget.models.lora import apply_lora

    tokenizer, examples = setup
    model = apply_lora(_model(tokenizer, torch.bfloat16), 4, 8, 0.0, ["q_proj", "v_proj"])
    settings = TrainSettings(lr=1e-3, batch_size=16, max_steps=3, seed=0, warmup_ratio=0.0, precision="auto")
    outcome = train(model, LanguageTokens(tokenizer), examples, settings, progress=False)
    assert outcome.precision == "bf16 autocast (frozen weights bf16)" and outcome.precision_mode == "fp32"
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    assert outcome.weights_changed > 0.4  # lora_B starts at zero and moves; lora_A moves


def test_weight_changes_sample_large_tensors_and_count_small_ones_whole():
    small, large = torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(300_000))
    module = torch.nn.ParameterList([small, large])
    changes = WeightChanges(module)
    with torch.no_grad():
        small[:5] = 1
        large[::2] = 1
    assert changes.fraction(module) == pytest.approx((5 + 150_000) / 300_010, abs=0.01)


def test_auto_dtype_is_float32_without_a_gpu():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16


def test_kahan_adamw_trains_to_the_loss_of_float32(setup):
    pytest.importorskip("optimi")
    _, fp32 = _run(setup, torch.float32, "auto", lr=3e-3, steps=12)
    _, kahan = _run(setup, torch.bfloat16, "bf16-kahan", lr=3e-3, steps=12)
    _, pure = _run(setup, torch.bfloat16, "bf16", lr=3e-3, steps=12)
    assert kahan.precision_mode == "bf16-kahan" and kahan.precision == "bf16"
    first, last = fp32.history[0]["train_loss"], fp32.history[-1]["train_loss"]
    assert last < first  # it learns
    # Stated tolerance: within 2% of float32's final training loss (bf16 rounds the forward pass
    # and the weights as stored; the Kahan buffer keeps what each update's rounding dropped).
    assert kahan.train_loss == pytest.approx(fp32.train_loss, rel=0.02)
    assert kahan.weights_changed > pure.weights_changed


def test_kahan_bf16_weights_follow_float32_master_weights_where_pure_bf16_stalls(setup):
    pytest.importorskip("optimi")
    tokenizer, _ = setup

    def flat(model):
        return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])

    start = flat(_model(tokenizer, torch.bfloat16))
    master = flat(_run(setup, torch.bfloat16, "auto")[0])  # float32 master weights, cast back to bf16
    moved = master != start
    assert moved.float().mean() > 0.1
    kahan = flat(_run(setup, torch.bfloat16, "bf16-kahan")[0])
    pure = flat(_run(setup, torch.bfloat16, "bf16")[0])
    # At lr 1e-5, of the entries that master weights moved, Kahan summation lands on the same bf16
    # value nearly everywhere; in-place bf16 updates leave most of them where they started.
    assert (kahan[moved] == master[moved]).float().mean() > 0.9
    assert (pure[moved] == master[moved]).float().mean() < 0.5


def test_a_study_on_bf16_weights_records_dtype_precision_and_weights_changed(tmp_path):
    import json

    from mtforget.cli import main
    from mtforget.study.config import parse_study
    from mtforget.study.grid import expand
    from tests.conftest import tiny_study
    import yaml

    raw = tiny_study(**{"finetune.precision": ["auto", "bf16"]})
    raw["model"]["dtype"] = "bfloat16"
    raw["finetune"].update(lr=1e-5, size=16, eval_every=100, patience=0)
    raw["eval"]["representations"] = False
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    infos = {json.loads(p.read_text())["info"]["precision"]: json.loads(p.read_text())["info"]
             for p in (tmp_path / "s" / "trials").glob("*/result.json")}
    assert set(infos) == {"fp32", "bf16"}
    assert all(info["dtype"] == "bfloat16" and info["eval_processes"] == 1 for info in infos.values())
    assert infos["fp32"]["train"]["precision"] == "bf16 autocast" and infos["bf16"]["train"]["precision"] == "bf16"
    assert infos["fp32"]["train"]["weights_changed"] > 2 * infos["bf16"]["train"]["weights_changed"]

    # auto leaves a trial's id as it was before the keys existed; an explicit value is another trial.
    plain = tiny_study(**{"finetune.size": [16]})
    ids = [t.id for t in expand(parse_study(plain, "t"))]
    assert [t.id for t in expand(parse_study({**plain, "model": {**plain["model"], "dtype": "auto"}}, "t"))] == ids
    assert [t.id for t in expand(parse_study({**plain, "model": {**plain["model"], "dtype": "float32"}}, "t"))] != ids


def test_a_bad_dtype_or_precision_names_the_key(tmp_path):
    from mtforget.study.config import parse_study
    from tests.conftest import tiny_study

    raw = tiny_study()
    raw["finetune"]["precision"] = "fp8"
    with pytest.raises(UsageError, match=r"finetune\.precision"):
        parse_study(raw, "t")
    raw = tiny_study()
    raw["model"]["dtype"] = "half"
    with pytest.raises(UsageError, match=r"model\.dtype"):
        parse_study(raw, "t")


def test_fp16_loaded_weights_train_as_float32_master_weights_with_a_loss_scaler(setup):
    model, outcome = _run(setup, torch.float16, "auto", lr=1e-5)
    assert outcome.precision_mode == "fp32" and outcome.precision == "fp16 autocast"
    assert all(p.dtype == torch.float16 for p in model.parameters())
    assert math.isfinite(outcome.train_loss) and outcome.weights_changed > 0.5


def test_a_launch_under_mixed_precision_leaves_no_autocast_on_the_model_it_trained(monkeypatch):
    """``accelerate launch --mixed_precision bf16`` patches the trained model's forward with
    autocast; evaluated with that patch, the fine-tuned model would run in another arithmetic than
    its base. Training hands the model back without it."""
    from mtforget.bases.specs import TinySpec
    from mtforget.bases.tiny_seq2seq import build_model
    from mtforget.models.language import LanguageTokens
    from mtforget.train.loop import TrainSettings, train
    from tests.conftest import tiny_world

    _, _, tokenizer, examples = tiny_world(n_languages=3, segments=200, n_examples=40)
    torch.manual_seed(0)
    model = build_model(TinySpec(d_model=32, layers=2, heads=2, ffn_dim=64, vocab_size=300, steps=1, batch_size=8,
                                 lr=1e-3), tokenizer)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    outcome = train(model, LanguageTokens(tokenizer), examples, TrainSettings(lr=1e-3, batch_size=8, max_steps=2),
                    progress=False)
    assert outcome.precision == "bf16 autocast"  # it trained under the launch's autocast ...
    assert not hasattr(model, "_original_forward") and not hasattr(model.forward, "__wrapped__")  # ... plain again


def test_a_lora_update_that_rounds_away_when_merged_into_bfloat16_is_measured():
    """What LoRA changed survives a merge into float32 weights, but an update far below bfloat16's
    spacing at the weights rounds away: the share that survives says so."""
    from peft import LoraConfig, get_peft_model

    from mtforget.models.lora import merge_survival
    from tests.conftest import tiny_world

    _, _, tokenizer, _ = tiny_world(n_languages=3, segments=200, n_examples=10)
    spec = TinySpec(d_model=32, layers=1, heads=2, ffn_dim=64, vocab_size=300, steps=1, batch_size=8, lr=1e-3)
    shares = {}
    for dtype, scale in ((torch.float32, 1e-2), (torch.bfloat16, 1e-2), (torch.bfloat16, 1e-6)):
        torch.manual_seed(0)
        model = get_peft_model(build_model(spec, tokenizer).to(dtype), LoraConfig(r=4, target_modules=["q_proj"]))
        for name, param in model.named_parameters():
            if "lora_B" in name:  # as training leaves it: a nonzero update
                param.data = torch.full_like(param, scale)
        shares[(dtype, scale)] = merge_survival(model)
    assert shares[(torch.float32, 1e-2)] == 1.0
    assert shares[(torch.bfloat16, 1e-2)] > 0.9
    assert shares[(torch.bfloat16, 1e-6)] < 0.1
    torch.manual_seed(0)
    assert merge_survival(build_model(spec, tokenizer)) is None  # no adapters
