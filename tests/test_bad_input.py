"""Every bad input is exit 2 with one ``error:`` line naming the file and, where there is one, the
line: study files (bytes, duplicate keys, alias bombs), ``--set`` values, and corpora in every
format (bytes, BOM, NUL, directories, unreadable files, a single language)."""

from pathlib import Path

import pytest
import yaml

import mtforget.study.config as config
from mtforget.cli import main
from mtforget.data.corpus import read_jsonl
from mtforget.data.loaders import read_flores, read_tsv
from mtforget.errors import UsageError
from mtforget.study.config import load_study

UNREADABLE = Path("/proc/self/mem")  # exists, is a file, and every read of it fails (EIO)
LINE = '{"id": "%s", "translation": {"en": "hello %s", "de": "hallo %s"}}\n'


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def _run(capsys, path, *args, out=None) -> tuple[int, str]:
    code = main(["run", str(path), "--no-progress", *args] + (["--out", str(out)] if out else []))
    return code, _error(capsys)


# The study file.

@pytest.mark.parametrize("content, message", [
    (b"model:\n  tiny: small\nname: caf\xe9\n", ":3: not valid UTF-8"),
    (b"model:\n  tiny: small\nname: a\x00b\n", ":3: contains a NUL character"),
])
def test_study_file_bytes_are_named_by_line(tmp_path, capsys, content, message):
    path = tmp_path / "s.yaml"
    path.write_bytes(content)
    code, err = _run(capsys, path, out=tmp_path / "o")
    assert code == 2 and err == f"error: {path}{message}"
    assert not (tmp_path / "o").exists()  # nothing written


def test_study_file_bom_is_accepted(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: with-bom\nmodel:\n  tiny: base\n")
    study = load_study(path)
    assert study.name == "with-bom" and study.model.tiny == "base"


def test_study_file_that_is_a_directory_or_unreadable(tmp_path, capsys):
    code, err = _run(capsys, tmp_path, out=tmp_path / "o")
    assert code == 2 and err == f"error: {tmp_path}: is a directory, not a study file"
    if UNREADABLE.is_file():
        code, err = _run(capsys, UNREADABLE, out=tmp_path / "o")
        assert code == 2 and err.startswith(f"error: {UNREADABLE}: cannot read (")


@pytest.mark.parametrize("text, message", [
    ("finetune:\n  size: 10\n  method: lora\nmodel:\n  tiny: small\nfinetune:\n  lr: 0.1\n",
     ":6: duplicate key 'finetune' (first on line 1)"),
    ("finetune:\n  size: 10\n  method: lora\n  size: 20\n", ":4: duplicate key 'size' (first on line 2)"),
    ("grid:\n  - finetune.size: [1]\n    finetune.size: [2]\n", ":3: duplicate key 'finetune.size' (first on line 2)"),
])
def test_a_duplicate_key_anywhere_names_the_key_and_both_lines(tmp_path, capsys, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    code, err = _run(capsys, path, out=tmp_path / "o")
    assert code == 2 and err.startswith(f"error: {path}{message}")


def test_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("model: &m {tiny: small, seed: 1}\ncorpus: {synthetic: {seed: 2}}\n"
                    "grid: {model: [{<<: *m, seed: 3}]}\n")
    assert load_study(path).grid == {"model": [{"tiny": "small", "seed": 3}]}


def test_an_alias_bomb_is_refused_before_anything_is_expanded(tmp_path, capsys, monkeypatch):
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("model:\n  tiny: small\nunknown:\n" + "".join(f"  {line}\n" for line in lines))

    def expanded(raw):
        raise AssertionError("the study was copied out before it was checked")

    monkeypatch.setattr(config, "_deep_copy", expanded)
    code, err = _run(capsys, path, out=tmp_path / "o")
    assert code == 2 and err.startswith(f"error: {path}: expands to more than 200,000 values through YAML aliases")


def test_a_self_containing_alias_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("model: &m\n  tiny: small\n  again: *m\n")
    code, err = _run(capsys, path, out=tmp_path / "o")
    assert code == 2 and err.startswith(f"error: {path}: expands to more than")


# --set values.

@pytest.mark.parametrize("override, message", [
    ("finetune.size=abc", "error: --set finetune.size=abc: finetune.size: Input should be a valid integer"),
    ("grid.finetune.size=[8, 0]", "error: --set grid.finetune.size=[8, 0]: grid (finetune.size=0): finetune.size:"),
    ("grid.grid=[1]", "error: --set grid.grid=[1]: a grid axis is a study key such as finetune.size; 'grid' "
                      "itself cannot be one"),
    ("finetune={size: 1, size: 2}", "error: --set finetune={size: 1, size: 2}: duplicate key 'size'"),
    ("finetune.size=[", "error: --set finetune.size=[: not valid YAML"),
])
def test_errors_about_a_set_value_name_set(tmp_path, capsys, override, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"model": {"tiny": "small"}}))
    code, err = _run(capsys, path, "--set", override, out=tmp_path / "o")
    assert code == 2 and err.startswith(message), err


def test_a_bad_value_in_the_study_file_still_names_the_file(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"finetune": {"size": "abc"}}))
    code, err = _run(capsys, path, "--set", "finetune.lr=0.1", out=tmp_path / "o")
    assert code == 2 and err.startswith(f"error: {path}: finetune.size:")


# Corpora: one rule in every reader.

def _write_corpora(tmp_path, lines: list[bytes]) -> dict:
    """The same two-language lines as JSON lines, TSV and a FLORES folder."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_bytes(b"".join(b'{"id": "s%d", "translation": {"en": "%s", "de": "%s"}}\n' % (i, t, t)
                               for i, t in enumerate(lines)))
    tsv = tmp_path / "c.tsv"
    tsv.write_bytes(b"".join(t + b"\t" + t + b"\n" for t in lines))
    split = tmp_path / "flores" / "dev"
    split.mkdir(parents=True)
    for code in ("eng_Latn", "deu_Latn"):
        (split / f"{code}.dev").write_bytes(b"".join(t + b"\n" for t in lines))
    return {"jsonl": (jsonl, lambda: read_jsonl(jsonl)), "tsv": (tsv, lambda: read_tsv(tsv, ["en", "de"])),
            "flores": (split / "deu_Latn.dev", lambda: read_flores(tmp_path / "flores"))}


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "flores"])
@pytest.mark.parametrize("bad, message", [(b"caf\xe9", "not valid UTF-8"), (b"a\x00b", "contains a NUL character")])
def test_corpus_bytes_are_named_by_file_and_line(tmp_path, fmt, bad, message):
    path, read = _write_corpora(tmp_path, [b"one", b"two", bad, b"four"])[fmt]
    with pytest.raises(UsageError, match=f"^{path}:3: {message}$"):
        read()


@pytest.mark.parametrize("fmt", ["jsonl", "tsv", "flores"])
def test_a_bom_is_accepted_and_stripped_in_every_reader(tmp_path, fmt):
    plain = _write_corpora(tmp_path / "plain", [b"one", b"two"])[fmt][1]()
    path, read = _write_corpora(tmp_path / "bom", [b"one", b"two"])[fmt]
    if fmt == "flores":  # a BOM in each language file
        for f in path.parent.iterdir():
            f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    else:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [s.translation for s in read().segments] == [s.translation for s in plain.segments]


def test_flores_lines_are_split_on_newline_only(tmp_path):
    corpus = _write_corpora(tmp_path, ["a\u2028b".encode(), b"c\rd", b"e"])["flores"][1]()
    assert len(corpus.segments) == 3  # as wc -l counts


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_a_directory_where_a_corpus_file_is_expected(tmp_path, fmt):
    with pytest.raises(UsageError, match=f"^{tmp_path}: is a directory, not a corpus file$"):
        read_jsonl(tmp_path) if fmt == "jsonl" else read_tsv(tmp_path, ["en", "de"])


def _demo(capsys, tmp_path, corpus) -> tuple[int, str]:
    code = main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "o"), "--set", f"corpus.path={corpus}"])
    return code, _error(capsys)


def test_a_corpus_with_invalid_utf8_is_exit_2_naming_file_and_line(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes((LINE % ("a", "a", "a")).encode() + b'{"id": "b", "translation": {"en": "caf\xe9"}}\n')
    code, err = _demo(capsys, tmp_path, corpus)
    assert code == 2 and err == f"error: {corpus}:2: not valid UTF-8"


def test_a_corpus_of_one_language_is_exit_2(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join('{"id": "s%d", "translation": {"en": "hello %d"}}\n' % (i, i) for i in range(400)))
    code, err = _demo(capsys, tmp_path, corpus)
    assert code == 2 and err == f"error: {corpus}: the corpus has 1 language (en); a study needs at least two"


def test_an_unreadable_or_directory_corpus_is_exit_2(tmp_path, capsys):
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    code, err = _demo(capsys, tmp_path, folder)
    assert code == 2 and err == f"error: {folder}: is a directory, not a corpus file"
    if UNREADABLE.is_file():
        code, err = _demo(capsys, tmp_path, UNREADABLE)
        assert code == 2 and err.startswith(f"error: {UNREADABLE}: cannot read (")
