"""Conditions compared where they learn the same: a learning rate selected per condition by dev
loss, learning–forgetting frontiers, forgetting read at matched gain, and a fixed step budget."""

import csv
import json
from collections import defaultdict

import numpy as np
import pytest

from mtforget.errors import UsageError
from mtforget.report.frontier import pareto, read_at
from mtforget.study.config import parse_study
from mtforget.study.grid import expand
from mtforget.study.selection import selected_trials
from tests.conftest import run_and_report, tiny_study

RATES = [1e-3, 3e-3]


def _csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def _sweep_study(**extra) -> dict:
    """Two rates over two model sizes, with the curve and interpolation as frontier sources."""
    raw = tiny_study()
    # Two rates over two model sizes, and tiny:small at a second data size: a contrast whose
    # conditions both learn (a 40-step tiny:base barely does).
    raw["grid"] = [{"model.tiny": ["small", "base"], "finetune.lr": RATES, "finetune.size": [32]},
                   {"model.tiny": ["small"], "finetune.lr": RATES, "finetune.size": [16]}]
    raw["select"] = {"finetune.lr": "dev_loss"}
    raw["finetune"].pop("epochs")
    raw["finetune"]["steps"] = 20  # enough for both sizes to gain on their fine-tuning directions
    raw["eval"]["during_training"] = {"every": 2, "directions": 2, "sentences": 6}
    raw["eval"]["interpolation"] = [0.5]
    raw.update(extra)
    return raw


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    assert run_and_report(parse_study(_sweep_study(), "t"), out, progress=False) == 0
    return out


def _sizes(out) -> dict[str, int]:
    return {d.name: json.loads((d / "config.json").read_text())["finetune"]["size"] for d in (out / "trials").iterdir()}


def _dev_losses(out) -> dict[str, float]:
    return {d.name: json.loads((d / "result.json").read_text())["info"]["train"]["best_dev_loss"]
            for d in (out / "trials").iterdir()}


def test_the_rate_of_lowest_dev_loss_is_selected_for_each_model_size(sweep):
    rows, losses = _csv(sweep / "results.csv"), _dev_losses(sweep)
    by_model = defaultdict(set)
    selected = {}
    for r in rows:
        by_model[r["model"]].add(r["trial_id"])
        selected[r["trial_id"]] = r["lr_selected"] == "True"
    assert set(by_model) == {"tiny:small", "tiny:base"}
    by_model = {model: {t for t in ids if _sizes(sweep)[t] == 32} for model, ids in by_model.items()}
    for model, ids in by_model.items():
        best = min(ids, key=losses.get)
        assert len(ids) == 2 and [t for t in ids if selected[t]] == [best], model  # the lowest dev loss
    # The selected rate is chosen within a condition, not part of it: one headline row per model.
    summary = (sweep / "report" / "summary.md").read_text()
    chrf_table = summary.split("## chrF delta")[1].split("##")[0]
    assert all(f"{c} |" in chrf_table for c in ("tiny:small full n=32", "tiny:base full n=32", "tiny:small full n=16"))
    assert "finetune.lr" not in chrf_table
    sensitivity = summary.split("## Learning-rate sensitivity")[1].split("\n## ")[0]
    assert sum(line.startswith("| tiny:") for line in sensitivity.splitlines()) == 6  # every rate stays


def test_selection_is_a_function_of_finished_trials_alone():
    def trial(tid, lr, loss, status="done", model="small"):
        config = {"model": {"tiny": model}, "finetune": {"lr": lr}, "seed": 0, "name": "x"}
        return {"trial_id": tid, "status": status, "config": json.dumps(config),
                "info": json.dumps({"train": {"best_dev_loss": loss}}) if status == "done" else None}

    trials = [trial("a", 1e-4, 0.5), trial("b", 1e-3, 0.4), trial("c", 3e-3, 0.1, status="failed"),
              trial("d", 1e-4, float("nan"), model="base"), trial("e", 1e-3, None, model="base"),
              trial("f", 1e-4, 0.7, model="lm"), trial("g", 1e-3, 0.7, model="lm")]
    chosen = selected_trials(trials, {"finetune.lr": "dev_loss"})
    assert chosen == {"a": False, "b": True, "c": False, "d": False, "e": False, "f": True, "g": False}
    assert selected_trials(list(reversed(trials)), {"finetune.lr": "dev_loss"})["g"]  # a tie: the first in order
    assert selected_trials(trials, {}) == {t["trial_id"]: t["status"] == "done" for t in trials}


def test_frontier_points_are_the_results_means_and_a_matched_gain_value_recomputes(sweep):
    rows, frontier = _csv(sweep / "results.csv"), _csv(sweep / "frontier.csv")
    assert {"base", "lr", "step", "alpha"} <= {f["source"] for f in frontier}
    # An lr point: the means of results.csv over the trial's supervised and unseen_target directions.
    trial = next(r["trial_id"] for r in rows if r["model"] == "tiny:base" and r["lr_selected"] == "False")
    chrf = [r for r in rows if r["trial_id"] == trial and r["metric"] == "chrf"]
    lr = float(json.loads((sweep / "trials" / trial / "config.json").read_text())["finetune"]["lr"])
    point = next(f for f in frontier if f["condition"] == "tiny:base full n=32" and f["source"] == "lr"
                 and float(f["value"]) == lr and f["category"] == "unseen_target")
    assert float(point["gain"]) == pytest.approx(np.mean([float(r["delta"]) for r in chrf
                                                         if r["category"] == "supervised"]), abs=1e-9)
    assert float(point["delta"]) == pytest.approx(np.mean([float(r["delta"]) for r in chrf
                                                          if r["category"] == "unseen_target"]), abs=1e-9)
    # The matched-gain reading of one condition, recomputed from frontier.csv alone.
    contrasts = _csv(sweep / "matched_gain.csv")
    assert {m["condition"] for m in contrasts if m["axis"] == "model.tiny"} == {"tiny:small full n=32",
                                                                                 "tiny:base full n=32"}
    matched = [m for m in contrasts if m["axis"] == "finetune.size"]
    assert {m["condition"] for m in matched} == {"tiny:small full n=16", "tiny:small full n=32"}
    entry = next(m for m in matched if m["category"] == "unseen_target" and m["at_gain"])
    gain = min(max(float(f["gain"]) for f in frontier if f["condition"] == m["condition"] and f["source"] != "step")
               for m in matched)  # a curve's steps (a sample of directions) stay off the front
    assert not any(f["pareto"] == "True" for f in frontier if f["source"] == "step")
    assert float(entry["gain"]) == pytest.approx(gain, abs=1e-9)
    front = sorted(((float(f["gain"]), float(f["delta"])) for f in frontier if f["condition"] == entry["condition"]
                    and f["category"] == "unseen_target" and f["pareto"] == "True"))
    xs, ys = zip(*front)
    expected = ys[0] if gain <= xs[0] else float(np.interp(gain, xs, ys))
    assert float(entry["at_gain"]) == pytest.approx(expected, abs=1e-9)
    assert float(entry["at_gain_low"]) <= float(entry["at_gain"]) + 1e-9 <= float(entry["at_gain_high"]) + 2e-9
    summary = (sweep / "report" / "summary.md").read_text()
    assert "## At matched gain" in summary and "end point: unseen target" in summary
    assert "At matched gain" in (sweep / "report" / "index.html").read_text()


def test_a_matched_gain_set_by_the_study_reads_there_and_trains_nothing_again(sweep, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(sweep, out)
    stamps = {d.name: (d / "result.json").stat().st_mtime_ns for d in (out / "trials").iterdir()}
    raw = _sweep_study(report={"matched_gain": 1000.0})
    assert run_and_report(parse_study(raw, "t"), out, progress=False) == 0
    assert stamps == {d.name: (d / "result.json").stat().st_mtime_ns for d in (out / "trials").iterdir()}
    matched = _csv(out / "matched_gain.csv")
    assert matched and all(m["gain"] == "1000.0" and m["gain_given"] == "True" and m["at_gain"] == ""
                           for m in matched)  # no condition reaches it
    assert "not reached" in (out / "report" / "summary.md").read_text()


def test_the_pareto_front_and_its_reading_on_a_hand_made_frontier():
    gains = np.array([0.0, 4.0, 8.0, 6.0, 10.0, np.nan])
    deltas = np.array([0.0, -1.0, -3.0, -5.0, -9.0, 1.0])
    assert pareto(gains, deltas) == [0, 1, 2, 4]  # (6, -5) learns less than (8, -3) and forgets more
    assert read_at(gains, deltas, 6.0) == pytest.approx(-2.0)  # halfway from (4, -1) to (8, -3)
    assert read_at(gains, deltas, 9.0) == pytest.approx(-6.0)
    assert read_at(gains, deltas, -1.0) == 0.0  # below the front: its first point
    assert np.isnan(read_at(gains, deltas, 10.5))  # not reached
    assert read_at(gains, deltas, 10.0 + 1e-13) == -9.0  # the last point, within rounding


def test_a_fixed_step_budget_repeats_the_data_and_is_recorded(tmp_path):
    raw = tiny_study(**{"finetune.size": [16]})
    raw["finetune"].pop("epochs")
    raw["finetune"]["steps"] = 5  # 16 pairs at 16 a step: five passes
    out = tmp_path / "s"
    assert run_and_report(parse_study(raw, "t"), out, progress=False) == 0
    trial = next((out / "trials").iterdir())
    train = json.loads((trial / "result.json").read_text())["info"]["train"]
    assert train["steps"] == 5
    rows = _csv(out / "results.csv")
    assert {r["steps"] for r in rows} == {"5"} and {r["tokens"] for r in rows} == {str(train["tokens"])}
    assert "5 steps" in (out / "report" / "summary.md").read_text()
    by_epochs = tiny_study(**{"finetune.size": [16]})
    assert expand(parse_study(raw, "t"))[0].id != expand(parse_study(by_epochs, "t"))[0].id


def test_select_and_steps_are_checked_at_load():
    raw = tiny_study(**{"finetune.size": [16]})
    with pytest.raises(UsageError, match=r"select\.finetune\.lr: finetune\.lr is not swept by the grid"):
        parse_study({**raw, "select": {"finetune.lr": "dev_loss"}}, "t")
    with pytest.raises(UsageError, match="select"):
        parse_study({**raw, "select": {"finetune.epochs": "dev_loss"}}, "t")
    with pytest.raises(UsageError, match="select"):
        parse_study({**raw, "grid": {"finetune.lr": RATES}, "select": {"finetune.lr": "bleu"}}, "t")
    both = tiny_study(**{"finetune.size": [16]})
    both["finetune"]["steps"] = 5
    with pytest.raises(UsageError, match="finetune.steps or finetune.epochs, not both"):
        parse_study(both, "t")
    # Selecting changes no trial's identity: the same trials, with or without it.
    swept = {**raw, "grid": {"finetune.lr": RATES}}
    assert [t.id for t in expand(parse_study(swept, "t"))] == \
        [t.id for t in expand(parse_study({**swept, "select": {"finetune.lr": "dev_loss"}}, "t"))]
