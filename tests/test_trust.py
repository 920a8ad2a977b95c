"""Results a user can trust: no setting silently ignored or capped, no stale identity, no delta
measured against a base that cannot translate, and config errors named before anything runs."""

import csv
import json
import subprocess
import sys
import time

import huggingface_hub.constants
import pytest
import yaml

from mtforget.cache import content_fingerprint
from mtforget.cli import main
from mtforget.errors import UsageError
from mtforget.evaluate.forgetting import BaseGate, forgetting_rows
from mtforget.models.loading import load_model
from mtforget.models.lora import apply_lora
from mtforget.report.tables import base_quality, gate_failures
from mtforget.resources import free_cores, trial_threads, usable_cores
from mtforget.study.config import SCHEDULES, apply_overrides, load_study, parse_study
from mtforget.study.grid import expand
from mtforget.study.runner import run_study
from tests.conftest import tiny_study
from tests.test_families import build_checkpoint

# 1. --set grid.KEY=[...] creates the grid; --set grid= replaces it.

def test_set_grid_axis_creates_a_grid_when_the_study_has_none():
    study = parse_study(apply_overrides({"finetune": {"size": 50}}, ["grid.finetune.size=[100,200]"]), "t")
    assert sorted(t.config.finetune.size for t in expand(study)) == [100, 200]


def test_set_grid_replaces_the_whole_grid():
    raw = apply_overrides({"grid": {"seed": [1, 2]}}, ["grid={finetune.size: [10, 20, 30]}"])
    assert sorted(t.config.finetune.size for t in expand(parse_study(raw, "t"))) == [10, 20, 30]
    assert len(expand(parse_study(apply_overrides(raw, ["grid="]), "t"))) == 1


def test_grid_values_are_validated_like_the_file_in_combination():
    with pytest.raises(UsageError, match=r"grid \(finetune.size=0\): finetune.size"):
        parse_study(apply_overrides({}, ["grid.finetune.size=[10,0]"]), "t")
    # COMET is valid only together with its settings: each combination is checked, not each value.
    raw = {"eval": {"metrics": ["comet"], "comet": {"python": "/bin/python3", "checkpoint": "/c.ckpt"}},
           "grid": [{"eval.comet": [None]}]}
    with pytest.raises(UsageError, match=r"grid \(eval.comet=None\)"):
        parse_study(raw, "t")


# 2. A fine-tuning size beyond the data is an error naming the key and what is available.

def test_size_beyond_the_training_pairs_is_exit_2_naming_the_available_number(tmp_path, capsys):
    raw = tiny_study(**{"finetune.size": [100000]})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: finetune.size: 100000 pairs asked for")
    assert "gives only" in err[0] and "en-xa:" in err[0]


# 3. Checkpoints and corpora are identified by their contents.

def _study_on(path) -> dict:
    return {"model": {"path": str(path)}, "corpus": {"synthetic": {"languages": 5, "segments": 600}}}


def test_a_checkpoint_changed_in_place_gets_a_new_identity_and_a_copy_keeps_it(tmp_path):
    ckpt = tmp_path / "ckpt"
    build_checkpoint("nllb", ckpt)
    first = expand(parse_study(_study_on(ckpt), "t"))[0].id
    copy = tmp_path / "elsewhere"
    subprocess.run(["cp", "-r", str(ckpt), str(copy)], check=True)
    assert expand(parse_study(_study_on(copy), "t"))[0].id == first  # same files, other path
    tokenizer = ckpt / "tokenizer.json"
    data = json.loads(tokenizer.read_text())
    data["normalizer"] = {"type": "Lowercase"}  # a tokenizer change that keeps every weight
    tokenizer.write_text(json.dumps(data))
    assert expand(parse_study(_study_on(ckpt), "t"))[0].id != first
    before = content_fingerprint(ckpt)
    weights = next(ckpt.glob("*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # the same size, another value in the last weight
    weights.write_bytes(bytes(blob))
    assert content_fingerprint(ckpt) != before


def test_a_corpus_changed_in_place_gets_a_new_trial_identity(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "translation": {"en": "a b", "de": "c d"}}\n')
    raw = {"corpus": {"path": str(corpus)}}
    first = expand(parse_study(raw, "t"))[0].id
    corpus.write_text('{"id": "1", "translation": {"en": "a b", "de": "c e"}}\n')
    assert expand(parse_study(raw, "t"))[0].id != first


# 4. The base-quality gate.

def _eval(hyps, refs, lang, lid):
    from mtforget.data.splits import Example
    from mtforget.evaluate.forgetting import _scored

    return _scored(hyps, lang, [Example("xx", lang, "s", r, str(i)) for i, r in enumerate(refs)], lid)


def test_gate_flags_a_fixed_sentence_empty_outputs_and_few_sentences_and_keeps_them_out_of_means():
    from mtforget.data.corpus import corpus_from_records
    from mtforget.data.synthetic import SyntheticWorld
    from mtforget.evaluate.lid import make_identifier

    corpus = corpus_from_records(SyntheticWorld(seed=0, n_languages=4).corpus(400, seed=0), "w")
    langs = list(corpus.languages)
    lid = make_identifier(corpus.segments, langs)
    refs = {t: [s.translation[t] for s in corpus.segments[:30]] for t in langs}
    good = {t: _eval(refs[t], refs[t], t, lid) for t in langs}
    fixed = _eval([refs["xb"][0]] * 30, refs["xb"], "xb", lid)  # one sentence for every input
    empty = _eval([""] * 30, refs["xc"], "xc", lid)
    few = _eval(refs["xa"][:5], refs["xa"][:5], "xa", lid)
    gate = BaseGate()
    assert gate.flag(good["xb"]) == ""
    assert "one and the same sentence" in gate.flag(fixed)
    assert "base chrF" in gate.flag(_eval(["zzz qqq"] * 29 + ["yyy"], refs["xb"], "xb", lid))
    assert "empty" in gate.flag(empty)
    assert "5 test sentences" in gate.flag(few)
    base = {"en-xa": few, "en-xb": fixed, "xa-xc": empty, "xb-en": good["en"], "xc-en": good["en"]}
    finetuned = {k: {**v} for k, v in base.items()}
    rows, ci = forgetting_rows(base, finetuned, [("en", "xa")], lid, resamples=100)
    flagged = {f"{r['src']}-{r['tgt']}" for r in rows if r["base_flag"]}
    assert flagged == {"en-xa", "en-xb", "xa-xc"}
    assert set(ci["chrf"]) == {"unseen_source"}  # the fit directions only (xb-en, xc-en)
    _, ci_all = forgetting_rows(base, finetuned, [("en", "xa")], lid, resamples=100,
                                gate=BaseGate(include_flagged=True))
    assert set(ci_all["chrf"]) == {"supervised", "unseen_target", "unseen_source"}
    for row in rows:
        row["model"] = "m"
    quality = {q["category"]: q for q in base_quality(rows)}
    assert quality["supervised"]["flagged"] == 1 and quality["supervised"]["chrf"] == pytest.approx(100)
    assert gate_failures(rows) == []
    assert gate_failures([r for r in rows if r["base_flag"]]) == ["m"]


def test_a_study_whose_base_fails_everywhere_says_so_and_shows_absolute_scores(tmp_path, capsys):
    raw = tiny_study(**{"finetune.size": [16]})
    raw["eval"].pop("base_gate")  # a 40-step base on 6 sentences per direction: flagged everywhere
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    warning = captured.err.strip().splitlines()[-1]
    assert warning.startswith("warning: base model tiny:small fails the base-quality gate on every direction")
    # The warning gives the gate's own reasons, with how many directions each flagged.
    assert "too few test sentences per direction (eval.max_sentences under eval.base_gate.min_sentences)" in warning
    assert "(20 of 20 directions)" in warning
    summary = (tmp_path / "out" / "report" / "summary.md").read_text()
    assert "## Base model quality" in summary and "6 test sentences (< 20)" in summary
    assert "## chrF delta" not in summary  # no mean over directions that mean nothing
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all("6 test sentences" in r["base_flag"] for r in rows)


# 5. Config errors known before running are exit 2 naming the key.

@pytest.mark.parametrize("override, key", [
    ("seed=-1", "seed"), ("model.seed=-3", "model.seed"), ("finetune.schedule=cosine_warmup", "finetune.schedule"),
    ("model.tiny=", "model"), ("model.path=' '", "model"), ("corpus.split_seed=-1", "corpus.split_seed"),
])
def test_bad_values_are_named_at_load(override, key):
    with pytest.raises(UsageError, match=f"^t: {key}: "):
        parse_study(apply_overrides({}, [override]), "t")


def test_every_schedule_accepted_builds_with_transformers():
    import torch
    from transformers import SchedulerType, get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for name in SCHEDULES:
        assert name in {s.value for s in SchedulerType}
        get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10)


def test_empty_study_file_is_an_error(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(UsageError, match="empty.yaml: the study file is empty"):
        load_study(path)


def test_unwritable_out_is_exit_2_without_traceback(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--quick", "--out", str(blocker / "sub"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_lora_target_modules_matching_nothing_is_a_usage_error(tmp_path):
    build_checkpoint("nllb", tmp_path / "c")
    model, _ = load_model(tmp_path / "c")
    with pytest.raises(UsageError, match="finetune.lora.target_modules: 'qkv_proj' match no linear layer"):
        apply_lora(model, 4, 8, 0.0, ["q_proj", "qkv_proj"])


def test_a_hub_id_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch):
    # An id no cache holds, and a hub address where nothing listens (refused at once, no retries).
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(UsageError, match="model.path: 'nobody/no-such-model' .* hub cannot be reached"):
        load_model("nobody/no-such-model")


def test_relative_paths_in_a_study_file_are_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "studies" / "data").mkdir(parents=True)
    corpus = tmp_path / "studies" / "data" / "c.jsonl"
    corpus.write_text('{"id": "1", "translation": {"en": "a b", "de": "c d"}}\n')
    study = tmp_path / "studies" / "s.yaml"
    study.write_text(yaml.safe_dump({"corpus": {"path": "data/c.jsonl"}, "model": {"path": "org/hub-model"}}))
    monkeypatch.chdir(tmp_path)
    loaded = load_study(study, ["eval.comet.python=venv/bin/python", "eval.comet.checkpoint=m.ckpt"])
    assert loaded.corpus.path == str(corpus)
    assert loaded.model.path == "org/hub-model"  # a hub id stays a hub id
    assert loaded.eval.comet.python == str(tmp_path / "venv" / "bin" / "python")  # --set: the working directory
    assert loaded.eval.comet.checkpoint == str(tmp_path / "m.ckpt")


# 6. Threads: the free cores, not every core.

def test_free_cores_leave_out_a_core_another_process_keeps_busy():
    if usable_cores() < 2:
        pytest.skip("needs two cores")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert free_cores() <= usable_cores() - 1
        assert trial_threads(None) <= usable_cores() - 1
    finally:
        busy.kill()
        busy.wait()
    assert trial_threads(3) == 3 and trial_threads(None, workers=64) == 1


def test_a_trial_beside_a_busy_process_leaves_its_core_alone_and_records_its_threads(tmp_path):
    if usable_cores() < 2:
        pytest.skip("needs two cores")
    raw = tiny_study(**{"finetune.size": [16]})
    raw.pop("resources")  # the default: the free cores
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert run_study(parse_study(raw, "t"), tmp_path / "o", progress=False) == 0
    finally:
        busy.kill()
        busy.wait()
    result = json.loads(next((tmp_path / "o" / "trials").glob("*/result.json")).read_text())
    assert 1 <= result["info"]["threads"] <= usable_cores() - 1


# A base that fails fails every trial of it at once, with the same reason.

def test_trials_of_a_base_that_failed_fail_at_once_with_its_reason(tmp_path):
    ckpt = tmp_path / "ckpt"
    build_checkpoint("nllb", ckpt)
    next(ckpt.glob("*.safetensors")).write_bytes(b"not a safetensors file")
    raw = tiny_study(**{"finetune.size": [16, 32], "seed": [0, 1]})
    raw["model"] = {"path": str(ckpt)}
    out = tmp_path / "o"
    with pytest.raises(UsageError):  # a checkpoint that does not load is the user's to fix: exit 2
        run_study(parse_study(raw, "t"), out, progress=False)
    from mtforget.study.store import ResultStore

    store = ResultStore(out / "results.sqlite")
    trials = store.trials()
    store.close()
    assert len(trials) == 4 and {t["status"] for t in trials} == {"failed"}
    assert len({t["reason"] for t in trials}) == 1 and "cannot load" in trials[0]["reason"]
    logs = [(out / "trials" / t["trial_id"] / "trial.log").read_text() for t in trials]
    assert sum("its base failed in another trial of this run" in log for log in logs) == 3
    # The next run tries the base again (the user may have fixed it).
    build_checkpoint("nllb", ckpt)
    assert run_study(parse_study(raw, "t"), out, progress=False) == 0


def test_a_short_test_set_alone_is_named_as_the_reason_not_the_base_quality():
    from mtforget.report.tables import gate_failure_reasons

    rows = [{"metric": "chrf", "model": "m", "base_flag": "10 test sentences (< 20)"} for _ in range(3)]
    assert gate_failure_reasons(rows, "m") == ["too few test sentences per direction (eval.max_sentences under "
                                               "eval.base_gate.min_sentences), whatever the base's quality "
                                               "(3 of 3 directions)"]


def test_json_files_are_strict_json_with_null_for_what_is_not_a_number(tmp_path):
    import json
    import math

    from mtforget.atomic import write_json_atomic

    write_json_atomic(tmp_path / "r.json", {"train_loss": math.nan, "curve": [math.inf, 1.5, (2.0, -math.inf)]})

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == \
        {"train_loss": None, "curve": [None, 1.5, [2.0, None]]}


def test_the_quick_demo_on_an_untrained_checkpoint_runs_without_its_curve_and_scores_every_direction(
        tmp_path, capsys):
    """A user's weak base: no direction passes the gate, so forgetting cannot be sampled during
    training; the curve is skipped with one warning, and every trial still runs and is scored."""
    import csv
    import json

    from tests.test_families import build_checkpoint

    checkpoint = build_checkpoint("llama-plain", tmp_path / "untrained")
    out = tmp_path / "out"
    args = ["demo", "--quick", "--out", str(out), "--no-progress", "--set", f"model.path={checkpoint}",
            "--set", "grid.finetune.size=[40]", "--set", "eval.max_sentences=3", "--set", "eval.max_new_tokens=4",
            "--set", "corpus.synthetic.languages=4", "--set", "eval.representations=false"]
    assert main(args) == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "eval.during_training skipped" in line]
    assert len(skipped) == 1 and "no direction of the base passes the base-quality gate" in skipped[0]
    with (out / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "chrf"]
    assert len({(r["src"], r["tgt"]) for r in rows}) == 4 * 3 and all(r["base_flag"] for r in rows)
    (result,) = out.glob("trials/*/result.json")

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    info = json.loads(result.read_text(), parse_constant=refuse)["info"]
    assert not info["forgetting_curve"] and info["train"]["steps"] == 2


def test_a_damaged_cache_entry_is_rebuilt_with_a_warning_never_trusted(capsys):
    from mtforget.cache import DIGEST_FILE, cached_dir, existing_entry

    builds = []

    def build(out):
        builds.append(out)
        (out / "eval.json").write_text('{"chrf": 81.4}')
        (out / "sub").mkdir()
        (out / "sub" / "more.txt").write_text("abc")

    key = "damaged-entry"  # this test's own (the session's cache is private to the tests)
    entry = cached_dir("tests", key, build)
    assert (entry / DIGEST_FILE).is_file() and len(builds) == 1
    assert cached_dir("tests", key, build) == entry and len(builds) == 1  # intact: used as it is
    for damage in (lambda: (entry / "eval.json").write_text(""),  # cut short by a power cut
                   lambda: (entry / "sub" / "more.txt").write_text("abd"),  # changed
                   lambda: (entry / "sub" / "more.txt").unlink()):  # gone
        damage()
        assert existing_entry("tests", key) is None  # the base evaluation's reader: not trusted
        assert "is damaged" in capsys.readouterr().err
        entry = cached_dir("tests", key, build)
        assert (entry / "eval.json").read_text() == '{"chrf": 81.4}'
    assert len(builds) == 4
    # An entry from before entries carried a digest is adopted, unless a file of it is empty.
    (entry / DIGEST_FILE).unlink()
    assert existing_entry("tests", key) == entry and (entry / DIGEST_FILE).is_file()
    (entry / DIGEST_FILE).unlink()
    (entry / "eval.json").write_text("")
    assert existing_entry("tests", key) is None


def test_an_identifier_follows_the_split_it_is_trained_on_not_its_size():
    from mtforget.study.config import CorpusConfig
    from mtforget.study.trial import TrialMemo, _corpus_and_splits, _identifier

    shared = TrialMemo()
    splits = []
    for split_seed in (0, 1):  # the same sizes, other segments
        cfg = CorpusConfig(synthetic={"languages": 3, "segments": 300}, dev_size=20, test_size=20,
                           split_seed=split_seed)
        corpus, split = _corpus_and_splits(cfg, shared)
        splits.append((corpus, split))
    (corpus, a), (_, b) = splits
    assert len(a.train) == len(b.train) and [s.id for s in a.train] != [s.id for s in b.train]
    languages = list(corpus.languages)
    assert _identifier(corpus, a, languages, shared) is _identifier(corpus, a, languages, shared)  # memo
    assert _identifier(corpus, b, languages, shared) is not _identifier(corpus, a, languages, shared)
    assert len(shared.identifiers) == 2


def test_a_hub_base_is_identified_by_its_commit_so_a_branch_that_moved_is_a_new_base(tmp_path):
    """A hub id names a branch that can move on: the base is the commit it resolves to (from the
    local Hugging Face cache here, offline), recorded and part of every key of the base."""
    import shutil
    import subprocess
    import sys
    import textwrap

    from tests.test_families import build_checkpoint

    files = build_checkpoint("llama-plain", tmp_path / "files")
    repo = tmp_path / "hub" / "models--test-org--tiny"
    commits = ["a" * 40, "b" * 40]
    for commit in commits:
        shutil.copytree(files, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    script = textwrap.dedent(f"""
        from pathlib import Path
        from mtforget.models.loading import load_model
        from mtforget.study.trial import LoadedBase, hub_revision
        refs = Path({str(repo / "refs" / "main")!r})
        refs.write_text({commits[0]!r})
        first = hub_revision("test-org/tiny", None)
        model, _ = load_model("test-org/tiny", revision=first)
        refs.write_text({commits[1]!r})  # main moved on
        moved = hub_revision("test-org/tiny", None)
        pinned = hub_revision("test-org/tiny", {commits[0]!r})
        identities = {{LoadedBase("test-org/tiny", model, None, None, [], None, None, revision=r).identity
                       for r in (first, moved)}}
        print(first, moved, pinned, len(identities))
    """)
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [commits[0], commits[1], commits[0], "2"]


def test_a_revision_for_a_local_base_is_an_error_naming_the_key(tmp_path):
    from mtforget.models.loading import load_model
    from tests.test_families import build_checkpoint

    folder = build_checkpoint("llama-plain", tmp_path / "local")
    with pytest.raises(UsageError, match="model.revision: .* is a local directory"):
        load_model(folder, revision="main")
