"""The metric seam: the registry, sacrebleu equality of every corpus score and of every bootstrap
resample, config validation of ``eval.metrics``, and metrics that reach a study's rows."""

import csv
import json

import numpy as np
import pytest
import yaml
from sacrebleu.metrics import BLEU, CHRF, TER

from mtforget.cli import main
from mtforget.evaluate.bootstrap import paired_bootstrap, paired_deltas
from mtforget.evaluate.metrics import (REGISTRY, Metric, Outputs, UnknownMetricError, active, all_metrics, corpus_score,
                                       get_metric, optional_names, register, resampled_totals, signatures, totals)
from mtforget.study.config import parse_study
from tests.conftest import tiny_study

WORDS = {
    "en": "the a cat dog sat on mat ran far away , . ! ? (hi) don't it's x-y Über".split(),
    "zh": list("我喜欢吃苹果今天天气很好他去学校了。，！") + ["ABC", "12"],
    "ja": list("私は猫が好きです今日天気いい。、") + ["テスト"],
}
TOKENIZER = {"en": "13a", "zh": "zh", "ja": "char"}
SACREBLEU = {"chrf": lambda lang: CHRF(), "chrf++": lambda lang: CHRF(word_order=2),
             "bleu": lambda lang: BLEU(tokenize=TOKENIZER[lang]), "ter": lambda lang: TER()}


def _corpus(rng, lang, n):
    def sentence():
        if rng.random() < 0.1:
            return ""
        words = rng.choice(WORDS[lang], size=int(rng.integers(0, 14)))
        return ("" if lang != "en" and rng.random() < 0.6 else " ").join(words)

    return [sentence() for _ in range(n)], [sentence() for _ in range(n)]


def test_the_registry_holds_the_built_in_metrics_in_row_order():
    assert [m.name for m in all_metrics()] == ["chrf", "chrf++", "bleu", "off_target", "chrf_on_target", "comet", "ter"]
    assert optional_names() == ["comet", "ter"]
    assert [m.name for m in active()] == ["chrf", "chrf++", "bleu", "off_target", "chrf_on_target"]
    assert [m.name for m in active(["ter"])] == ["chrf", "chrf++", "bleu", "off_target", "chrf_on_target", "ter"]
    assert get_metric("ter").title == "TER" and not get_metric("ter").higher_is_better
    assert not get_metric("off_target").higher_is_better and get_metric("chrf").higher_is_better
    with pytest.raises(UnknownMetricError, match="unknown metric 'bleurt' .*chrf, chrf\\+\\+, bleu"):
        get_metric("bleurt")
    with pytest.raises(UnknownMetricError):
        active(["bleurt"])
    with pytest.raises(ValueError, match="already registered"):
        register(get_metric("chrf"))


@pytest.mark.parametrize("name", ["chrf", "chrf++", "bleu", "ter"])
@pytest.mark.parametrize("lang", ["en", "zh", "ja"])
def test_corpus_scores_equal_sacrebleu_exactly(name, lang):
    rng = np.random.default_rng(0)
    metric = get_metric(name)
    for n in (1, 3, 17, 40):
        hyps, refs = _corpus(rng, lang, n)
        assert corpus_score(metric, Outputs(lang, hyps, hyps, refs)) == SACREBLEU[name](lang).corpus_score(
            hyps, [refs]).score


@pytest.mark.parametrize("name", ["chrf", "chrf++", "bleu", "ter"])
def test_corpora_with_nothing_on_one_side_score_as_sacrebleu_does(name):
    cases = [(["", ""], ["the cat", "a dog"]), (["the cat", "a dog"], ["", ""]), (["", ""], ["", ""]),
             (["x"], ["y"]), (["a b"], ["a b"])]
    for hyps, refs in cases:
        ours = corpus_score(get_metric(name), Outputs("en", hyps, hyps, refs))
        assert ours == SACREBLEU[name]("en").corpus_score(hyps, [refs]).score, (hyps, refs)


@pytest.mark.parametrize("name", ["chrf", "chrf++", "bleu", "ter"])
def test_every_bootstrap_resample_equals_sacrebleu_on_the_resampled_corpus(name):
    rng = np.random.default_rng(1)
    lang = "en" if name != "bleu" else "zh"
    metric = get_metric(name)
    hyps, refs = _corpus(rng, lang, 30)
    better = [r if i % 3 else h for i, (h, r) in enumerate(zip(hyps, refs))]
    stats = {"base": metric.statistics(Outputs(lang, hyps, hyps, refs)),
             "finetuned": metric.statistics(Outputs(lang, better, better, refs))}
    idx = rng.integers(0, 30, size=(8, 30))
    deltas = paired_deltas([metric], {name: stats["base"]}, {name: stats["finetuned"]}, idx)[name]
    for row, delta in zip(idx, deltas):
        expected = {side: SACREBLEU[name](lang).corpus_score([texts[i] for i in row], [[refs[i] for i in row]]).score
                    for side, texts in (("base", hyps), ("finetuned", better))}
        for side in expected:  # ``score``: sacrebleu to the bit
            assert metric.score(resampled_totals(stats[side], row[None]))[0] == expected[side]
        assert delta == pytest.approx(expected["finetuned"] - expected["base"], abs=1e-9)
    assert np.ptp(deltas) > 0  # the resamples really differ


def test_the_bootstrap_draws_one_set_of_indices_for_always_on_metrics_and_one_for_optional_ones():
    refs = [f"the cat number {i} sat on the mat" for i in range(40)]
    base = [f"a cat number {i} sat on a mat" for i in range(40)]
    better = refs[:30] + base[30:]
    metrics = active(["ter"])
    flags = {"off_target": [0.0] * 40, "chrf_on_target": [0.0] * 40}
    stats = [{m.name: m.statistics(Outputs("en", refs, hyps, refs, flags)) for m in metrics} for hyps in (base, better)]
    samples = paired_bootstrap(metrics, *stats, 300, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 40, size=(300, 40)) for _ in range(2))
    assert np.array_equal(samples["chrf"], paired_deltas(metrics[:1], *stats, first)["chrf"])
    assert np.array_equal(samples["ter"], paired_deltas(metrics[-1:], *stats, second)["ter"])
    assert samples["ter"].max() < 0 < samples["chrf"].min()  # better output: fewer edits, more chrF


def test_comet_and_off_target_statistics_average_their_judgements():
    comet, off = get_metric("comet"), get_metric("off_target")
    segments = [float(x) for x in np.random.default_rng(2).random(50) * 100]
    outputs = Outputs("de", ["s"] * 50, ["h"] * 50, ["r"] * 50,
                      {"comet": segments, "off_target": [1.0, None, 0.0, 0.0] * 12 + [None, None]})
    assert corpus_score(comet, outputs) == float(np.mean(segments))
    assert corpus_score(off, outputs) == 12 / 36
    assert totals(off.statistics(outputs)).tolist() == [12.0, 36.0]


def test_signatures_follow_the_metrics_that_run():
    assert set(signatures(["en", "zh"])) == {"chrf", "chrf++", "bleu", "bleu[zh]", "chrf_on_target"}
    with_ter = signatures(["de"], ["ter"])
    assert "tok:tercom" in with_ter["ter"] and "ter" not in signatures(["de"])


def test_an_unknown_metric_is_a_config_error_naming_eval_metrics(tmp_path, capsys):
    raw = tiny_study()
    raw["eval"]["metrics"] = ["ter", "bleurt"]
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    assert main(["run", str(study), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {study}: eval.metrics: unknown optional metric 'bleurt'; the optional metrics are "
                   "comet, ter"]
    raw["eval"]["metrics"] = ["chrf"]
    with pytest.raises(Exception, match="eval.metrics: unknown optional metric 'chrf' \\(it is always computed\\)"):
        parse_study(raw, "t")
    raw["eval"]["metrics"] = ["ter"]
    assert parse_study(raw, "t").eval.metrics == ["ter"]


class Length(Metric):
    """A toy metric: output characters per reference character over the corpus."""

    name = "length"
    title = "Length ratio"

    def statistics(self, outputs):
        return np.array([[len(h), len(r)] for h, r in zip(outputs.hypotheses, outputs.references)], dtype=float)

    def score(self, sums):
        return sums[..., 0] / np.maximum(sums[..., 1], 1)


@pytest.fixture(scope="module")
def study_with_ter_and_a_toy_metric(tmp_path_factory):
    """A tiny study with TER on and a metric registered by the test: one class, one line."""
    register(Length())
    try:
        raw = tiny_study(**{"finetune.size": [16]})
        raw["eval"]["metrics"] = ["ter"]
        out = tmp_path_factory.mktemp("ter") / "out"
        study = out.parent / "study.yaml"
        study.write_text(yaml.safe_dump(raw))
        assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 0
    finally:
        REGISTRY.pop("length")
    with (out / "results.csv").open() as f:
        return out, list(csv.DictReader(f))


def test_ter_rows_appear_in_a_study_that_asks_for_them(study_with_ter_and_a_toy_metric):
    out, rows = study_with_ter_and_a_toy_metric
    ter = [r for r in rows if r["metric"] == "ter"]
    assert len(ter) == 20  # every direction of 5 languages
    for r in ter:
        assert float(r["base"]) >= 0 and float(r["delta_low"]) <= float(r["delta_high"])
        assert float(r["source_copy"]) >= 0
    summary = (out / "report" / "summary.md").read_text()
    assert "## TER delta" in summary and "For TER, lower is better: a positive delta is a loss." in summary
    info = json.loads(next((out / "trials").glob("*/result.json")).read_text())["info"]
    assert "tok:tercom" in info["metric_signatures"]["ter"] and "ter" in info["category_ci"]


def test_a_registered_metric_reaches_the_rows(study_with_ter_and_a_toy_metric):
    _, rows = study_with_ter_and_a_toy_metric
    length = [r for r in rows if r["metric"] == "length"]
    assert len(length) == 20
    for r in length:
        assert float(r["delta_low"]) <= float(r["delta_high"]) and float(r["source_copy"]) > 0
    assert [r["metric"] for r in rows if r["src"] == "en" and r["tgt"] == "xa"] == sorted(
        ["chrf", "chrf++", "bleu", "off_target", "chrf_on_target", "length", "ter"])
