"""Generation engines: CTranslate2 and Hugging Face generate give the same translations.

The models are tiny and built in memory with random weights drawn at a large scale
(``init_std=0.5`` instead of 0.02): their logits then depend strongly on the input and are far
apart, so greedy outputs differ from sentence to sentence (an order mix-up shows) and a
floating-point difference between the engines cannot hide behind near-ties. Agreement on a
trained model is measured by ``benchmarks/generation.py`` on the demo's base.
"""

from __future__ import annotations

import json

import ctranslate2
import pytest
import torch
from transformers import (GPTNeoConfig, GPTNeoForCausalLM, M2M100Config, M2M100ForConditionalGeneration, Qwen2Config,
                          Qwen2ForCausalLM)

from mtforget.bases.tiny_decoder import CHAT_MARKERS, CHAT_TEMPLATE
from mtforget.data.corpus import read_jsonl
from mtforget.data.splits import direction_examples, split_by_id
from mtforget.data.synthetic import SyntheticWorld
from mtforget.errors import UsageError
from mtforget.evaluate.engines.base import (ENGINE_CHRF_TOLERANCE, EngineSpec, GenerationEngine, engine_spec,
                                            make_engine, probe_direction)
from mtforget.evaluate.engines.ctranslate2 import CT2Engine
from mtforget.evaluate.engines.hf import HF_ENGINE_NAME, HFEngine
from mtforget.evaluate.engines.registry import ENGINES, engine_choices
from mtforget.evaluate.generate import length_batches
from mtforget.evaluate.metrics import score
from mtforget.models.instruction import InstructionControl
from mtforget.models.language import LanguageTokens
from mtforget.models.tokenizer import train_tokenizer
from mtforget.study.config import parse_study
from mtforget.study.trial import synthetic_corpus_path

MAX_NEW_TOKENS = 16
INIT_STD = 0.5
# Share of sentences whose outputs must be identical token for token. Float32 greedy search is the
# same computation in both engines; only summation order differs, and at this logit scale that
# should flip no token. Allowing a few flips keeps the test from failing on a new CPU's kernels.
MIN_EXACT_MATCH = 0.95


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    """The tiny study's corpus (5 languages), its split, and its invented language names."""
    corpus = read_jsonl(synthetic_corpus_path(5, 600, 0))
    splits = split_by_id(corpus, 40, 12, 0)
    names = {lang.code: lang.name for lang in SyntheticWorld(seed=0, n_languages=5).languages}
    return corpus, splits, names


def _sentences(splits, languages, per_direction=12):
    """(source texts, references, src, tgt) per direction, in the corpus's order (not by length)."""
    out = []
    for src in languages:
        for tgt in languages:
            if src != tgt:
                ex = direction_examples(splits.test, src, tgt)[:per_direction]
                out.append(([e.src for e in ex], [e.tgt for e in ex], src, tgt))
    return out


@pytest.fixture(scope="module")
def encoder_decoder(world):
    """A random M2M-100 (the tiny bases' architecture) with a corpus tokenizer and language tokens."""
    corpus, splits, _ = world
    languages = list(corpus.languages)
    tok = train_tokenizer((t for s in splits.train for t in s.translation.values()), languages, 500)
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(M2M100Config(
        vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0, dropout=0.0, init_std=INIT_STD, scale_embedding=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id)).eval()
    return model, LanguageTokens.for_tokenizer(tok)


@pytest.fixture(scope="module")
def decoder_only(world):
    """A random Qwen2 with a ChatML template, steered by instructions."""
    corpus, splits, names = world
    texts = [t for s in splits.train for t in s.translation.values()]
    texts += ["Translate the following sentence from English to Wenufi. system user assistant"] * 5
    tok = train_tokenizer(texts, [], 500, CHAT_MARKERS)
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        initializer_range=INIT_STD, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)).eval()
    control = InstructionControl(tok, names=names)
    assert control.use_chat
    return model, control


def _compare(model, control, cases) -> tuple[float, float, float]:
    """Exact-match share of CT2 vs batched HF generate, and both corpus chrFs vs references (each
    engine's mixed-direction decoding checked against its per-direction one on the way)."""
    hf_hyps, ct2_hyps, refs = [], [], []
    hf = make_engine("hf", model, control, MAX_NEW_TOKENS)
    with make_engine("ctranslate2", model, control, MAX_NEW_TOKENS) as engine:
        assert isinstance(engine, CT2Engine)
        for texts, references, src, tgt in cases:
            hf_hyps += hf.translate(texts, src, tgt)
            ct2_hyps += engine.translate(texts, src, tgt)
            refs += references
        # All directions in one call, as a study evaluates: their rows share batches.
        jobs = [(texts, src, tgt) for texts, _, src, tgt in cases]
        ct2_mixed = [h for hyps in engine.translate_many(jobs) for h in hyps]
    # Both engines' mixed batches sum in another order than their per-direction ones: the same share
    # of exact matches as between engines (test_mixed_batching checks exact equality in float64).
    hf_mixed = [h for hyps in hf.translate_many(jobs) for h in hyps]
    assert sum(a == b for a, b in zip(hf_mixed, hf_hyps)) / len(hf_hyps) >= MIN_EXACT_MATCH
    assert sum(a == b for a, b in zip(ct2_mixed, ct2_hyps)) / len(ct2_hyps) >= MIN_EXACT_MATCH
    assert len(set(hf_hyps)) > len(hf_hyps) // 2  # outputs vary with the input, so order matters
    exact = sum(a == b for a, b in zip(hf_hyps, ct2_hyps)) / len(hf_hyps)
    return exact, score(hf_hyps, refs, "xa")["chrf"], score(ct2_hyps, refs, "xa")["chrf"]


def test_ctranslate2_matches_hf_on_an_encoder_decoder(world, encoder_decoder):
    corpus, splits, _ = world
    model, control = encoder_decoder
    cases = _sentences(splits, list(corpus.languages))
    assert any(texts != sorted(texts, key=len) for texts, *_ in cases)  # CT2 must restore the order
    exact, hf_chrf, ct2_chrf = _compare(model, control, cases)
    assert exact >= MIN_EXACT_MATCH
    assert abs(hf_chrf - ct2_chrf) < ENGINE_CHRF_TOLERANCE


def test_ctranslate2_matches_hf_on_a_decoder_only_chat_model(world, decoder_only):
    corpus, splits, _ = world
    model, control = decoder_only
    cases = _sentences(splits, list(corpus.languages)[:3], per_direction=8)
    exact, hf_chrf, ct2_chrf = _compare(model, control, cases)
    assert exact >= MIN_EXACT_MATCH
    assert abs(hf_chrf - ct2_chrf) < ENGINE_CHRF_TOLERANCE


def test_hf_engine_batches_by_tokens_and_keeps_the_input_order(world, encoder_decoder):
    corpus, splits, _ = world
    model, control = encoder_decoder
    texts, _, src, tgt = _sentences(splits, list(corpus.languages))[0]
    assert texts != sorted(texts, key=len)
    # Straight through the control, one sentence at a time: no sorting, no index bookkeeping.
    one_by_one = [control.generate(model, [text], src, tgt, MAX_NEW_TOKENS)[0] for text in texts]
    # A budget of a few sentences forces several batches in length order.
    engine = make_engine("hf", model, control, MAX_NEW_TOKENS, max_batch_tokens=64)
    assert isinstance(engine, HFEngine) and engine.name == HF_ENGINE_NAME == "hf-generate"
    batched = engine.translate(texts, src, tgt)
    assert sum(a == b for a, b in zip(one_by_one, batched)) / len(texts) >= MIN_EXACT_MATCH
    assert engine.translate([], src, tgt) == []


def test_length_batches_respect_both_limits():
    lengths = [5, 30, 1, 12, 12, 7, 100, 3]
    batches = length_batches(lengths, max_sentences=3, max_tokens=40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)  # shortest first
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 40
    assert [lengths[i] for i in batches[-1]] == [100]  # too long for the budget: alone


def test_conversion_is_cached_per_weights_and_compute_type(encoder_decoder):
    model, control = encoder_decoder
    with CT2Engine(model, control, MAX_NEW_TOKENS) as first:
        name, model_dir = first.name, first.model_dir
    with CT2Engine(model, control, MAX_NEW_TOKENS) as second:
        assert not second.converted and second.model_dir == model_dir
    assert name.startswith("ctranslate2-") and name.endswith(" float32")
    with CT2Engine(model, control, MAX_NEW_TOKENS, compute_type="int8") as quantized:
        assert quantized.name.endswith(" int8") and quantized.model_dir != model_dir
    # Other weights (a fine-tuned model): a conversion of their own, here to a scratch directory.
    changed = M2M100ForConditionalGeneration(model.config).eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.lm_head.weight[0, 0] += 1.0
    engine = CT2Engine(changed, control, MAX_NEW_TOKENS, cache_conversion=False)
    assert engine.converted and engine.model_dir != model_dir
    engine.close()
    assert not engine.model_dir.exists()


def test_auto_falls_back_to_hf_on_an_unsupported_architecture(world, decoder_only):
    _, _, names = world
    _, chat = decoder_only
    tok = chat.tokenizer
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=len(tok), hidden_size=32, num_layers=1, num_heads=2,
                                           attention_types=[[["global"], 1]], max_position_embeddings=512,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    control = InstructionControl(tok, names=names, use_chat=False)
    engine = make_engine("auto", model, control, MAX_NEW_TOKENS)
    assert isinstance(engine, HFEngine) and engine.name == HF_ENGINE_NAME
    assert "GPTNeoConfig" in engine.fallback_reason
    assert len(engine.translate(["a b", "c"], "en", "xa")) == 2
    with pytest.raises(UsageError, match="ctranslate2"):
        make_engine("ctranslate2", model, control, MAX_NEW_TOKENS)


def test_auto_prefers_ctranslate2_and_rejects_unknown_kinds(encoder_decoder):
    model, control = encoder_decoder
    with make_engine("auto", model, control, MAX_NEW_TOKENS) as engine:
        assert engine.kind == "ctranslate2"
    with pytest.raises(UsageError, match="unknown engine"):
        make_engine("vllm", model, control)
    with pytest.raises(UsageError, match=r"^t: eval\.engine: unknown engine 'vllm' \(auto, ctranslate2 or hf\)$"):
        parse_study({"eval": {"engine": "vllm"}}, "t")  # at load, before any model


def test_the_registry_names_every_engine_and_one_fallback():
    specs = {name: engine_spec(name) for name in ENGINES}
    assert engine_choices() == ["auto", "ctranslate2", "hf"]
    assert [name for name, spec in specs.items() if spec.auto == "fallback"] == ["hf"]
    # An engine's kind is its registry name: a trial makes the fine-tuned model's engine from it.
    assert (HFEngine.kind, CT2Engine.kind) == ("hf", "ctranslate2")


class _Echo(GenerationEngine):
    """An engine that returns its input: what a new engine module needs to define."""

    kind = name = "echo"

    def __init__(self, control) -> None:
        self.control = control

    def translate_many(self, jobs, progress=None):
        return [list(texts) for texts, _, _ in jobs]


# This module registered as an engine (see the next test): its ENGINE is all the registry reads.
ENGINE = EngineSpec(label="Echo", open=lambda model, control, options: _Echo(control))


def test_an_engine_is_one_module_and_one_registry_line(monkeypatch, encoder_decoder):
    model, control = encoder_decoder
    monkeypatch.setitem(ENGINES, "echo", __name__)
    assert parse_study({"eval": {"engine": "echo"}}, "t").eval.engine == "echo"
    with make_engine("echo", model, control) as engine:
        assert engine.translate(["a b"], "xa", "xb") == ["a b"]
    with make_engine("auto", model, control, MAX_NEW_TOKENS) as engine:  # not in "auto"'s order
        assert engine.kind == "ctranslate2"


# What CTranslate2's CUDA 12 wheels raise at the first translation on a machine with CUDA 13 only:
# the import, the device count and loading the model all succeed before it.
CUBLAS_MISSING = "Library libcublas.so.12 is not found or cannot be loaded"


class _NoCublasTranslator(ctranslate2.Translator):
    """The real Translator (the model is converted and loaded) whose translations fail like that."""

    def translate_batch(self, *args, **kwargs):
        raise RuntimeError(CUBLAS_MISSING)


class _NoCublasGenerator(ctranslate2.Generator):
    def generate_batch(self, *args, **kwargs):
        raise RuntimeError(CUBLAS_MISSING)


@pytest.mark.parametrize("fixture", ["encoder_decoder", "decoder_only"])
def test_a_ctranslate2_that_cannot_translate_is_never_picked(request, monkeypatch, fixture):
    model, control = request.getfixturevalue(fixture)
    monkeypatch.setattr(ctranslate2, "Translator", _NoCublasTranslator)
    monkeypatch.setattr(ctranslate2, "Generator", _NoCublasGenerator)
    engine = make_engine("auto", model, control, MAX_NEW_TOKENS, cache_conversion=False)
    assert isinstance(engine, HFEngine) and engine.name == HF_ENGINE_NAME
    assert engine.fallback_reason == f"CTranslate2 failed a probe translation on cpu: RuntimeError: {CUBLAS_MISSING}"
    assert len(engine.translate(["a b", "c"], "en", "xa")) == 2  # and Hugging Face does translate
    with pytest.raises(UsageError) as raised:
        make_engine("ctranslate2", model, control, MAX_NEW_TOKENS, cache_conversion=False)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("eval.engine: CTranslate2 cannot translate on cpu")
    assert CUBLAS_MISSING in message and "set eval.engine: hf" in message


def test_the_probe_translates_with_the_studys_languages(encoder_decoder, monkeypatch):
    """The probe decodes through the control as evaluation does: with the given sentence and
    direction, the target language first on the decoder side."""
    model, control = encoder_decoder
    seen = []

    class Recording(ctranslate2.Translator):
        def translate_batch(self, source, *args, **kwargs):
            seen.append((source, kwargs["target_prefix"]))
            return super().translate_batch(source, *args, **kwargs)

    monkeypatch.setattr(ctranslate2, "Translator", Recording)
    with make_engine("auto", model, control, MAX_NEW_TOKENS, probe=("a b", "xb", "xc")) as engine:
        assert engine.kind == "ctranslate2"
    assert probe_direction(LanguageTokens.for_tokenizer(control.tokenizer)) == ("en", "en")  # no German token
    assert probe_direction(control)[0] in control.known_languages
    tokenizer = control.tokenizer
    assert seen == [([[tokenizer.convert_ids_to_tokens(i) for i in control.encode_sources(["a b"], ["xb"], ["xc"])[0]]],
                     [["__xc__"]])]


def test_a_study_whose_ctranslate2_cannot_translate_runs_on_hf_or_stops_with_one_line(tmp_path, monkeypatch,
                                                                                       capsys):
    import yaml

    from mtforget.cli import main
    from tests.conftest import tiny_study

    monkeypatch.setattr(ctranslate2, "Translator", _NoCublasTranslator)
    monkeypatch.setattr(ctranslate2, "Generator", _NoCublasGenerator)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study(**{"finetune.size": [16]})))
    assert main(["run", str(path), "--out", str(tmp_path / "auto"), "--no-progress"]) == 0
    info = json.loads(next((tmp_path / "auto" / "trials").glob("*/result.json")).read_text())["info"]
    assert info["engine"] == HF_ENGINE_NAME
    assert info["engine_fallback_reason"].endswith(f"RuntimeError: {CUBLAS_MISSING}")
    assert CUBLAS_MISSING in (tmp_path / "auto" / "report" / "index.html").read_text()  # run metadata
    capsys.readouterr()
    code = main(["run", str(path), "--out", str(tmp_path / "ct2"), "--no-progress", "--set", "eval.engine=ctranslate2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("error: eval.engine: CTranslate2 cannot translate on cpu") and CUBLAS_MISSING in err[0]
