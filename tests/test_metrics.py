import pytest
import sacrebleu

from mtforget.evaluate.lid import off_target_rate
from mtforget.evaluate.metrics import score, signatures

HYPS = ["the cat sat on the mat", "a dog barks loudly at night", "", "green green green fish"]
REFS = ["the cat is sitting on the mat", "the dog barks loudly at night", "nothing here", "nine green fish"]


def test_scores_equal_sacrebleu_reference_implementation():
    ours = score(HYPS, REFS)
    assert ours["chrf"] == sacrebleu.corpus_chrf(HYPS, [REFS]).score
    assert ours["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS], use_effective_order=True).score
    assert 0 < ours["bleu"] < ours["chrf"] < 100


def test_identical_output_scores_100():
    perfect = score(REFS, REFS)
    assert perfect["chrf"] == pytest.approx(100.0) and perfect["bleu"] == pytest.approx(100.0)


def test_signatures_name_the_settings():
    sig = signatures()
    assert "nc:6" in sig["chrf"] and "version:" in sig["chrf"]
    assert "tok:13a" in sig["bleu"]


def test_off_target_rate_counts_empty_as_off_target():
    assert off_target_rate(["de", "de", None, "en"], "de") == 0.5
