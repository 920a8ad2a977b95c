"""Mixed-direction decoding: rows of several directions in one batch translate exactly as each
direction does alone, for every language-token convention and both decoder-only prompt styles.

The models are tiny, random and built in memory, with weights drawn at a large scale
(``init_std``/``initializer_range`` 1.0) so that greedy outputs depend strongly on the input: a row
decoded with another row's language, position or padding would come out different.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, M2M100Config, M2M100ForConditionalGeneration, MarianConfig,
                          MarianMTModel, MBartConfig, MBartForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM)

from mtforget.data.synthetic import SyntheticWorld
from mtforget.evaluate.engines.base import DEFAULT_MAX_BATCH_TOKENS, make_engine
from mtforget.evaluate.engines.hf import (DEFAULT_MAX_BATCH_SENTENCES, BatchLimits, HFEngine, batch_limits,
                                          generation_footprint)
from mtforget.evaluate.generate import length_batches
from mtforget.models.instruction import InstructionControl
from mtforget.models.language import LanguageTokens, add_language_tokens, pad
from mtforget.models.tokenizer import train_tokenizer

SCALE = 1.0
MAX_NEW_TOKENS = 10
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    """Texts of a 5-language synthetic corpus, its language codes and their invented names."""
    synthetic = SyntheticWorld(seed=0, n_languages=5)
    records = synthetic.corpus(300, seed=0)
    names = {lang.code: lang.name for lang in synthetic.languages}
    return records, list(records[0]["translation"]), names


def _tokenizer(records, extra_tokens=(), languages=()):
    texts = [t for r in records for t in r["translation"].values()]
    texts += ["Translate the following sentence from English to Wenufi.\nEnglish: x\nWenufi: system user assistant"] * 5
    tok = train_tokenizer(texts, list(languages), 400)
    if extra_tokens:
        tok.add_tokens(list(extra_tokens), special_tokens=True)
    return tok


def _ids(tok):
    return {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


def _encoder_decoder(family, records, languages):
    """A random encoder-decoder of ``family`` and its control, language tokens added as a study does."""
    torch.manual_seed(0)
    shape = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                 dropout=0.0, init_std=SCALE)
    if family == "m2m":
        tok = _tokenizer(records, languages=languages)
        model = M2M100ForConditionalGeneration(M2M100Config(vocab_size=len(tok), decoder_start_token_id=tok.eos_token_id,
                                                            scale_embedding=True, **shape, **_ids(tok)))
    elif family == "nllb":
        tok = _tokenizer(records, ["eng_Latn", "deu_Latn"])
        model = M2M100ForConditionalGeneration(M2M100Config(vocab_size=len(tok), decoder_start_token_id=tok.eos_token_id,
                                                            **shape, **_ids(tok)))
    elif family == "mbart":
        tok = _tokenizer(records, ["en_XX", "de_DE"])
        model = MBartForConditionalGeneration(MBartConfig(vocab_size=len(tok), decoder_start_token_id=tok.eos_token_id,
                                                          **shape, **_ids(tok)))
    elif family == "marian":
        tok = _tokenizer(records, [">>eng<<", ">>deu<<"])
        model = MarianMTModel(MarianConfig(vocab_size=len(tok), decoder_vocab_size=len(tok),
                                           decoder_start_token_id=tok.pad_token_id, **shape, **_ids(tok)))
    else:
        raise ValueError(family)
    control = LanguageTokens.for_tokenizer(tok)
    assert control.convention == family
    added = add_language_tokens(model, control, languages)
    with torch.no_grad():  # added tokens start equal (their mean); tell the languages apart
        model.get_input_embeddings().weight[[control.token_id(c) for c in added]] += SCALE * torch.randn(len(added), 32)
    return _for_exact_comparison(model), control


def _for_exact_comparison(model):
    """The model in float64, in eval mode. Batching rows differently changes the order of the sums
    behind each logit; in float32 that noise differs between CPU kernel sets and could, rarely, flip
    a near-tie between the top two tokens. In float64 it sits far below any logit gap these models
    produce, so "the same tokens" is a claim about the code, not about the machine."""
    return model.to(torch.float64).eval()


def _decoder_only(family, records, names):
    torch.manual_seed(0)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                 initializer_range=SCALE)
    if family == "qwen2-chat":
        tok = _tokenizer(records, ["<|im_start|>", "<|im_end|>"])
        tok.chat_template = CHATML
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), **shape, **_ids(tok)))
    else:
        tok = _tokenizer(records)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **shape, **_ids(tok)))
    control = InstructionControl(tok, names=names)
    assert control.use_chat is (family == "qwen2-chat")
    return _for_exact_comparison(model), control


def _jobs(records, languages):
    """Directions with different numbers of sentences (2 to 6), sentences in corpus order."""
    directions = [(s, t) for s in languages for t in languages if s != t][:8]
    return [([r["translation"][src] for r in records[7 * i : 7 * i + 2 + i % 5]], src, tgt)
            for i, (src, tgt) in enumerate(directions)]


def _forced_bos_reference(model, control, texts, src, tgt):
    """One direction decoded the way Hugging Face documents for these families: one batch,
    ``forced_bos_token_id`` naming the target (no prefix on the decoder side)."""
    input_ids, mask = pad(control.encode_sources(texts, [src] * len(texts), [tgt] * len(texts)),
                          control.tokenizer.pad_token_id)
    forced = {} if control.convention == "marian" else {"forced_bos_token_id": control.token_id(tgt)}
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                         num_beams=1, **forced)
    return [" ".join(t.split()) for t in control.tokenizer.batch_decode(out, skip_special_tokens=True)]


def _mixed_batches(control, jobs, limits: BatchLimits) -> int:
    """How many of the batches ``limits`` make hold rows of more than one direction."""
    lengths, direction = [], []
    for d, (texts, src, tgt) in enumerate(jobs):
        lengths += [len(ids) for ids in control.model_inputs(texts, src, tgt)]
        direction += [d] * len(texts)
    batches = length_batches(lengths, limits.max_sentences, limits.max_tokens, limits.reserve_per_row)
    return sum(len({direction[i] for i in b}) > 1 for b in batches)


def _check_mixed_equals_per_direction(model, control, jobs, **limits):
    engine = make_engine("hf", model, control, MAX_NEW_TOKENS, **limits)
    assert isinstance(engine, HFEngine)
    assert _mixed_batches(control, jobs, batch_limits(model, MAX_NEW_TOKENS, **limits)) >= 2
    per_direction = [engine.translate(texts, src, tgt) for texts, src, tgt in jobs]
    mixed = engine.translate_many(jobs)
    flat = [h for hyps in per_direction for h in hyps]
    assert len(set(flat)) > len(flat) // 2  # outputs vary with the input: a misplaced row shows
    assert mixed == per_direction
    return per_direction


@pytest.mark.parametrize("family", ["m2m", "nllb", "mbart", "marian"])
def test_mixed_directions_decode_as_each_direction_alone_encoder_decoder(world, family):
    records, languages, _ = world
    model, control = _encoder_decoder(family, records, languages)
    jobs = _jobs(records, languages)
    per_direction = _check_mixed_equals_per_direction(model, control, jobs, max_batch_sentences=9)
    # The per-row decoder prefix gives what forcing the target language as the first token gives.
    assert per_direction == [_forced_bos_reference(model, control, *job) for job in jobs]
    # Different targets of the same sources really come out different (each row got its own).
    texts = jobs[0][0]
    by_target = HFEngine(model, control, MAX_NEW_TOKENS).translate_many([(texts, "xb", t) for t in ("en", "xa")])
    assert by_target[0] != by_target[1]


@pytest.mark.parametrize("family", ["qwen2-chat", "llama-plain"])
def test_mixed_directions_decode_as_each_direction_alone_decoder_only(world, family):
    records, languages, names = world
    model, control = _decoder_only(family, records, names)
    jobs = _jobs(records, languages)
    # A token budget that cuts several batches of left-padded prompts of unequal length.
    _check_mixed_equals_per_direction(model, control, jobs, max_batch_tokens=400)
    # And one sentence at a time, without any padding, gives the same again.
    texts, src, tgt = jobs[3]
    alone = [control.generate(model, [text], src, tgt, MAX_NEW_TOKENS)[0] for text in texts]
    assert alone == HFEngine(model, control, MAX_NEW_TOKENS).translate_many([jobs[3]])[0]


@pytest.mark.parametrize("family", ["llama-plain", "m2m"])
def test_min_new_tokens_decodes_past_the_stop_tokens(world, family):
    records, languages, names = world
    if family == "m2m":
        model, control = _encoder_decoder(family, records, languages)
    else:
        model, control = _decoder_only(family, records, names)
    with torch.no_grad():  # random weights rarely end a sentence; make about half of them stop early
        model.get_output_embeddings().weight[control.tokenizer.eos_token_id] *= 2
    jobs = _jobs(records, languages)
    free = make_engine("hf", model, control, MAX_NEW_TOKENS).translate_many(jobs)
    fixed = make_engine("hf", model, control, MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS).translate_many(jobs)
    # Some rows stop early on their own; forced to the full length, they go on.
    changed = [(a, b) for hyps_a, hyps_b in zip(free, fixed) for a, b in zip(hyps_a, hyps_b) if a != b]
    assert changed and all(len(b) > len(a) for a, b in changed)
    texts, src, tgt = jobs[2]
    assert fixed[2] == [control.generate(model, [t], src, tgt, MAX_NEW_TOKENS, MAX_NEW_TOKENS)[0] for t in texts]


def test_batch_limits_follow_the_device_memory_and_the_users_cap(world):
    records, languages, names = world
    small, _ = _decoder_only("llama-plain", records, names)
    # The CPU keeps fixed budgets; the user's cap replaces the sentence default.
    assert batch_limits(small, 64) == BatchLimits(DEFAULT_MAX_BATCH_SENTENCES, DEFAULT_MAX_BATCH_TOKENS, 0)
    assert batch_limits(small, 64, max_batch_sentences=7).max_sentences == 7
    # The footprint of a Qwen2.5-0.5B shape in bfloat16: 24 layers of 2 key/value heads of 64.
    config = Qwen2Config(vocab_size=1000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2)
    with torch.device("meta"):
        big = Qwen2ForCausalLM(config).to(torch.bfloat16)
    per_position, per_row = generation_footprint(big)
    assert per_position == 2 * 24 * 2 * 64 * 2 + (4 * 896 + 3 * 4864) * 2
    assert per_row == 3 * 1000 * 4
    # On a GPU (free memory given): the budget grows with free memory, shrinks with the output
    # length, and a full batch of the longest rows stays inside the share of memory it may use.
    gib = 1 << 30
    one, four = batch_limits(big, 64, free_bytes=gib), batch_limits(big, 64, free_bytes=4 * gib)
    assert 4 * one.max_tokens <= four.max_tokens < 4 * (one.max_tokens + 1) and four.max_sentences > one.max_sentences
    assert batch_limits(big, 256, free_bytes=gib).reserve_per_row > one.reserve_per_row >= 64
    assert one.max_tokens * per_position <= gib // 2
    assert batch_limits(big, 64, max_batch_sentences=100, free_bytes=4 * gib).max_sentences == 100
    rows = length_batches([40] * 10_000, four.max_sentences, four.max_tokens, four.reserve_per_row)
    assert all(len(b) * (40 + four.reserve_per_row) * per_position <= 2 * gib for b in rows)
    assert sum(len(b) for b in rows) == 10_000
