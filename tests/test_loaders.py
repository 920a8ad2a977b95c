"""Corpus formats and language-code normalisation."""

import json

import pytest

from mtforget.data.corpus import read_jsonl
from mtforget.data.languages import normalize_code
from mtforget.data.loaders import load_corpus, read_flores, read_tsv
from mtforget.errors import UsageError

REAL_CODES = {
    "de": "de", "deu": "de", "deu_Latn": "de", "ger": "de", "de-DE": "de_DE", "eng_Latn": "en",
    "zho_Hans": "zh_Hans", "zho_Hant": "zh_Hant", "zh-hans": "zh_Hans", "zh_Hans": "zh_Hans",
    "pt_BR": "pt_BR", "pt-br": "pt_BR", "por_Latn": "pt", "arb_Arab": "ar", "pes_Arab": "fa",
    "srp_Cyrl": "sr_Cyrl", "nob_Latn": "nb", "jpn_Jpan": "ja", "heb_Hebr": "he", "ukr_Cyrl": "uk",
    "es-419": "es_419", "ast_Latn": "ast", "xa": "xa",
}


@pytest.mark.parametrize("code, expected", REAL_CODES.items())
def test_code_normalisation(code, expected):
    assert normalize_code(code) == expected


def _flores(root, split, texts):
    (root / split).mkdir(parents=True, exist_ok=True)
    for code, lines in texts.items():
        (root / split / f"{code}.{split}").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_flores_layout(tmp_path):
    root = tmp_path / "flores200_dataset"
    _flores(root, "dev", {"eng_Latn": ["Hello.", "Good night."], "deu_Latn": ["Hallo.", "Gute Nacht."],
                          "zho_Hans": ["你好。", "晚安。"]})
    _flores(root, "devtest", {"eng_Latn": ["Thanks."], "deu_Latn": ["Danke."], "zho_Hans": ["谢谢。"]})
    (root / "README").mkdir()  # not a split: no language files, ignored only when splits are named
    corpus = read_flores(root, ["dev", "devtest"])
    assert corpus.languages == ("de", "en", "zh_Hans")
    assert [s.id for s in corpus.segments] == ["dev-0", "dev-1", "devtest-0"]
    assert corpus.segments[1].translation == {"de": "Gute Nacht.", "en": "Good night.", "zh_Hans": "晚安。"}
    assert read_flores(root, ["devtest"]).segments[0].translation["en"] == "Thanks."


def test_flores_misaligned_files_are_an_error(tmp_path):
    _flores(tmp_path, "dev", {"eng_Latn": ["a", "b"], "deu_Latn": ["a"]})
    with pytest.raises(UsageError, match="line-aligned"):
        read_flores(tmp_path)


def test_tsv_bitext(tmp_path):
    path = tmp_path / "bitext.tsv"
    path.write_text("Hello.\tHallo.\nThanks.\tDanke.\n", encoding="utf-8")
    corpus = read_tsv(path, ["eng", "deu"])
    assert corpus.languages == ("en", "de") and len(corpus.segments) == 2
    path.write_text("Hello.\tHallo.\nbroken line\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"bitext.tsv:2: expected 2 tab-separated columns"):
        read_tsv(path, ["en", "de"])


def test_hf_datasets_builder_on_a_local_file(tmp_path):
    path = tmp_path / "wmt.json"
    path.write_text("\n".join(json.dumps({"translation": {"de": f"Satz {i}", "en": f"sentence {i}"}})
                              for i in range(5)) + "\n", encoding="utf-8")
    corpus = load_corpus("hf", str(path))
    assert corpus.languages == ("de", "en") and len(corpus.segments) == 5


def test_jsonl_codes_are_normalised_and_duplicates_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "a", "translation": {"eng_Latn": "hi", "deu_Latn": "hallo"}}) + "\n")
    assert read_jsonl(path).languages == ("en", "de")
    path.write_text(json.dumps({"id": "a", "translation": {"de": "hallo", "deu_Latn": "hallo"}}) + "\n")
    with pytest.raises(UsageError, match="c.jsonl:1: 'deu_Latn' names the same language"):
        read_jsonl(path)
