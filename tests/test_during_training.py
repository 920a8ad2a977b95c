"""Forgetting while it happens: the sampled curve, the forgetting budget, the forecast."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from mtforget.cli import main
from mtforget.evaluate.during_training import correlation, draw_sample, unseen_mean
from mtforget.evaluate.forgetting import BaseGate
from mtforget.report.forecast import forecast
from mtforget.report.tables import TrialSummary
from mtforget.study.result import TrialResult
from tests.conftest import tiny_study


def _scores(chrf: float, n: int = 30) -> dict:
    return {"chrf": chrf, "off_target": 0.0, "n": n, "hypotheses": [f"h{i}" for i in range(n)], "off_flags": [0.0] * n,
            "sources": [f"s{i}" for i in range(n)], "references": [f"r{i}" for i in range(n)]}


def test_the_sample_takes_directions_per_category_by_seed_and_skips_flagged_bases():
    languages = ["en", "xa", "xb", "xc"]
    base_eval = {f"{s}-{t}": _scores(50.0) for s in languages for t in languages if s != t}
    base_eval["xb-xc"] = _scores(2.0)  # fails the gate's chrF floor
    directions = [("en", "xa"), ("xa", "en")]
    sample = draw_sample(base_eval, directions, BaseGate(), 1, 3, seed=0)
    assert [d.category for d in sample] == ["supervised", "unseen_source", "unseen_target", "unseen_both"]
    assert all(len(d.sources) == len(d.references) == 3 for d in sample)
    assert draw_sample(base_eval, directions, BaseGate(), 1, 3, seed=0) == sample
    both = draw_sample(base_eval, directions, BaseGate(), 5, 3, seed=0)
    assert {(d.src, d.tgt) for d in both if d.category == "unseen_both"} == {("xc", "xb")}
    assert len(draw_sample(base_eval, directions, BaseGate(include_flagged=True), 5, 3, seed=0)) == len(both) + 1
    assert {draw_sample(base_eval, directions, BaseGate(), 1, 3, seed=s)[1] for s in range(8)} != {sample[1]}


def test_correlation_and_unseen_mean():
    assert correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1)
    assert correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert correlation([1, 2], [1, 2]) is None and correlation([1, 1, 1], [1, 2, 3]) is None
    assert unseen_mean({"supervised": 5, "unseen_source": -1, "unseen_both": -3}) == -2


def _run(tmp_path, raw, name="s"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / name
    code = main(["run", str(path), "--out", str(out), "--no-progress"])
    return code, out


def _forgetting_study(**grid):
    raw = tiny_study(**grid)
    raw["model"]["pretrain_steps"] = 150
    raw["finetune"].update({"size": 32, "epochs": 4, "lr": 3e-3, "patience": 0})
    raw["eval"]["during_training"] = {"every": 2, "sentences": 6, "directions": 2}
    return raw


def _infos(out):
    return {d.name: json.loads((d / "result.json").read_text())["info"] for d in (out / "trials").iterdir()}


def test_a_study_samples_forgetting_curves_from_step_0_and_reports_them(tmp_path):
    code, out = _run(tmp_path, _forgetting_study(**{"finetune.size": [32]}))
    assert code == 0
    (info,) = _infos(out).values()
    curve = TrialResult.from_dict(info).forgetting_curve
    assert len(curve) >= 3 and curve[0]["step"] == 0 and curve[0]["tokens"] == 0
    assert all(v == 0.0 for k, v in curve[0].items() if k not in ("step", "tokens"))
    assert [p["step"] for p in curve] == sorted({p["step"] for p in curve}) and curve[-1]["step"] == info["train"]["steps"]
    assert all(a["tokens"] < b["tokens"] for a, b in zip(curve, curve[1:]))
    assert {"supervised", "unseen_source", "unseen_target", "unseen_both"} <= set(curve[1])
    proxy = info["forgetting_proxy"]
    assert len(proxy["points"]) >= len(curve) and all(p["unseen_dev_loss"] > 0 for p in proxy["points"])
    assert proxy["correlation_with_unseen_chrf"] is not None
    assert (out / "report" / "forgetting_curves.png").is_file()
    assert "## Forgetting during training" in (out / "report" / "summary.md").read_text()


def test_a_forgetting_budget_stops_earlier_and_loses_less_than_its_unconstrained_twin(tmp_path):
    code, out = _run(tmp_path, _forgetting_study(**{"finetune.forgetting_budget.max_drop": [None, 0.5]}))
    assert code == 0
    infos = _infos(out)
    (free_id,) = [t for t in infos if "budget" not in t]
    (kept_id,) = [t for t in infos if "-budget-0.5-" in t]
    free, kept = infos[free_id], infos[kept_id]
    budget = kept["mitigations"]["forgetting_budget"]
    assert budget["stopped"] and kept["train"]["stop_reason"].startswith("forgetting budget:")
    assert kept["train"]["steps"] < free["train"]["steps"] and free["train"]["stop_reason"] is None
    assert "within the budget" in budget["kept"] or "best dev" in budget["kept"]
    with (out / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "chrf" and r["category"].startswith("unseen")]

    def unseen(trial_id):
        values = [float(r["delta"]) for r in rows if r["trial_id"] == trial_id]
        return sum(values) / len(values)

    assert unseen(kept_id) > unseen(free_id)
    assert {r["forgetting_budget"] for r in rows} == {"none", "0.5"}


def test_a_budget_on_a_category_the_sample_lacks_is_exit_2_naming_the_key(tmp_path, capsys):
    raw = _forgetting_study()
    raw["finetune"]["forgetting_budget"] = {"max_drop": 1.0, "category": "zero_shot_seen"}
    code, _ = _run(tmp_path, raw)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: finetune.forgetting_budget.category:")


def _summary(trial_id, model, size, params, delta_fn):
    tokens = size * 20
    result = TrialResult.from_dict({"parameters": params, "train": {"tokens": tokens}})
    return TrialSummary(trial_id, trial_id, model, "full", size, 0, {}, result, 0.0, 0.0), delta_fn(tokens / params)


def test_the_forecast_recovers_a_known_trend_and_predicts_a_held_out_size():
    def truth(tpp):  # one chrF point lost per decade of tokens per parameter, from 0 at 0.01
        return -1.0 * (np.log10(tpp) + 2)

    made = [_summary(f"{m}-{n}", m, n, p, truth) for m, p in (("small", 1e6), ("big", 4e6)) for n in (50, 500, 5000)]
    summaries = [s for s, _ in made]
    trials = [{"trial_id": s.trial_id, "status": "done", "mitigations": json.dumps({"alignment": "none"})}
              for s in summaries]
    rows = [{"trial_id": s.trial_id, "metric": "chrf", "category": c, "delta": d}
            for s, d in made for c in ("unseen_source", "unseen_target", "unseen_both")]
    result = forecast(summaries, trials, rows, budget=2.0, resamples=200)
    mean = next(c for c in result["categories"] if c["category"] == "unseen (mean)")
    assert mean["slope_per_decade"] == pytest.approx(-1.0)
    assert mean["tokens_per_parameter"] == pytest.approx(1.0)  # −2 points at 10^0
    assert mean["sizes"]["small"]["size"] == pytest.approx(1e6 / 20)
    assert mean["sizes"]["big"]["size"] == pytest.approx(4e6 / 20)
    assert mean["extrapolated"]  # the largest ratio tried is 0.1
    assert {h["model"] for h in mean["held_out"]} == {"small", "big"}
    assert all(abs(h["error"]) < 1e-9 for h in mean["held_out"])
    # Trials with a mitigation that changes training stay out of the fit.
    trials[0]["mitigations"] = json.dumps({"alignment": "mid-alternate"})
    assert forecast(summaries, trials, rows, budget=2.0, resamples=50)["trials"] == 5


def test_a_fit_that_barely_falls_forecasts_no_limit_instead_of_overflowing():
    # Resamples that draw mostly one size fit a slope of almost nothing: the budget is then
    # reached beyond 10^308 tokens per parameter, an unbounded limit.
    made = [_summary(f"small-{n}", "small", n, 1e6, lambda tpp: -1e-12 * np.log10(tpp) - 0.5)
            for n in (50, 500, 5000)]
    summaries = [s for s, _ in made]
    trials = [{"trial_id": s.trial_id, "status": "done", "mitigations": "{}"} for s in summaries]
    rows = [{"trial_id": s.trial_id, "metric": "chrf", "category": "unseen_both", "delta": d} for s, d in made]
    result = forecast(summaries, trials, rows, budget=5.0, resamples=50)["categories"][0]
    assert result["tokens_per_parameter"] == float("inf") and result["unbounded_share"] > 0.5


def test_a_killed_trial_resumes_its_curve_where_it_stopped(tmp_path, monkeypatch):
    from mtforget.study.config import parse_study
    from mtforget.study.runner import run_study
    from tests.conftest import Kill, watch_trials

    raw = _forgetting_study(**{"finetune.size": [32]})
    raw["finetune"]["checkpoint_every"] = 2
    study = parse_study(raw, "t")
    assert run_study(study, tmp_path / "whole", progress=False) == 0

    def kill_at_5(trial_id, step, loss):
        if step == 5:
            raise Kill()
        return loss

    with monkeypatch.context() as patch, pytest.raises(Kill):
        watch_trials(patch, kill_at_5)
        run_study(study, tmp_path / "killed", progress=False)
    assert run_study(study, tmp_path / "killed", progress=False) == 0
    (whole,), (resumed,) = _infos(tmp_path / "whole").values(), _infos(tmp_path / "killed").values()
    assert resumed["train"]["resumed_from"] == 4
    assert resumed["forgetting_curve"] == whole["forgetting_curve"]


def test_sampling_settings_enter_trial_ids_only_when_something_samples():
    from mtforget.study.config import parse_study
    from mtforget.study.grid import expand

    def ids(**during):
        raw = tiny_study()
        raw["eval"]["during_training"] = {"sentences": 7, **during}
        return [t.id for t in expand(parse_study(raw, "t"))]

    plain = [t.id for t in expand(parse_study(tiny_study(), "t"))]
    assert ids() == plain  # off: its settings leave finished trials as they were
    assert set(ids(every=5)).isdisjoint(plain)
    raw = tiny_study()
    raw["finetune"]["forgetting_budget"] = {"max_drop": 1.0}
    with_budget = [t.id for t in expand(parse_study(raw, "t"))]
    raw["eval"]["during_training"] = {"sentences": 7}
    assert [t.id for t in expand(parse_study(raw, "t"))] != with_budget  # the budget reads the sample


def test_the_held_out_size_leaves_every_seed_of_it_out_of_the_fit():
    def truth(tpp):
        return -1.0 * (np.log10(tpp) + 2)

    made = [_summary(f"small-{n}-{seed}", "small", n, 1e6, truth) for n in (50, 500, 5000) for seed in (0, 1)]
    made += [_summary(f"big-{n}", "big", n, 4e6, truth) for n in (50, 500)]
    summaries = [s for s, _ in made]
    trials = [{"trial_id": s.trial_id, "status": "done", "mitigations": "{}"} for s in summaries]
    rows = [{"trial_id": s.trial_id, "metric": "chrf", "category": "unseen_both",
             "delta": d + (5.0 if s.trial_id.startswith("small-5000") else 0.0)} for s, d in made]
    held = forecast(summaries, trials, rows, budget=2.0, resamples=50)["categories"][0]["held_out"]
    small = next(h for h in held if h["model"] == "small")
    # Both seeds at 5,000 are off the trend by +5: left out together, the fit predicts the trend.
    assert small["trials"] == 2 and small["error"] == pytest.approx(-5.0)


def test_a_budget_trial_killed_between_a_checkpoint_and_its_next_check_resumes_to_the_same_results(
        tmp_path, monkeypatch):
    """A checkpoint that falls between two checks: resumed from it, a budget that trips at the
    next check must restore the weights of the last check within the budget (as the uninterrupted
    run does), not the weights of the checkpoint, which no check saw."""
    from mtforget.study.config import parse_study
    from mtforget.study.runner import run_study
    from tests.conftest import Kill, watch_trials

    # The tiny model forgets within its first steps and then plateaus, so a budget well under that
    # first fall trips at the first check after step 0.
    raw = _forgetting_study(**{"finetune.forgetting_budget.max_drop": [1.0]})
    raw["eval"]["during_training"]["every"] = 3  # checks at steps 0 and 3
    # A checkpoint at step 2, between them; no dev check, so the budget's own weights are restored.
    raw["finetune"].update(checkpoint_every=2, eval_every=100)
    study = parse_study(raw, "t")
    reference = tmp_path / "reference"
    assert run_study(study, reference, progress=False) == 0
    (result,) = _infos(reference).values()
    budget = result["mitigations"]["forgetting_budget"]
    assert budget["stopped_at"] == 3 and budget["kept"] == "last check within the budget (step 0)"

    def kill(trial_id, step, loss):
        if step == 3:  # after the checkpoint at step 2, before the check that trips the budget
            raise Kill()
        return loss

    killed = tmp_path / "killed"
    with monkeypatch.context() as patch:
        watch_trials(patch, kill)
        with pytest.raises(Kill):
            run_study(study, killed, progress=False)
    assert run_study(study, killed, progress=False) == 0
    (resumed,) = _infos(killed).values()
    assert resumed["train"]["resumed_from"] == 2
    assert resumed["mitigations"]["forgetting_budget"] == budget

    def table(out):
        with (out / "results.csv").open() as f:
            return sorted((r["src"], r["tgt"], r["metric"], r["finetuned"]) for r in csv.DictReader(f))

    assert table(killed) == table(reference)
