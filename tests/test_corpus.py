import json

import pytest

from mtforget.data.corpus import corpus_from_records, read_jsonl
from mtforget.data.splits import sample_directions, split_by_id
from mtforget.data.synthetic import SyntheticWorld
from mtforget.errors import UsageError


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_multi_parallel_lines_with_missing_languages(tmp_path):
    path = _write(tmp_path / "c.jsonl", [
        json.dumps({"id": "a", "translation": {"en": "hello  world", "de": "hallo welt"}}),
        "",
        json.dumps({"id": "b", "translation": {"en": "good day", "pt_BR": "bom dia", "zh_Hans": "你好"}}),
    ])
    corpus = read_jsonl(path)
    assert corpus.languages == ("en", "de", "pt_BR", "zh_Hans")
    assert corpus.segments[0].translation["en"] == "hello world"  # whitespace normalised
    assert corpus.language_counts() == {"en": 2, "de": 1, "pt_BR": 1, "zh_Hans": 1}


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"id": "x"}', "'translation'"),
    ('{"id": "x", "translation": {"english!": "hi"}}', "not a language code"),
    ('{"id": "x", "translation": {"en": 3}}', "not a string"),
    ('{"id": "a", "translation": {"en": "again"}}', "duplicate segment id 'a'"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    good = json.dumps({"id": "a", "translation": {"en": "hi", "de": "hallo"}})
    path = _write(tmp_path / "bad.jsonl", [good, good.replace('"a"', '"b"'), line])
    with pytest.raises(UsageError) as err:
        read_jsonl(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_split_is_disjoint_by_segment_and_independent_of_file_order():
    records = SyntheticWorld(seed=0, n_languages=4).corpus(500, seed=0)
    corpus = corpus_from_records(records, "world")
    splits = split_by_id(corpus, dev_size=50, test_size=40, seed=0)
    train, dev, test = ({s.id for s in part} for part in (splits.train, splits.dev, splits.test))
    assert len(test) == 40 and len(dev) == 50 and len(train) == 410
    assert not (train & dev) and not (train & test) and not (dev & test)
    # No test sentence appears in training in any language.
    train_texts = {t for s in splits.train for t in s.translation.values()}
    assert not any(t in train_texts for s in splits.test for t in s.translation.values())
    shuffled = corpus_from_records(list(reversed(records)), "world")
    assert {s.id for s in split_by_id(shuffled, 50, 40, 0).test} == test


def test_subsampling_is_deterministic_and_balanced():
    corpus = corpus_from_records(SyntheticWorld(seed=0, n_languages=4).corpus(300, seed=0), "world")
    directions = [("en", "xa"), ("xa", "en"), ("en", "xb")]
    a = sample_directions(corpus.segments, directions, 100, seed=3)
    assert a == sample_directions(corpus.segments, directions, 100, seed=3)
    assert a != sample_directions(corpus.segments, directions, 100, seed=4)
    counts = {d: sum((e.src_lang, e.tgt_lang) == d for e in a) for d in directions}
    assert counts == {("en", "xa"): 34, ("xa", "en"): 33, ("en", "xb"): 33}


def test_long_segments_can_be_dropped():
    corpus = corpus_from_records([{"id": "a", "translation": {"en": "one two three", "de": "eins zwei drei"}},
                                  {"id": "b", "translation": {"en": "one two three four five", "de": "eins"}},
                                  {"id": "c", "translation": {"en": "short", "ja": "あ" * 40}}], "c")
    assert [s.id for s in corpus.without_long_segments(3).segments] == ["a"]
    with pytest.raises(UsageError, match="corpus.max_words"):
        corpus.without_long_segments(0)
