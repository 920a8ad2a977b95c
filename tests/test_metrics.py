import subprocess
import sys

import pytest
import sacrebleu

from mtforget.data.corpus import Segment
from mtforget.evaluate.lid import CorpusLanguageIdentifier, PyLangIdentifier, make_identifier, same_language
from mtforget.evaluate.forgetting import score_records
from mtforget.evaluate.metrics import active, bleu_tokenizer, score, signatures
from mtforget.evaluate.metrics.base import Judges

HYPS = ["the cat sat on the mat", "a dog barks loudly at night", "", "green green green fish"]
REFS = ["the cat is sitting on the mat", "the dog barks loudly at night", "nothing here", "nine green fish"]
ZH_HYPS = ["我喜欢吃苹果。", "今天天气很好", "他去学校了"]
ZH_REFS = ["我很喜欢吃苹果。", "今天的天气很好", "他已经去学校了"]


def test_scores_equal_sacrebleu_reference_implementation():
    ours = score(HYPS, REFS, "en")
    assert ours["chrf"] == sacrebleu.corpus_chrf(HYPS, [REFS]).score
    assert ours["chrf++"] == sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score
    assert ours["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert 0 < ours["bleu"] < ours["chrf"] < 100
    zh = score(ZH_HYPS, ZH_REFS, "zh_Hans")
    assert zh["bleu"] == sacrebleu.corpus_bleu(ZH_HYPS, [ZH_REFS], tokenize="zh").score


@pytest.mark.parametrize("hyps, refs, target", [(HYPS, REFS, "en"), (ZH_HYPS, ZH_REFS, "zh")])
def test_scores_equal_sacrebleu_command_line(tmp_path, hyps, refs, target):
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")

    def cli(*args: str) -> float:
        out = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i",
                              str(tmp_path / "hyp.txt"), "-b", "-w", "6", *args],
                             capture_output=True, text=True, check=True)
        return float(out.stdout.strip())

    ours = score(hyps, refs, target)
    assert ours["bleu"] == pytest.approx(cli("-m", "bleu", "-tok", bleu_tokenizer(target)), abs=1e-6)
    assert ours["chrf"] == pytest.approx(cli("-m", "chrf"), abs=1e-6)
    assert ours["chrf++"] == pytest.approx(cli("-m", "chrf", "--chrf-word-order", "2"), abs=1e-6)


def test_identical_output_scores_100():
    perfect = score(REFS, REFS)
    assert all(v == pytest.approx(100.0) for v in perfect.values())


def test_bleu_tokenizer_follows_the_target_language():
    assert bleu_tokenizer("zh_Hant") == "zh" and bleu_tokenizer("de") == "13a"
    assert bleu_tokenizer("ja") in ("ja-mecab", "char")


def test_signatures_name_the_settings():
    sig = signatures(["en", "zh"])
    assert "nc:6" in sig["chrf"] and "nw:2" in sig["chrf++"] and "version:" in sig["chrf"]
    assert "tok:13a" in sig["bleu"] and "tok:zh" in sig["bleu[zh]"]


def test_confusable_groups_count_as_on_target():
    assert same_language("sr", "hr") and same_language("nn", "nb") and same_language("da", "nb")
    assert same_language("pt", "pt_BR")
    assert not same_language("de", "nl") and not same_language(None, "de")


def test_py3langid_restricted_to_study_languages_with_abstention():
    lid = make_identifier([], ["en", "de", "hr", "sr"])
    assert isinstance(lid, PyLangIdentifier)
    outputs = ["Guten Morgen, wie geht es dir heute?", "Dobro jutro, kako si danas, prijatelju?",
               "Good morning, how are you today?", "", "ok"]  # "ok" is too short to judge
    assert lid.predict(outputs)[:2] == ["de", lid.predict(outputs[1:2])[0]]
    assert lid.predict(outputs[1:2])[0] in ("hr", "sr")
    # German target: the Croatian and English lines and the empty one are off-target; "ok" abstains.
    assert lid.off_target(outputs, "de") == pytest.approx(3 / 4)
    assert lid.off_target(outputs[1:2], "sr") == 0.0  # hr/sr confusable


def test_unknown_languages_fall_back_to_a_corpus_identifier():
    segs = [Segment(f"s{i}", {"en": f"the big dog number {i} sleeps", "xa": f"co wucon ceke {i} pefo"})
            for i in range(30)]
    lid = make_identifier(segs, ["en", "xa"])
    assert isinstance(lid, CorpusLanguageIdentifier)
    assert lid.accuracy(segs) == 1.0
    assert lid.off_target(["co wucon pefo", "the dog sleeps", ""], "xa") == pytest.approx(2 / 3)



def test_the_corpus_identifier_is_cached_by_its_sentences_and_predicts_as_scikit_learn(tmp_path, monkeypatch):
    from sklearn.naive_bayes import MultinomialNB

    from mtforget.evaluate.lid import SMOOTHING, _vectorizer

    monkeypatch.setenv("MTFORGET_CACHE", str(tmp_path))
    segs = [Segment(f"s{i}", {"en": f"the big dog number {i} sleeps", "xa": f"co wucon ceke {i} pefo",
                              "xb": f"ra tiso {i} lume nar"}) for i in range(40)]
    first = CorpusLanguageIdentifier.train(segs, ["en", "xa", "xb"])
    def entries() -> list:
        return sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "identifiers").iterdir() if p.is_dir())

    fitted_once = entries()
    again = CorpusLanguageIdentifier.train(segs, ["en", "xa", "xb"])
    assert len(fitted_once) == 1 and entries() == fitted_once  # loaded, not fitted again
    other = CorpusLanguageIdentifier.train(segs[:20], ["en", "xa", "xb"])
    assert len(entries()) == 2  # other sentences, another entry
    texts = ["co wucon", "the dog", "ra lume", "dog wucon ra", "", "ceke sleeps tiso", "x"]
    fitted = MultinomialNB(alpha=SMOOTHING).fit(_vectorizer().transform([t for s in segs for t in s.translation.values()]),
                                                [lang for s in segs for lang in s.translation])
    expected = [str(p) if t else None for t, p in zip(texts, fitted.predict(_vectorizer().transform(texts)))]
    assert first.predict(texts) == again.predict(texts) == expected
    assert other.predict(texts[:3]) == ["xa", "en", "xb"]

def test_paired_bootstrap_intervals():
    import numpy as np

    from mtforget.evaluate.bootstrap import interval, paired_bootstrap
    from mtforget.evaluate.metrics import Outputs, active

    refs = [f"the cat number {i} sat on the mat" for i in range(40)]
    base = [f"a cat number {i} sat on a mat" for i in range(40)]
    better = refs[:30] + base[30:]
    metrics = active()

    def stats(hyps, flags):
        outputs = Outputs("en", refs, hyps, refs, {"off_target": flags, "chrf_on_target": flags})
        return {m.name: m.statistics(outputs) for m in metrics}

    flags = [0.0] * 40
    same = paired_bootstrap(metrics, stats(base, flags), stats(base, flags), 200, np.random.default_rng(0))
    assert all(interval(v) == (0.0, 0.0) for v in same.values())
    samples = paired_bootstrap(metrics, stats(base, flags), stats(better, [1.0] * 10 + [None] * 5 + [0.0] * 25), 500,
                               np.random.default_rng(0))
    point = score(better, refs)["chrf"] - score(base, refs)["chrf"]
    low, high = interval(samples["chrf"])
    assert 0 < low < point < high
    assert samples["chrf"].shape == (500,)
    assert 0 < interval(samples["off_target"])[0]  # 10 of 35 judged outputs became off-target
    # On target, the 25 sentences left are the better ones: chrF on target rose.
    assert 0 < interval(samples["chrf_on_target"])[0]


def _resampled_sums(name, hyps, refs, rows):
    import numpy as np

    from mtforget.evaluate.metrics import Outputs, get_metric, resampled_totals

    metric = get_metric(name)
    stats = metric.statistics(Outputs("en", hyps, hyps, refs))
    return metric, resampled_totals(stats, np.random.default_rng(0).integers(0, len(hyps), size=(rows, len(hyps))))


@pytest.mark.parametrize("name", ["chrf", "chrf++"])
def test_the_bootstrap_chrf_formula_equals_sacrebleu_on_every_resample(name):
    import numpy as np

    hyps = ["the cat sat", "", "a dog", "x", "the cat sat on the mat today", "ab ab ab"]
    refs = ["the cat sat on the mat", "a cat", "a dog ran", "y", "the cat sat on the mat", "ab"]
    metric, sums = _resampled_sums(name, hyps, refs, 300)
    sums[0] = 0  # nothing on either side: sacrebleu's score is 0
    sums[1, 0::3] = 0  # an empty hypothesis against a non-empty reference
    expected = metric.score(sums)  # sacrebleu's formula to the bit (see test_metric_registry)
    assert metric.resample_scores(sums) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert np.ptp(expected) > 10  # the resamples really differ


def test_the_bootstrap_bleu_formula_equals_sacrebleu_on_every_resample():
    import numpy as np

    hyps = ["the cat sat on the mat", "", "a dog ran far away", "x y", "the cat sat on a mat today", "ab ab ab"]
    refs = ["the cat sat on the mat", "a cat", "a dog ran", "y z w", "the cat sat on the mat", "ab"]
    metric, sums = _resampled_sums("bleu", hyps, refs, 300)
    sums[0] = 0  # nothing at all: no matches, score 0
    sums[1, 0] = 0  # an empty system side: no brevity penalty can be computed, sacrebleu gives 0
    sums[1, 2:] = 0
    sums[2, 2 + 4 + 1] = 0  # an order without system n-grams: precision 0, score 0
    sums[3, 2 : 2 + 4] = 0  # n-grams but no matches: 0, even when smoothed
    expected = metric.score(sums)  # sacrebleu's own ``BLEU.compute_bleu``
    assert metric.resample_scores(sums) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert np.ptp(expected) > 10  # the resamples really differ


def test_chrf_on_target_is_sacrebleus_chrf_over_the_outputs_the_identifier_puts_in_the_target_language():
    lid = make_identifier([], ["en", "de"])
    hyps = ["Guten Morgen, wie geht es dir heute?", "Good morning, how are you today?",
            "Der Hund schläft im Garten unter dem Baum.", "ok", "Das ist mein Haus."]
    refs = ["Guten Morgen, wie geht es Ihnen heute?", "Guten Morgen, wie geht es dir?",
            "Der Hund schläft unter dem Baum im Garten.", "in Ordnung", "Das ist unser Haus."]
    record = {"hypotheses": hyps, "references": refs, "sources": refs, "n": len(hyps)}
    score_records([("de", record)], active(), Judges(lid))
    flags = lid.off_target_flags(hyps, "de")
    assert flags[1] == 1 and flags[3] is None and flags.count(0) == 3  # English off-target, "ok" unjudged
    on_target = [i for i, flag in enumerate(flags) if flag == 0]
    expected = sacrebleu.corpus_chrf([hyps[i] for i in on_target], [[refs[i] for i in on_target]]).score
    assert record["chrf_on_target"] == pytest.approx(expected, abs=1e-9)
    assert record["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    assert record["off_target"] == pytest.approx(1 / 4)
