"""Fine-tuning data apart from the evaluation benchmark (finetune.data): streamed, subsampled in one
seeded pass, cached, and never repeating an evaluation or dev sentence."""

import csv
import json

import pytest
import yaml

from mtforget.cli import main
from mtforget.data.bitext import BitextSource, sample_bitext
from mtforget.data.categories import BY_FINETUNING
from mtforget.data.loaders import read_flores
from mtforget.data.splits import split_by_id
from mtforget.data.synthetic import SyntheticWorld
from mtforget.errors import UsageError
from tests.test_families import build_checkpoint

# Synthetic languages under FLORES names, so the benchmark has the FLORES layout and codes.
FLORES = {"en": "eng_Latn", "xa": "ces_Latn", "xb": "deu_Latn", "xc": "heb_Hebr", "xd": "jpn_Jpan"}


def _tsv(path, pairs):
    path.write_text("".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A FLORES-layout benchmark (60 segments) and two TSV bitexts from other segments."""
    root = tmp_path_factory.mktemp("data")
    records = SyntheticWorld(seed=0, n_languages=5).corpus(400, seed=0)
    bench, bitext = records[:60], records[60:]
    (root / "flores" / "devtest").mkdir(parents=True)
    for lang, code in FLORES.items():
        (root / "flores" / "devtest" / f"{code}.devtest").write_text(
            "".join(r["translation"][lang] + "\n" for r in bench), encoding="utf-8")
    for lang in ("xa", "xb"):
        _tsv(root / f"{lang}-en.tsv", [(r["translation"][lang], r["translation"]["en"]) for r in bitext])
    return root


def test_one_pass_sample_is_seeded_even_and_drops_repeats_of_held_out_sentences(tmp_path):
    pairs = [(f"cs {i}", f"en {i}") for i in range(1000)]
    pairs[10] = ("cs 10", "held out")
    pairs[500] = ("also held", "en 500")
    _tsv(tmp_path / "a.tsv", pairs)
    source = [BitextSource(str(tmp_path / "a.tsv"), "tsv", ("cs", "en"))]
    directions = [("cs", "en"), ("en", "cs")]
    held = {"held out", "also held"}
    sample = sample_bitext(source, directions, 100, 10, 0, held)
    assert sample.overlap_dropped == 2  # two lines, each counted once though it serves two directions
    assert sample.available == {"cs-en": 998, "en-cs": 998}
    assert len(sample.train) == 100 and len(sample.dev) == 10
    assert sum(e.src_lang == "cs" for e in sample.train) == 50
    train_pairs = {(e.src, e.tgt) for e in sample.train}
    assert not {(e.src, e.tgt) for e in sample.dev} & train_pairs  # dev and train disjoint per direction
    assert not any(e.src in held or e.tgt in held for e in sample.train + sample.dev)
    again = sample_bitext(source, directions, 100, 10, 0, held)
    assert [(e.src, e.tgt) for e in again.train] == [(e.src, e.tgt) for e in sample.train]
    other = sample_bitext(source, directions, 100, 10, 1, held)
    assert {(e.src, e.tgt) for e in other.train} != train_pairs
    # Reservoir sampling reaches the whole file, not its head.
    assert max(int(e.src.split()[-1]) for e in sample.train if e.src_lang == "cs") > 500
    with pytest.raises(UsageError, match="finetune.size: 5000 pairs asked for, but finetune.data gives only"):
        sample_bitext(source, directions, 5000, 10, 0, held)
    with pytest.raises(UsageError, match="devtest: FLORES split folder not found"):
        sample_bitext([BitextSource(str(tmp_path), "flores", flores_splits=("devtest",))], directions, 10, 2, 0, held)


def test_study_with_tsv_finetune_data_and_a_flores_benchmark_on_a_checkpoint(world, tmp_path, capsys):
    ckpt = tmp_path / "nllb"
    build_checkpoint("nllb", ckpt)
    flores = read_flores(world / "flores")
    splits = split_by_id(flores, 15, 40)
    held = [s.translation for s in splits.test[:2]] + [s.translation for s in splits.dev[:1]]
    train_only = splits.train[0].translation  # not held out: must stay
    # Hand-made overlap: three bitext lines that repeat an evaluation or dev sentence on one side,
    # one that repeats a benchmark sentence outside test and dev.
    with (world / "xa-en.tsv").open("a", encoding="utf-8") as f:
        f.write(f"{held[0]['cs']}\tnot in the benchmark\n")
        f.write(f"not in the benchmark either\t{held[1]['en']}\n")
        f.write(f"{train_only['cs']}\tand this one is fine\n")
    with (world / "xb-en.tsv").open("a", encoding="utf-8") as f:
        f.write(f"{held[2]['de']}\t{held[2]['en']}\n")
    study = {
        "model": {"path": str(ckpt)},
        "corpus": {"path": str(world / "flores"), "format": "flores", "dev_size": 15, "test_size": 40},
        "finetune": {"data": [{"path": str(world / "xa-en.tsv"), "format": "tsv", "tsv_languages": ["cs", "en"]},
                              {"path": str(world / "xb-en.tsv"), "format": "tsv", "tsv_languages": ["de", "en"]}],
                     "directions": ["cs-en", "en-cs", "de-en", "en-de", "cs-de"],
                     "size": 60, "dev_size": 10, "batch_size": 16, "epochs": 1, "lr": 1e-3},
        "eval": {"max_sentences": 20, "max_new_tokens": 8, "representations": False,
                 "base_gate": {"include_flagged": True}},  # a random checkpoint translates nothing
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2  # cs-de has no pairs in the bitext: an error naming the size, before training
    assert "finetune.size: 60 pairs asked for" in capsys.readouterr().err
    study["finetune"]["directions"] = ["cs-en", "en-cs", "de-en", "en-de"]
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    result = json.loads(next((tmp_path / "out" / "trials").glob("*/result.json")).read_text())
    assert result["info"]["overlap_dropped"] == 3
    assert result["info"]["finetune_examples"] == 60 and result["info"]["missing_directions"] == []
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["category"] for r in rows} == set(BY_FINETUNING)
    assert "overlap dropped" in (tmp_path / "out" / "report" / "summary.md").read_text()


def test_per_direction_test_sets_report_the_directions_they_lack(tmp_path):
    ckpt = tmp_path / "nllb"
    build_checkpoint("nllb", ckpt)
    # WMT-style: every line is one pair, en-xa or en-xb; nothing pairs xa with xb.
    records = SyntheticWorld(seed=0, n_languages=3).corpus(400, seed=0)
    corpus = tmp_path / "wmt.jsonl"
    with corpus.open("w", encoding="utf-8") as f:
        for i, r in enumerate(records):
            other = "xa" if i % 2 else "xb"
            pair = {"en": r["translation"]["en"], other: r["translation"][other]}
            f.write(json.dumps({"id": f"s{i}", "translation": pair}) + "\n")
    study = {"model": {"path": str(ckpt)}, "corpus": {"path": str(corpus), "dev_size": 20, "test_size": 60},
             "finetune": {"directions": ["en-xa", "xa-en"], "size": 40, "dev_size": 10, "batch_size": 16,
                          "epochs": 1},
             "eval": {"max_sentences": 20, "max_new_tokens": 8, "representations": False,
                      "base_gate": {"include_flagged": True}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    result = json.loads(next((tmp_path / "out" / "trials").glob("*/result.json")).read_text())
    assert sorted(result["info"]["missing_directions"]) == ["xa-xb", "xb-xa"]
    trial_rows = [line for line in (tmp_path / "out" / "report" / "summary.md").read_text().splitlines()
                  if line.startswith("| ckpt-") and "| done |" in line]
    assert len(trial_rows) == 1 and "xa-xb" in trial_rows[0] and "xb-xa" in trial_rows[0]
