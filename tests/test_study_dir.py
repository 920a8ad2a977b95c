"""The study directory is the user's: one writer at a time, nothing of theirs touched, files
replaced atomically, a damaged store rebuilt, failures reported truthfully."""

import csv
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mtforget.atomic as atomic
from mtforget.cli import default_out, main
from mtforget.study.directory import LOCK, MARKER, StudyDirRefused, claim_study_dir
from tests.conftest import Kill, tiny_study, watch_trials

ROOT = Path(__file__).resolve().parent.parent


def _rows(out):
    with (out / "results.csv").open() as f:
        return sorted((r["trial_id"], r["src"], r["tgt"], r["metric"], r["base"], r["finetuned"])
                      for r in csv.DictReader(f))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread):
    """A finished one-trial study: its study file, its directory and its result rows."""
    root = tmp_path_factory.mktemp("finished")
    study = root / "study.yaml"
    raw = tiny_study(**{"finetune.size": [32]})
    raw["finetune"].update(batch_size=8, checkpoint_every=1)  # 4 steps, a checkpoint after each of the first 3
    study.write_text(yaml.safe_dump(raw))
    out = root / "out"
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 0
    return study, out, _rows(out)


@pytest.fixture
def copy(finished, tmp_path):
    """A copy of the finished study directory to damage."""
    study, out, rows = finished
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return study, target, rows


def _trained(monkeypatch) -> list[str]:
    trained: list[str] = []
    watch_trials(monkeypatch, lambda trial_id, step, loss: trained.append(trial_id) or loss)
    return trained


# --out and the default output folder.

def test_out_at_a_users_folder_is_exit_2_and_touches_nothing(tmp_path, capsys):
    project = tmp_path / "proj"
    (project / "base_failures").mkdir(parents=True)
    (project / "study.yaml").write_text("# my study, with my comments\n" + yaml.safe_dump(tiny_study()))
    (project / "results.csv").write_text("my,own,table\n")
    (project / "base_failures" / "0123456789abcdef.json").write_text("{}")
    before = _files(project)
    assert main(["run", str(project / "study.yaml"), "--out", str(project), "--no-progress"]) == 2
    assert _errors(capsys) == [f"error: --out {project}: the folder is not empty and is not an mtforget study "
                               f"directory (it has no {MARKER}); mtforget writes only into new, empty or its own "
                               "folders: give --out a new folder"]
    assert _files(project) == before
    (tmp_path / "a-file").write_text("mine")
    assert main(["run", str(project / "study.yaml"), "--out", str(tmp_path / "a-file"), "--no-progress"]) == 2
    assert _errors(capsys) == [f"error: --out {tmp_path / 'a-file'}: is a file, not a study directory; give --out "
                               "a new or empty folder"]
    assert (tmp_path / "a-file").read_text() == "mine"


def test_the_default_output_folder_is_always_a_folder_of_runs(tmp_path, capsys, monkeypatch):
    assert default_out(Path("...yaml")) == Path("runs/study")
    assert default_out(Path("x/.yaml")) == Path("runs/yaml")
    assert default_out(Path("my study.yaml")) == Path("runs/my_study")
    assert default_out(Path("../paper/nllb-600m.yaml")) == Path("runs/nllb-600m")
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"id": "a", "translation": {"en": "caf\xe9"}}\n')  # fails fast, once the folder is made
    Path("...yaml").write_text(yaml.safe_dump({"corpus": {"path": str(corpus)}}))
    assert main(["run", "...yaml", "--no-progress"]) == 2
    assert _errors(capsys) == [f"error: {corpus}:1: not valid UTF-8"]
    assert (tmp_path / "runs" / "study" / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["...yaml", "c.jsonl", "runs"]


def test_an_empty_or_new_folder_becomes_a_study_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        claim_study_dir(out).release()
        assert (out / MARKER).is_file()
    claim_study_dir(tmp_path / "empty").release()  # and stays one


# One writer at a time.

def test_a_second_run_is_exit_2_naming_the_holder_and_report_may_read(copy, capsys):
    study, out, _ = copy
    with claim_study_dir(out):
        before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*") if p.name != LOCK}
        assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 2
        assert _errors(capsys) == [f"error: --out {out}: another mtforget run (pid {os.getpid()}) is writing this "
                                   "study directory; wait for it to end, or give another --out"]
        assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*") if p.name != LOCK} == before
        assert main(["report", str(out)]) == 0  # reading while a run holds the directory


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "s"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from mtforget.study.directory import claim_study_dir; lock = claim_study_dir(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StudyDirRefused, match=f"another mtforget run \\(pid {holder.pid}\\)"):
            claim_study_dir(out)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    claim_study_dir(out).release()  # the kernel dropped the lock with its process


# The store.

def test_a_damaged_store_is_exit_2_for_report_and_rebuilt_by_run(copy, capsys, monkeypatch):
    study, out, rows = copy
    garbage = b"this is not an SQLite database" * 100
    (out / "results.sqlite").write_bytes(garbage)
    for suffix in ("-wal", "-shm"):
        (out / f"results.sqlite{suffix}").unlink(missing_ok=True)
    assert main(["report", str(out)]) == 2
    [err] = _errors(capsys)
    assert err.startswith(f"error: {out / 'results.sqlite'}: file is not a database; run 'mtforget run' on this "
                          "study again (same --out)")
    trained = _trained(monkeypatch)
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 0
    assert "moved it to results.sqlite.unusable-" in capsys.readouterr().err
    assert trained == []  # every finished trial recovered from its result.json
    assert _rows(out) == rows
    [aside] = out.glob("results.sqlite.unusable-*")
    assert aside.read_bytes() == garbage  # kept, not deleted


def test_a_foreign_store_is_moved_aside_and_kept(copy, capsys, monkeypatch):
    study, out, rows = copy
    for path in out.glob("results.sqlite*"):
        path.unlink()
    db = sqlite3.connect(out / "results.sqlite")
    db.execute("CREATE TABLE notes (text TEXT)")
    db.execute("INSERT INTO notes VALUES ('mine')")
    db.commit()
    db.close()
    trained = _trained(monkeypatch)
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 0
    assert "not an mtforget results store (its tables: notes)" in capsys.readouterr().err
    assert trained == [] and _rows(out) == rows
    [aside] = out.glob("results.sqlite.unusable-*")
    assert sqlite3.connect(aside).execute("SELECT text FROM notes").fetchall() == [("mine",)]


def test_report_only_reads_the_store(copy):
    _, out, _ = copy
    digest = hashlib.sha256((out / "results.sqlite").read_bytes()).hexdigest()
    assert main(["report", str(out)]) == 0
    assert hashlib.sha256((out / "results.sqlite").read_bytes()).hexdigest() == digest


def _permissions_apply(folder: Path) -> bool:
    """Whether this process is kept out of a read-only folder (root, with its usual
    capabilities, writes through file permissions)."""
    probe = folder / "probe"
    probe.mkdir()
    probe.chmod(0o500)
    try:
        (probe / "f").write_text("")
    except PermissionError:
        return True
    finally:
        probe.chmod(0o700)
        shutil.rmtree(probe)
    return False


def test_report_in_a_read_only_study_directory(copy, capsys, tmp_path):
    _, out, _ = copy
    if not _permissions_apply(tmp_path):
        pytest.skip("this process writes through file permissions (root)")
    modes = {p: p.stat().st_mode for p in [out, *out.rglob("*")]}
    try:
        for p in [out, *out.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        assert main(["report", str(out)]) == 2
        [err] = _errors(capsys)
        assert err.startswith(f"error: {out}: cannot write the report there (Permission denied); the results "
                              f"themselves are in {out / 'results.sqlite'}")
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


# Exit status and the summary.

def test_failed_trials_are_exit_1_with_an_error_line_each_and_the_summary_escapes_them(finished, tmp_path, capsys,
                                                                                       monkeypatch):
    study, _, _ = finished

    def fail(trial_id, step, loss):
        raise RuntimeError("<img src=x onerror=alert(1)> | broken `here`")

    watch_trials(monkeypatch, fail)
    out = tmp_path / "s"
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 1
    [trial_id] = [p.name for p in (out / "trials").iterdir()]
    assert _errors(capsys) == [f"error: trial {trial_id} failed: RuntimeError: <img src=x onerror=alert(1)> | "
                               "broken `here`"]
    summary = (out / "report" / "summary.md").read_text()
    assert "\\<img src=x onerror=alert(1)> \\| broken \\`here\\`" in summary and "<img" not in summary.replace(
        "\\<img", "")


# Files replaced atomically.

def test_a_kill_around_the_swap_of_result_json_resumes_to_the_same_results(finished, tmp_path, monkeypatch):
    study, _, rows = finished
    real = os.replace
    for after in (False, True):
        out = tmp_path / f"after-{after}"

        def replace(src, dst, *args, after=after, **kwargs):
            if Path(dst).name == "result.json":
                if not after:
                    raise Kill("before the swap")
                real(src, dst, *args, **kwargs)
                raise Kill("after the swap, before the store recorded it")
            return real(src, dst, *args, **kwargs)

        with monkeypatch.context() as patch, pytest.raises(Kill):
            patch.setattr(os, "replace", replace)
            main(["run", str(study), "--out", str(out), "--no-progress"])
        with monkeypatch.context() as patch:
            trained = _trained(patch)
            assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 0
        assert bool(trained) is not after  # after the swap the result is recovered, not recomputed
        assert _rows(out) == rows


@pytest.mark.parametrize("where", ["before the pointer swap", "before the old state is deleted"])
def test_the_same_command_after_a_kill_in_a_checkpoint_save_gives_the_same_results(finished, tmp_path, monkeypatch,
                                                                                     where):
    study, _, rows = finished
    out = tmp_path / "s"
    replace, rmtree = os.replace, shutil.rmtree
    swaps = []

    def killing_replace(src, dst, *args, **kwargs):
        if Path(dst).name == "checkpoint.json":
            swaps.append(dst)
            if where == "before the pointer swap" and len(swaps) == 2:
                raise Kill(where)
        return replace(src, dst, *args, **kwargs)

    def killing_rmtree(path, *args, **kwargs):
        if where == "before the old state is deleted" and Path(path).name.startswith("state-"):
            raise Kill(where)
        return rmtree(path, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(Kill):
        patch.setattr(os, "replace", killing_replace)
        patch.setattr(shutil, "rmtree", killing_rmtree)
        main(["run", str(study), "--out", str(out), "--no-progress"])
    [trial] = (out / "trials").iterdir()
    assert (trial / "checkpoint" / "checkpoint.json").is_file()
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 0
    assert _rows(out) == rows
    result = yaml.safe_load((trial / "result.json").read_text())
    assert result["info"]["train"]["resumed_from"] in (1, 2)


@pytest.mark.parametrize("step", range(4))
def test_an_atomic_write_interrupted_at_any_step_leaves_the_old_file(tmp_path, monkeypatch, step):
    path = tmp_path / "result.json"
    path.write_text("old")
    calls = []

    def failing(name, real):
        def call(*args, **kwargs):
            calls.append(name)
            if len(calls) - 1 == step:
                raise Kill(name)
            return real(*args, **kwargs)
        return call

    with monkeypatch.context() as patch:
        for name in ("replace", "fsync", "open", "close"):
            patch.setattr(os, name, failing(name, getattr(os, name)))
        try:
            atomic.write_json_atomic(path, {"new": True})
        except Kill:
            assert path.read_text() == "old"
        else:
            assert path.read_text().strip() == '{\n  "new": true\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left
