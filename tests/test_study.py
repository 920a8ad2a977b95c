"""End-to-end studies on a tiny world: contract files, resume, failure isolation, CLI errors."""

import csv
import json

import pytest
import yaml

from mtforget.cli import main
from mtforget.data.categories import BY_FINETUNING
from mtforget.errors import UsageError
from mtforget.study.config import parse_study
from mtforget.study.grid import expand
from mtforget.study.runner import run_study
from mtforget.study.store import CSV_COLUMNS
from tests.conftest import resume_and_check, run_and_report, tiny_study, watch_trials


class Interrupt(BaseException):
    """Stands in for a kill: not an Exception, so the runner does not catch it as a trial failure."""


def _rows(out):
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def _comparable(rows):
    return sorted((r["trial_id"], r["src"], r["tgt"], r["metric"], r["base"], r["finetuned"]) for r in rows)


def test_study_writes_the_contract_files(tmp_path):
    # en-xa, xa-en, xa-xb: seen {en, xa, xb}, unseen {xc, xd}, so every category occurs.
    raw = tiny_study(**{"finetune.size": [16]})
    raw["finetune"]["directions"] = ["en-xa", "xa-en", "xa-xb"]
    out = tmp_path / "s"
    assert run_and_report(parse_study(raw, "t"), out, progress=False) == 0
    rows = _rows(out)
    assert list(rows[0]) == CSV_COLUMNS
    assert {r["category"] for r in rows} == set(BY_FINETUNING)
    assert {r["metric"] for r in rows} == {"chrf", "chrf++", "bleu", "off_target", "chrf_on_target"}
    assert len(rows) == 5 * 4 * 5  # 20 directions × 5 metrics
    for r in rows:
        assert abs(float(r["finetuned"]) - float(r["base"]) - float(r["delta"])) < 1e-9
        if r["metric"] == "off_target":
            assert 0 <= float(r["base"]) <= 1
    trial_dir = next((out / "trials").iterdir())
    result = json.loads((trial_dir / "result.json").read_text())
    assert result["info"]["finetune_directions"] == ["en-xa", "xa-en", "xa-xb"]
    assert set(result["info"]["category_ci"]["chrf"]) == set(BY_FINETUNING)
    for r in rows:  # paired-bootstrap interval and the copy-the-source baseline on every row
        assert float(r["delta_low"]) <= float(r["delta_high"]) and r["source_copy"] != ""
    assert (trial_dir / "outputs.jsonl").is_file() and (trial_dir / "trial.log").is_file()
    summary = (out / "report" / "summary.md").read_text()
    assert "unseen_both" in summary and "tiny:small full n=16" in summary
    assert (out / "report" / "index.html").is_file()
    assert yaml.safe_load((out / "study.yaml").read_text())["grid"] == {"finetune.size": [16]}


def test_resume_skips_finished_trials_and_matches_uninterrupted_run(tmp_path, monkeypatch):
    study = parse_study(tiny_study(), "t")
    reference = tmp_path / "reference"
    assert run_study(study, reference, progress=False) == 0

    out = tmp_path / "interrupted"

    def kill_second_trial(trial_id, step, loss):
        if "-n32-" in trial_id:
            raise Interrupt()
        return loss

    with monkeypatch.context() as patch, pytest.raises(Interrupt):
        watch_trials(patch, kill_second_trial)
        run_study(study, out, progress=False)
    first = next(p for p in (out / "trials").iterdir() if "-n16-" in p.name)
    resume_and_check(monkeypatch, study, out, first, _comparable(_rows(reference)), lambda d: _comparable(_rows(d)))


def test_a_diverging_trial_is_recorded_as_failed_and_the_others_complete(tmp_path, monkeypatch):
    def inject_nan(trial_id, step, loss):
        return loss * float("nan") if "-n16-" in trial_id else loss

    study = parse_study(tiny_study(), "t")
    out = tmp_path / "s"
    with monkeypatch.context() as patch:
        watch_trials(patch, inject_nan)
        assert run_and_report(study, out, progress=False) == 1
    rows = _rows(out)
    assert rows and all("-n32-" in r["trial_id"] for r in rows)
    summary = (out / "report" / "summary.md").read_text()
    assert "TrialDiverged: non-finite training loss (nan) at step 1" in summary

    # Failed trials are kept failed on a plain re-run, and run again when asked.
    calls = []

    def count(trial_id, step, loss):
        calls.append(trial_id)
        return loss

    watch_trials(monkeypatch, count)
    assert run_study(study, out, progress=False) == 1 and calls == []
    assert run_study(study, out, progress=False, retry_failed=True) == 0
    assert calls and all("-n16-" in c for c in calls)
    assert {r["trial_id"] for r in _rows(out)} == {t.id for t in expand(study)}


def test_unknown_key_is_exit_2_with_the_closest_key(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"finetune": {"sise": 10}}))
    assert main(["run", str(study), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {study}: unknown key 'finetune.sise' (did you mean 'finetune.size'?)"]
    assert main(["demo", "--set", "modle.tiny=base", "--out", str(tmp_path / "o")]) == 2
    assert "unknown key 'modle.tiny' (did you mean 'model.tiny'?)" in capsys.readouterr().err


def test_malformed_corpus_is_exit_2_naming_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "translation": {"en": "hi", "de": "hallo"}}\n{"id": "b", "translation": \n')
    code = main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "o"), "--set", f"corpus.path={corpus}"])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: {corpus}:2: not valid JSON")


def test_report_command_rebuilds_the_report(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.sqlite" in capsys.readouterr().err
    out = tmp_path / "s"
    assert run_and_report(parse_study(tiny_study(**{"finetune.size": [16]}), "t"), out, progress=False) == 0
    for built in (out / "report").iterdir():
        built.unlink()
    assert main(["report", str(out)]) == 0
    assert {"index.html", "summary.md", "forgetting_by_size.png"} <= {p.name for p in (out / "report").iterdir()}


def test_lora_trials_train_adapters_only_and_report_their_size(tmp_path):
    raw = tiny_study(**{"finetune.method": ["full", "lora"]})
    raw["finetune"]["lora"] = {"rank": 4, "alpha": 8, "dropout": 0.0}
    out = tmp_path / "s"
    assert run_and_report(parse_study(raw, "t"), out, progress=False) == 0
    infos = {json.loads(p.read_text())["info"]["method"]: json.loads(p.read_text())["info"]
             for p in (out / "trials").glob("*/result.json")}
    assert infos["full"]["trainable_parameters"] == infos["full"]["parameters"]
    assert 0 < infos["lora"]["trainable_parameters"] < infos["lora"]["parameters"] / 4
    assert infos["lora"]["parameters"] == infos["full"]["parameters"]  # merged back into a plain model
    rows = _rows(out)
    assert {r["method"] for r in rows} == {"full", "lora"}
    lora_ft = [float(r["finetuned"]) for r in rows if r["method"] == "lora" and r["metric"] == "chrf"]
    lora_base = [float(r["base"]) for r in rows if r["method"] == "lora" and r["metric"] == "chrf"]
    assert lora_ft != lora_base  # the adapters changed the model
    summary = (out / "report" / "summary.md").read_text()
    assert "tiny:small lora n=32" in summary


def test_a_list_grid_is_the_union_of_its_parts_and_set_reaches_every_part():
    from mtforget.study.config import apply_overrides
    from mtforget.study.grid import expand

    raw = {"grid": [{"model.tiny": ["small", "base"], "finetune.size": [100, 1000]},
                    {"finetune.method": ["lora"], "finetune.size": [1000]},
                    {"finetune.size": [1000]}]}  # the same trial as small/1000 in part one
    trials = expand(parse_study(raw, "s"))
    assert [(t.config.model.tiny, t.config.finetune.method, t.config.finetune.size) for t in trials] == [
        ("small", "full", 100), ("small", "full", 1000), ("base", "full", 100), ("base", "full", 1000),
        ("small", "lora", 1000)]
    seeded = expand(parse_study(apply_overrides(raw, ["grid.seed=[0,1]"]), "s"))
    assert len(seeded) == 2 * len(trials)
    fixed = expand(parse_study(apply_overrides(raw, ["finetune.size=7"]), "s"))
    assert {t.config.finetune.size for t in fixed} == {7} and len(fixed) == 3
    with pytest.raises(UsageError, match="grid: unknown key 'finetune.sise'"):
        parse_study({"grid": [{"finetune.sise": [1]}]}, "s")
    with pytest.raises(UsageError, match="expected a mapping"):
        parse_study({"grid": [["finetune.size", 1]]}, "s")


def test_parallel_trials_start_different_bases_first():
    from mtforget.study.runner import interleave_by_base

    raw = {"grid": [{"model.tiny": ["small", "base"], "finetune.size": [10, 20, 30]},
                    {"model.tiny": ["lm"], "finetune.size": [10]}]}
    order = [(t.config.model.tiny, t.config.finetune.size) for t in interleave_by_base(expand(parse_study(raw, "s")))]
    assert order == [("small", 10), ("base", 10), ("lm", 10), ("small", 20), ("base", 20), ("small", 30),
                     ("base", 30)]
