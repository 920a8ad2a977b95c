"""The extension seams: training callbacks, the mitigation registry and its first plug-in added
after the others (``finetune.l2_to_base``), the typed trial result."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from mtforget.bases.specs import TinySpec
from mtforget.bases.tiny_seq2seq import build_model
from mtforget.cli import main
from mtforget.mitigations import MITIGATIONS
from mtforget.mitigations.l2_to_base import L2Penalty
from mtforget.models.language import LanguageTokens
from mtforget.study.config import parse_study, valid_keys
from mtforget.study.grid import expand
from mtforget.study.result import TrialResult
from mtforget.study.store import CSV_COLUMNS
from mtforget.train.callbacks import TrainCallback, step_schedule
from mtforget.train.loop import TrainSettings, train
from tests.conftest import tiny_study, tiny_world

SPEC = TinySpec(d_model=32, layers=2, heads=2, ffn_dim=64, vocab_size=300, steps=1, batch_size=8, lr=1e-3)


@pytest.fixture(scope="module")
def world():
    _, _, tokenizer, examples = tiny_world(n_languages=3, segments=200, n_examples=64)
    return tokenizer, examples


def _model(tokenizer):
    torch.manual_seed(0)
    return build_model(SPEC, tokenizer)


def _drift(model, start):
    return sum(((p.detach() - start[n]) ** 2).sum().item() for n, p in model.named_parameters())


def test_the_l2_penalty_keeps_weights_closer_to_where_training_started(world):
    tokenizer, examples = world
    settings = TrainSettings(lr=3e-3, batch_size=8, max_steps=12, log_every=4)
    start = {n: p.detach().clone() for n, p in _model(tokenizer).named_parameters()}
    free, pulled = _model(tokenizer), _model(tokenizer)
    train(free, LanguageTokens(tokenizer), examples, settings, progress=False)
    outcome = train(pulled, LanguageTokens(tokenizer), examples, settings, progress=False,
                    callbacks=[L2Penalty(1.0)])
    assert _drift(pulled, start) < 0.5 * _drift(free, start)
    drifts = [h["l2_drift"] for h in outcome.history if "l2_drift" in h]
    assert len(drifts) == 3 and drifts[0] > 0 and outcome.extra_losses["l2_drift"] == pytest.approx(drifts[-1], abs=1e-5)


def test_the_penalty_is_zero_at_the_start_and_weighted(world):
    tokenizer, _ = world
    model = _model(tokenizer)
    penalty = L2Penalty(0.5)
    penalty.on_train_start(model)
    assert penalty.extra_loss(model, 1).item() == 0
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    first = next(model.parameters())
    assert penalty.extra_loss(model, 2).item() == pytest.approx(0.5 * first.numel())


def test_callbacks_see_every_step_and_at_most_one_may_own_steps(world):
    tokenizer, examples = world
    ended = []

    class Watch(TrainCallback):
        def on_step_end(self, step, model, state):
            ended.append(step)

    train(_model(tokenizer), LanguageTokens(tokenizer), examples, TrainSettings(lr=1e-3, batch_size=8, max_steps=5),
          progress=False, callbacks=[Watch()])
    assert ended == [1, 2, 3, 4, 5]

    class Owner(TrainCallback):
        schedule = object()

    with pytest.raises(ValueError, match="at most one"):
        step_schedule([Owner(), Owner()])


def test_every_mitigation_has_a_study_key_and_a_results_column():
    keys = valid_keys()
    for name, m in MITIGATIONS.items():
        assert m.key in keys and name in CSV_COLUMNS, name
        assert m.label(m.default) == "none" and not m.enabled(m.default), name


def test_a_mitigation_that_is_off_leaves_trial_ids_as_they_were():
    plain = expand(parse_study(tiny_study(), "t"))
    off = tiny_study()
    off["finetune"]["l2_to_base"] = 0
    on = tiny_study()
    on["finetune"]["l2_to_base"] = 0.1
    assert [t.id for t in expand(parse_study(off, "t"))] == [t.id for t in plain]
    with_l2 = expand(parse_study(on, "t"))
    assert all("-l2-0.1-" in t.id for t in with_l2) and {t.id for t in with_l2}.isdisjoint(t.id for t in plain)
    assert with_l2[0].condition == "tiny:small full n=16 l2=0.1"


def test_a_negative_l2_weight_is_exit_2_naming_the_key(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "o"), "--set", "finetune.l2_to_base=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --set finetune.l2_to_base=-1: finetune.l2_to_base:")


def test_a_study_with_the_l2_mitigation_records_it_in_rows_and_result(tmp_path):
    raw = tiny_study(**{"finetune.l2_to_base": [0.0, 0.5]})
    out = tmp_path / "s"
    assert main(["run", _write(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["l2_to_base"] for r in rows} == {"none", "0.5"}
    assert all(r["alignment"] == r["replay"] == r["interpolation"] == "none" for r in rows)
    for trial_dir in (out / "trials").iterdir():
        result = TrialResult.from_dict(json.loads((trial_dir / "result.json").read_text())["info"])
        assert ("l2_to_base" in result.mitigations) == ("-l2-0.5-" in trial_dir.name)
        assert result.timings_s.keys() >= {"corpus", "base_model", "base_eval", "finetune", "finetuned_eval"}
        drifts = [h["l2_drift"] for h in result.train["history"] if "l2_drift" in h]
        assert bool(drifts) == ("-l2-0.5-" in trial_dir.name)
    summary = (out / "report" / "summary.md").read_text()
    assert "l2=0.5" in summary


def test_a_trial_result_from_another_version_reads_with_defaults():
    result = TrialResult.from_dict({"model": "tiny:small", "parameters": 10, "train": {"tokens": 50},
                                    "something_new": 1})
    assert result.parameters == 10 and result.tokens_per_parameter == 5 and result.mitigations == {}
    assert result.engine is None


def _write(tmp_path, raw) -> str:
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)
