"""The demo's bases shipped in the package: the manifest must describe today's synthetic world and
recipes (a change to either fails here until `mtforget bases build` is run again), the bases must
meet the demo's quality and size targets, and any mismatch must pre-train instead of loading."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from mtforget.bases import prebuilt, tiny
from mtforget.bases.prebuilt import (MAX_BYTES, PREBUILT_DIR, load_manifest, mismatch, normalized_recipe,
                                     prebuilt_base, world_fingerprint)
from mtforget.bases.specs import TINY_NAMES, TINY_SPECS
from mtforget.study.config import parse_study
from mtforget.study.demo import demo_study
from mtforget.study.trial import TrialMemo, _corpus_and_splits, _language_names
from tests.conftest import tiny_study

REBUILD = "the shipped bases are stale: run `mtforget bases build` and commit mtforget/bases/prebuilt"


@pytest.fixture(scope="module")
def demo_world():
    study = parse_study(demo_study(), "demo")
    corpus, splits = _corpus_and_splits(study.corpus, TrialMemo())
    return study, corpus, splits, _language_names(study.corpus)


@pytest.fixture(scope="module")
def manifest():
    found = load_manifest()
    assert found is not None, f"no {PREBUILT_DIR}/manifest.json ({REBUILD})"
    return found


def test_manifest_matches_the_demo_world_and_recipes(demo_world, manifest):
    """Every shipped base is the one the demo would pre-train: same recipe, world, seed, files."""
    study, corpus, splits, names = demo_world
    world = world_fingerprint(corpus, splits, names)
    assert set(manifest["bases"]) == set(TINY_NAMES)
    for name in TINY_NAMES:
        mix = dict(study.model.pretrain_mix)
        reason = mismatch(name, manifest["bases"][name], world, study.model.seed, mix=mix)
        assert reason is None, f"tiny:{name}: {reason}; {REBUILD}"
        assert prebuilt_base(name, corpus, splits, study.model.seed, None, names, mix=mix) == PREBUILT_DIR / name


def test_shipped_bases_meet_the_demo_targets(manifest):
    """Bases, matched and small: the targets the demo's contrasts rely on. Every direction clears
    the base-quality gate (a flagged one would leave the demo's categories), the mean is that of a
    usable base, and the two sizes, like the two decoder styles, are compared at matched quality."""
    bases = manifest["bases"]
    assert all(b["mean_chrf"] >= 70 for b in bases.values()), {n: b["mean_chrf"] for n, b in bases.items()}
    assert {n: b["gate_flagged"] for n, b in bases.items() if b["gate_flagged"]} == {}
    small, base = bases["small"], bases["base"]
    assert base["parameters"] >= 4 * small["parameters"]
    assert abs(base["mean_chrf"] - small["mean_chrf"]) <= 5
    for name in ("lm", "lm-instruct"):
        assert 0.8 <= bases[name]["parameters"] / small["parameters"] <= 1.2
    assert abs(bases["lm-instruct"]["mean_chrf"] - bases["lm"]["mean_chrf"]) <= 5
    total = sum(f.stat().st_size for f in PREBUILT_DIR.rglob("*") if f.is_file())
    assert total <= MAX_BYTES
    assert sorted(p.name for p in PREBUILT_DIR.rglob("*.safetensors")) == ["model.safetensors"] * len(TINY_NAMES)
    instruct = json.loads((PREBUILT_DIR / "lm-instruct" / "mtforget_base.json").read_text())
    assert instruct["style"] == "chat template" and (PREBUILT_DIR / "lm-instruct" / "chat_template.jinja").is_file()


def _fake_shipped(tmp_path, corpus, splits, name="small", seed=0):
    """A manifest under ``tmp_path`` that declares a one-file base ``name`` built for ``corpus``."""
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text("{}")
    entry = {"recipe": normalized_recipe(name), "world": world_fingerprint(corpus, splits, None), "seed": seed,
             "files": {"config.json": prebuilt.file_digest(tmp_path / name / "config.json")}}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": prebuilt.MANIFEST_FORMAT, "bases": {name: entry}}))
    return tmp_path / name


def test_any_mismatch_pretrains_instead(tmp_path, monkeypatch):
    """A matching manifest is used; a changed recipe, world, seed, step budget or file is not,
    and then tiny_base pre-trains as before (as it does with prebuilt=False)."""
    cfg = parse_study(tiny_study(), "x")
    corpus, splits = _corpus_and_splits(cfg.corpus, TrialMemo())
    shipped = _fake_shipped(tmp_path, corpus, splits)
    assert prebuilt_base("small", corpus, splits, 0, None, None, tmp_path) == shipped
    assert prebuilt_base("small", corpus, splits, 1, None, None, tmp_path) is None  # seed
    assert prebuilt_base("small", corpus, splits, 0, 40, None, tmp_path) is None  # a budget of its own
    assert prebuilt_base("small", corpus, splits, 0, None, None, tmp_path, mix={"xa": 0.1}) is None  # the mix
    other = parse_study({**tiny_study(), "corpus": {**tiny_study()["corpus"], "split_seed": 7}}, "x")
    assert prebuilt_base("small", *_corpus_and_splits(other.corpus, TrialMemo()), 0, None, None, tmp_path) is None
    monkeypatch.setitem(TINY_SPECS, "small", dataclasses.replace(TINY_SPECS["small"], lr=1e-3))  # recipe
    assert prebuilt_base("small", corpus, splits, 0, None, None, tmp_path) is None
    monkeypatch.undo()
    (shipped / "config.json").write_text('{"damaged": true}')
    assert prebuilt_base("small", corpus, splits, 0, None, None, tmp_path) is None
    shutil.rmtree(shipped)
    assert prebuilt_base("small", corpus, splits, 0, None, None, tmp_path) is None

    built = []
    monkeypatch.setattr(tiny, "prebuilt_base", lambda *a, **k: None)
    monkeypatch.setattr(tiny, "tiny_seq2seq_base", lambda name, *a: built.append(name) or tmp_path / "built")
    assert tiny.tiny_base("small", corpus, splits, 0) == tmp_path / "built" and built == ["small"]
    monkeypatch.setattr(tiny, "prebuilt_base", lambda *a, **k: pytest.fail("prebuilt=False must not look"))
    assert tiny.tiny_base("small", corpus, splits, 0, prebuilt=False) == tmp_path / "built"


def test_cli_from_scratch_and_full(monkeypatch, tmp_path):
    """--from-scratch turns the shipped bases off; --full runs every part over three seeds."""
    from mtforget import cli

    seen = {}
    monkeypatch.setattr(cli, "_run", lambda study, out, **k: seen.update(study=study, out=out) or 0)
    assert cli.main(["demo", "--from-scratch", "--out", str(tmp_path)]) == 0
    assert seen["study"].model.prebuilt is False
    assert cli.main(["demo", "--full"]) == 0
    assert seen["study"].model.prebuilt is True and seen["out"].name == "demo-full"
    assert all(part["seed"] == [0, 1, 2] for part in seen["study"].grid)


def test_pretrain_mix_weighs_languages_and_is_checked():
    """A language of weight w is drawn about w times as often as the others; the even mix draws as
    it always did; a weight outside (0, 1] or a language the corpus lacks is a usage error."""
    from collections import Counter

    from mtforget.data.splits import sample_all_directions
    from mtforget.errors import UsageError
    from mtforget.study.trial import _base_model

    cfg = parse_study(tiny_study(), "x")
    corpus, splits = _corpus_and_splits(cfg.corpus, TrialMemo())
    languages = list(corpus.languages)
    low = languages[1]
    drawn = Counter()
    for ex in sample_all_directions(splits.train, languages, 4000, 0, {low: 0.1}):
        drawn.update([ex.src_lang, ex.tgt_lang])
    others = [drawn[lang] for lang in languages if lang != low]
    assert 0.05 < drawn[low] / (sum(others) / len(others)) < 0.2
    assert sample_all_directions(splits.train, languages, 50, 3) == sample_all_directions(splits.train, languages, 50, 3, {})
    with pytest.raises(Exception, match="pretrain_mix"):
        parse_study({**tiny_study(), "model": {"tiny": "small", "pretrain_mix": {low: 0}}}, "x")
    bad = parse_study({**tiny_study(), "model": {"tiny": "small", "pretrain_mix": {"zz": 0.5}}}, "x")
    with pytest.raises(UsageError, match="model.pretrain_mix: zz"):
        _base_model(bad, corpus, splits, progress=False)


def test_a_base_pretrained_on_another_mix_is_another_base():
    """The mix decides the examples a base learns from, so it keys the cache and is recorded."""
    cfg = parse_study(tiny_study(), "x")
    corpus, splits = _corpus_and_splits(cfg.corpus, TrialMemo())
    low = corpus.languages[1]
    even = tiny.tiny_base("small", corpus, splits, 0, steps=2, progress=False, prebuilt=False)
    mixed = tiny.tiny_base("small", corpus, splits, 0, steps=2, progress=False, prebuilt=False, mix={low: 0.5})
    assert mixed != even
    assert json.loads((mixed / "mtforget_base.json").read_text())["pretrain_mix"] == {low: 0.5}
    assert "pretrain_mix" not in json.loads((even / "mtforget_base.json").read_text())


def test_demo_mix_only_on_the_synthetic_world(monkeypatch, tmp_path):
    """The demo pre-trains xa–xd as low-resource languages of its own world; with a corpus or a
    checkpoint of the user's the mix goes (its languages are the synthetic world's, and a
    checkpoint is not pre-trained here) unless the user sets one."""
    from mtforget import cli
    from mtforget.study.demo import PRETRAIN_MIX

    corpus = tmp_path / "mine.jsonl"
    corpus.write_text('{"id": "1", "translation": {"de": "Hallo", "en": "Hello"}}\n', encoding="utf-8")
    seen = {}
    monkeypatch.setattr(cli, "_run", lambda study, out, **k: seen.update(study=study) or 0)
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "a")]) == 0
    assert seen["study"].model.pretrain_mix == PRETRAIN_MIX
    assert cli.main(["demo", "--out", str(tmp_path / "b"), "--set", f"corpus.path={corpus}"]) == 0
    assert seen["study"].model.pretrain_mix == {}
    assert cli.main(["demo", "--out", str(tmp_path / "c"), "--set", f"corpus.path={corpus}",
                     "--set", "model.pretrain_mix={de: 0.1}"]) == 0
    assert seen["study"].model.pretrain_mix == {"de": 0.1}
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--set", f"model.path={tmp_path}"]) == 0
    assert seen["study"].model.pretrain_mix == {}


def test_tiny_pretraining_settings_that_no_trial_uses_are_an_error(tmp_path):
    """A value the user gave takes effect or is an error: with model.path on every trial no tiny
    base is pre-trained, so its steps or mix are an error; with a tiny base beside it in the grid,
    the tiny trials use them and the checkpoint's trials leave them out of their identity."""
    from mtforget.errors import UsageError
    from mtforget.study.grid import expand

    for key, value in (("pretrain_steps", 40), ("pretrain_mix", {"xa": 0.5})):
        only_path = parse_study({**tiny_study(), "model": {"path": str(tmp_path), key: value}}, "x")
        with pytest.raises(UsageError, match=f"model.{key}: every trial starts from model.path"):
            expand(only_path)
    grid = {"model.path": [None, str(tmp_path)]}
    mixed = expand(parse_study({**tiny_study(), "model": {"pretrain_steps": 40, "pretrain_mix": {"xa": 0.5}},
                                "grid": grid}, "x"))
    plain = expand(parse_study({**tiny_study(), "model": {"pretrain_steps": 40}, "grid": grid}, "x"))
    assert [(t.config.model.pretrain_steps, t.config.model.pretrain_mix) for t in mixed] == \
        [(40, {"xa": 0.5}), (None, {})]
    assert mixed[1].id == plain[1].id and mixed[0].id != plain[0].id
