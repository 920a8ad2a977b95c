"""Tests for the synthetic multilingual world (mtforget.data.synthetic)."""

from __future__ import annotations

import difflib
import itertools
import json
import random
import statistics

import pytest

from mtforget.data.synthetic import (
    CONCEPTS,
    MAX_LANGUAGES,
    NOUNS,
    Clause,
    Meaning,
    NounPhrase,
    SyntheticWorld,
    write_jsonl,
)

N_SEGMENTS = 2000


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=0)


@pytest.fixture(scope="module")
def records(world: SyntheticWorld) -> list[dict]:
    return world.corpus(N_SEGMENTS, seed=0)


def _in_block(text: str, low: int, high: int) -> bool:
    """All letters of ``text`` lie in the Unicode block [low, high]."""
    letters = [ch for ch in text if not ch.isspace()]
    return bool(letters) and all(low <= ord(ch) <= high for ch in letters)


def test_same_seeds_give_identical_records(records: list[dict]) -> None:
    again = SyntheticWorld(seed=0).corpus(N_SEGMENTS, seed=0)
    assert json.dumps(again, ensure_ascii=False) == json.dumps(records, ensure_ascii=False)


def test_world_seed_changes_lexicon_but_not_english() -> None:
    a, b = SyntheticWorld(seed=0), SyntheticWorld(seed=1)
    assert [a.word("xa", c) for c in CONCEPTS] != [b.word("xa", c) for c in CONCEPTS]
    # Meanings come from the corpus seed only, so the pivot side is shared.
    assert [r["translation"]["en"] for r in a.corpus(50)] == [
        r["translation"]["en"] for r in b.corpus(50)
    ]


def test_corpus_seed_changes_sampling(world: SyntheticWorld, records: list[dict]) -> None:
    other = world.corpus(50, seed=1)
    assert [r["translation"]["en"] for r in other] != [r["translation"]["en"] for r in records[:50]]


def test_default_languages(world: SyntheticWorld) -> None:
    codes = [lang.code for lang in world.languages]
    assert len(codes) >= 9
    assert codes[0] == "en"
    assert codes == world.codes
    assert len(set(codes)) == len(codes)
    assert all(code.startswith("x") and len(code) == 2 for code in codes[1:])
    assert world.languages[0].family == "pivot"
    names = [lang.name for lang in world.languages]
    assert len(set(names)) == len(names)


def test_non_latin_scripts_really_use_their_letters(world: SyntheticWorld, records: list[dict]) -> None:
    blocks = {"Cyrl": (0x0400, 0x04FF), "Grek": (0x0370, 0x03FF)}
    scripts = {lang.code: lang.script for lang in world.languages}
    assert any(script in blocks for script in scripts.values())
    for code, script in scripts.items():
        sentence = records[0]["translation"][code]
        if script in blocks:
            assert _in_block(sentence, *blocks[script]), (code, sentence)
        else:
            assert _in_block(sentence, 0x61, 0x7A), (code, sentence)


def test_records_are_complete_and_unique(world: SyntheticWorld, records: list[dict]) -> None:
    assert [r["id"] for r in records] == [f"s{i}" for i in range(N_SEGMENTS)]
    english = [r["translation"]["en"] for r in records]
    assert len(set(english)) == len(english)
    for record in records:
        assert list(record["translation"]) == world.codes
        assert all(record["translation"].values())
    # One meaning, one realisation: distinct meanings stay distinct in every language.
    for code in world.codes:
        sentences = [r["translation"][code] for r in records]
        assert len(set(sentences)) == len(sentences), code


@pytest.mark.parametrize("seed", range(8))
def test_every_language_is_unambiguous_across_seeds(seed: int) -> None:
    world = SyntheticWorld(seed=seed, n_languages=MAX_LANGUAGES)
    records = world.corpus(800, seed=seed)
    for code in world.codes:
        sentences = [r["translation"][code] for r in records]
        assert len(set(sentences)) == len(sentences), (seed, code)


def test_english_sentence_lengths(records: list[dict]) -> None:
    lengths = [len(r["translation"]["en"].split()) for r in records]
    assert min(lengths) >= 3
    assert max(lengths) <= 12
    assert 5 <= statistics.mean(lengths) <= 9


def test_related_languages_share_roots(world: SyntheticWorld) -> None:
    family = {lang.code: lang.family for lang in world.languages}
    same, different = [], []
    for a, b in itertools.combinations(world.codes[1:], 2):
        ratio = statistics.mean(
            difflib.SequenceMatcher(None, world.word(a, n, romanized=True), world.word(b, n, romanized=True)).ratio()
            for n in NOUNS
        )
        (same if family[a] == family[b] else different).append(ratio)
    assert same and different
    assert statistics.mean(same) > statistics.mean(different) + 0.2


def test_word_orders_differ(world: SyntheticWorld) -> None:
    assert len({lang.word_order for lang in world.languages}) >= 3


def test_realise_english_morphology(world: SyntheticWorld) -> None:
    meaning = Meaning((
        Clause(NounPhrase("dog", "the", "big"), "see", True, NounPhrase("cat", "two", "red"),
               "near", NounPhrase("river", "the")),
        Clause(NounPhrase("box", "a", "old"), "carry", False),
    ))
    assert world.realise(meaning, "en") == (
        "the big dog saw two red cats near the river and an old box carries"
    )
    for code in world.codes:
        assert world.realise(meaning, code) == world.realise(meaning, code)


def test_sample_meaning_is_deterministic(world: SyntheticWorld) -> None:
    first = [world.sample_meaning(random.Random(7)) for _ in range(3)]
    second = [world.sample_meaning(random.Random(7)) for _ in range(3)]
    assert first == second


def test_language_identity_does_not_depend_on_world_size() -> None:
    small, large = SyntheticWorld(seed=3, n_languages=4), SyntheticWorld(seed=3, n_languages=MAX_LANGUAGES)
    assert large.languages[: len(small.languages)] == small.languages
    assert [small.word("xc", c) for c in CONCEPTS] == [large.word("xc", c) for c in CONCEPTS]


@pytest.mark.parametrize("n_languages", [1, MAX_LANGUAGES + 1])
def test_bad_language_count_rejected(n_languages: int) -> None:
    with pytest.raises(ValueError):
        SyntheticWorld(n_languages=n_languages)


def test_too_many_segments_rejected(world: SyntheticWorld) -> None:
    assert world.meaning_space_size() >= 100_000
    with pytest.raises(ValueError, match="distinct meanings"):
        world.corpus(world.meaning_space_size() + 1)


def test_write_jsonl_roundtrip(tmp_path, records: list[dict]) -> None:
    path = tmp_path / "sub" / "corpus.jsonl"
    write_jsonl(records[:20], path)
    text = path.read_text(encoding="utf-8")
    assert [json.loads(line) for line in text.splitlines()] == records[:20]
    assert "\\u" not in text  # non-ASCII kept as is
    assert [p.name for p in path.parent.iterdir()] == ["corpus.jsonl"]  # no temp file left
