"""COMET through the subprocess protocol, with a stand-in scorer in place of a real checkpoint."""

import csv
import sys
from pathlib import Path

import pytest
import yaml

from mtforget.cli import main
from mtforget.errors import UsageError
from mtforget.evaluate.comet import comet_scores
from tests.conftest import tiny_study

STAND_IN = str(Path(__file__).parent / "fixtures" / "stand_in_comet.py")


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_text("stand-in checkpoint")
    return str(path)


def test_scores_come_back_in_order(checkpoint):
    triples = [("a", "the cat", "the cat"), ("b", "xyz", "the dog"), ("same", "same", "other")]
    scores = comet_scores(triples, sys.executable, checkpoint, STAND_IN)
    assert scores[0] == 1.0 and scores[1] < 0.5 and scores[2] == 0.66


def test_unavailable_comet_is_a_clear_usage_error(tmp_path, checkpoint):
    with pytest.raises(UsageError, match="eval.comet.python: /nope/python does not exist"):
        comet_scores([("a", "b", "c")], "/nope/python", checkpoint, STAND_IN)
    with pytest.raises(UsageError, match="eval.comet.checkpoint"):
        comet_scores([("a", "b", "c")], sys.executable, str(tmp_path / "missing.ckpt"), STAND_IN)
    # The real scorer in an environment without unbabel-comet:
    pytest.importorskip("transformers")
    try:
        import comet  # noqa: F401
        pytest.skip("unbabel-comet is installed here")
    except ImportError:
        pass
    with pytest.raises(UsageError, match="has no unbabel-comet"):
        comet_scores([("a", "b", "c")], sys.executable, checkpoint)


def test_study_with_comet(tmp_path, checkpoint, capsys):
    raw = tiny_study(**{"finetune.size": [16]})
    raw["eval"]["metrics"] = ["comet"]
    raw["eval"]["comet"] = {"python": sys.executable, "checkpoint": checkpoint, "scorer": STAND_IN}
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 0
    with (out / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "comet"]
    assert len(rows) == 20
    for r in rows:
        assert 0 <= float(r["base"]) <= 100 and float(r["delta_low"]) <= float(r["delta_high"])
        assert float(r["source_copy"]) >= 66.0  # the stand-in, like COMET, rewards copying
    assert "COMET delta" in (out / "report" / "summary.md").read_text()

    raw["eval"]["comet"]["python"] = "/nope/python"
    study.write_text(yaml.safe_dump(raw))
    assert main(["run", str(study), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "error: eval.comet.python: /nope/python does not exist" in capsys.readouterr().err


def test_comet_metric_needs_its_settings(tmp_path, capsys):
    raw = tiny_study()
    raw["eval"]["metrics"] = ["comet"]
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    assert main(["run", str(study), "--out", str(tmp_path / "o")]) == 2
    assert "eval.comet" in capsys.readouterr().err
