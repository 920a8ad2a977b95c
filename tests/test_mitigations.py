"""Mitigations and representations: the alignment objective, replay, weight interpolation and
layer-wise retrieval, each on tiny models, and all of them through a study run."""

import csv
import json

import pytest
import torch
from tokenizers import processors
from transformers import Qwen2Config, Qwen2ForCausalLM

from mtforget.bases.specs import TinySpec
from mtforget.bases.tiny_seq2seq import build_model
from mtforget.data.categories import CATEGORIES
from mtforget.data.corpus import Segment
from mtforget.data.replay import replay_examples, replay_size
from mtforget.data.splits import pivot_language, sample_directions
from mtforget.errors import UsageError
from mtforget.evaluate.representations import layerwise_retrieval, retrieval_accuracy, sentence_states
from mtforget.mitigations.alignment import AlignmentCallback
from mtforget.models.hidden import encode_sentences, resolve_layer
from mtforget.models.instruction import InstructionControl
from mtforget.models.interpolation import interpolate_state_dicts, interpolation_sweep, load_interpolated
from mtforget.models.language import LanguageTokens
from mtforget.models.lora import apply_lora
from mtforget.models.tokenizer import train_tokenizer
from mtforget.report.build import build_report
from mtforget.study.config import parse_study
from mtforget.study.runner import run_study
from mtforget.train.alignment import AlignmentObjective, info_nce, sample_alignment_pairs
from mtforget.train.loop import TrainSettings, train
from tests.conftest import Kill, OnLoss, resume_and_check, tiny_study, tiny_world

SPEC = TinySpec(d_model=32, layers=2, heads=2, ffn_dim=64, vocab_size=300, steps=1, batch_size=8, lr=1e-3)


@pytest.fixture(scope="module")
def world():
    corpus, languages, tokenizer, examples = tiny_world(n_languages=4, segments=240, n_examples=96)
    pairs = sample_alignment_pairs(corpus.segments, languages, pivot_language(corpus, languages), 48, seed=0)
    return corpus, languages, tokenizer, examples, pairs


def _encdec(tokenizer):
    torch.manual_seed(0)
    return build_model(SPEC, tokenizer)


def _objective(pairs, tokenizer, model, **kwargs):
    return AlignmentObjective(pairs, tokenizer, model.config.is_encoder_decoder, resolve_layer(model, "middle"),
                              batch_size=16, **kwargs)


def test_alignment_pairs_cover_every_non_pivot_language(world):
    corpus, languages, _, _, pairs = world
    assert pivot_language(corpus, languages) == "en"
    assert {p.lang for p in pairs} == set(languages) - {"en"}
    assert all(sum(p.lang == lang for p in pairs) == 48 for lang in languages if lang != "en")
    by_id = {s.id: s for s in corpus.segments}
    assert all(by_id[p.id].translation[p.lang] == p.text and by_id[p.id].translation["en"] == p.pivot_text
               for p in pairs)
    # Adding a language to the list leaves the pairs of the others as they were.
    fewer = sample_alignment_pairs(corpus.segments, ["en", "xa"], "en", 48, seed=0)
    assert fewer == [p for p in pairs if p.lang == "xa"]


def test_info_nce_prefers_the_matching_candidate_and_ignores_duplicate_pivots():
    torch.manual_seed(0)
    anchors = torch.randn(6, 32)
    assert info_nce(anchors, anchors, 0.1) < 0.1 and info_nce(anchors, anchors.roll(1, 0), 0.1) > 2
    # Rows 0 and 1 share a pivot sentence: neither may count the other's copy as a negative.
    candidates = anchors.clone()
    candidates[1] = candidates[0]
    assert info_nce(anchors, candidates, 0.1, ["a", "a", "b", "c", "d", "e"]) < info_nce(anchors, candidates, 0.1)


def test_alternate_schedule_interleaves_translation_and_alignment_steps(world):
    _, _, tokenizer, examples, pairs = world
    model = _encdec(tokenizer)

    class Recording(AlignmentObjective):
        def loss(self, model, step):
            aligned.append(step)
            return super().loss(model, step)

    aligned, decoder_ran = [], []
    # Only translation batches run the decoder; alignment stops inside the encoder.
    model.model.decoder.register_forward_pre_hook(lambda *_: decoder_ran.append(True))
    translated = []

    def watch(step, loss):
        if decoder_ran:
            translated.append(step)
            decoder_ran.clear()
        return loss

    objective = Recording(pairs, tokenizer, True, 1, batch_size=16)
    outcome = train(model, LanguageTokens(tokenizer), examples, TrainSettings(lr=3e-3, batch_size=8, max_steps=12,
                    log_every=1), progress=False, callbacks=[AlignmentCallback(objective), OnLoss(watch)])
    assert outcome.steps == 24  # each of the 12 translation steps is followed by an alignment step
    assert translated == list(range(1, 25, 2)) and aligned == list(range(2, 25, 2))
    assert [sorted(h) for h in outcome.history] == [["step", "train_loss"], ["align_loss", "step"]] * 12
    losses = [h["align_loss"] for h in outcome.history if "align_loss" in h]
    assert sum(losses[-4:]) / 4 < 0.85 * sum(losses[:4]) / 4  # the alignment objective is being learnt
    assert outcome.extra_losses["align_loss"] == pytest.approx(losses[-1], rel=1e-4)


def test_alignment_raises_retrieval_accuracy_at_its_layer(world):
    _, _, tokenizer, examples, pairs = world
    xa = [p for p in pairs if p.lang == "xa"][:40]

    def accuracy(model):
        states = sentence_states(model, tokenizer, [p.text for p in xa] + [p.pivot_text for p in xa], [1])[0]
        return retrieval_accuracy(states[:40], states[40:])

    def trained(auxiliary):
        model = _encdec(tokenizer)
        train(model, LanguageTokens(tokenizer), examples, TrainSettings(lr=3e-3, batch_size=8, max_steps=60),
              progress=False, callbacks=[AlignmentCallback(auxiliary)] if auxiliary else [])
        return model

    before = accuracy(_encdec(tokenizer))
    without = accuracy(trained(None))  # translation alone, the same steps
    aligned = accuracy(trained(AlignmentObjective(pairs, tokenizer, True, 1, batch_size=16, schedule="weighted")))
    assert aligned > max(before, without) + 0.2


def test_only_layers_up_to_the_alignment_layer_get_alignment_gradients(world):
    _, _, tokenizer, _, pairs = world
    model = _encdec(tokenizer)
    objective = _objective(pairs, tokenizer, model)
    assert objective.layer == 1  # the middle of 2 encoder layers
    objective.loss(model, step=2).backward()
    encoder = model.model.encoder

    def touched(module):
        return [n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]

    assert touched(encoder.layers[0]) and touched(model.model.shared)
    # The decoder's token embeddings are the shared (input) embeddings; nothing else of it may move.
    decoder = model.model.decoder
    assert not touched(encoder.layers[1]) and not touched(encoder.layer_norm)
    assert not touched(decoder.layers) and not touched(decoder.layer_norm)

    lora = apply_lora(_encdec(tokenizer), rank=2, alpha=4, dropout=0.0)
    objective.loss(lora, step=2).backward()
    with_grad = [n for n, p in lora.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert with_grad and all("lora_" in n and "encoder.layers.0." in n for n in with_grad)


def test_resumed_alignment_training_equals_uninterrupted(world, tmp_path):
    _, _, tokenizer, examples, pairs = world
    settings = TrainSettings(lr=3e-3, batch_size=8, max_steps=6, checkpoint_every=4, seed=0)
    control = LanguageTokens(tokenizer)
    reference = _encdec(tokenizer)
    train(reference, control, examples, settings, progress=False, callbacks=[AlignmentCallback(_objective(pairs, tokenizer, reference))])

    def kill_at_7(step, loss):
        if step == 7:
            raise Kill()
        return loss

    interrupted = _encdec(tokenizer)
    with pytest.raises(Kill):
        train(interrupted, control, examples, settings, progress=False, checkpoint_dir=tmp_path / "ckpt",
              callbacks=[AlignmentCallback(_objective(pairs, tokenizer, interrupted)), OnLoss(kill_at_7)])
    resumed = _encdec(tokenizer)
    outcome = train(resumed, control, examples, settings, progress=False, checkpoint_dir=tmp_path / "ckpt",
                    callbacks=[AlignmentCallback(_objective(pairs, tokenizer, resumed))])
    assert outcome.resumed_from == 4 and outcome.steps == 12
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def _qwen(tokenizer, layers=4):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return Qwen2ForCausalLM(config)


def test_alignment_on_a_decoder_only_model(world):
    corpus, languages, _, _, pairs = world
    texts = [t for s in corpus.segments for t in s.translation.values()]
    tokenizer = train_tokenizer(texts + ["Translate the following sentence from English to Wenufi.\n"] * 5, [], 300)
    model = _qwen(tokenizer)
    objective = _objective(pairs, tokenizer, model)
    assert objective.layer == 2 and not objective.encoder_decoder
    objective.loss(model, step=2).backward()
    layers = model.model.layers
    assert all(p.grad is not None for p in layers[1].parameters()) and model.model.embed_tokens.weight.grad is not None
    untouched = [*layers[2].parameters(), *layers[3].parameters(), *model.model.norm.parameters(), model.lm_head.weight]
    assert all(p.grad is None for p in untouched)
    model.zero_grad(set_to_none=True)

    control = InstructionControl(tokenizer, names={lang: lang for lang in languages})
    examples = sample_directions(corpus.segments, [("en", "xa"), ("xa", "en")], 32, seed=0)
    outcome = train(model, control, examples, TrainSettings(lr=3e-3, batch_size=8, max_steps=4, log_every=2),
                    progress=False, callbacks=[AlignmentCallback(_objective(pairs, tokenizer, model, schedule="weighted", weight=0.5))])
    assert outcome.steps == 4  # weighted: one optimizer step per translation batch
    assert all("align_loss" in h and "train_loss" in h for h in outcome.history)


def test_decoder_only_sentences_keep_bos_out_of_the_pool(world):
    corpus, languages, tokenizer, _, _ = world
    with_bos = train_tokenizer((t for s in corpus.segments for t in s.translation.values()), [], 300)
    with_bos._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", with_bos.bos_token_id)])
    batch = encode_sentences(with_bos, ["co wucon", "co"], encoder_decoder=False)
    assert batch.input_ids[:, 0].tolist() == [with_bos.bos_token_id] * 2
    assert batch.pool_mask[:, 0].tolist() == [0, 0] and batch.pool_mask[0, 1:].all()
    assert batch.pool_mask.sum(1).tolist() == [len(with_bos("co wucon", add_special_tokens=False)["input_ids"]),
                                              len(with_bos("co", add_special_tokens=False)["input_ids"])]
    plain = encode_sentences(tokenizer, ["co wucon"], encoder_decoder=True)
    assert plain.input_ids[0, -1] == tokenizer.eos_token_id and plain.pool_mask.equal(plain.attention_mask)


def test_replay_draws_outside_the_finetuning_directions_or_copies(world):
    corpus, languages, _, _, _ = world
    directions = [("en", "xa"), ("xa", "en")]
    assert replay_size(0.25, 32) == 8 and replay_size(0.0, 32) == 0
    replay = replay_examples(corpus.segments, languages, directions, 30, "other_directions", seed=1)
    assert len(replay) == 30
    pairs = {(e.src_lang, e.tgt_lang) for e in replay}
    assert not pairs & set(directions) and len(pairs) == 4 * 3 - 2  # 10 other directions, 3 examples each
    by_id = {s.id: s for s in corpus.segments}
    assert all(by_id[e.id].translation[e.src_lang] == e.src and by_id[e.id].translation[e.tgt_lang] == e.tgt
               for e in replay)
    assert replay == replay_examples(corpus.segments, languages, directions, 30, "other_directions", seed=1)

    copies = replay_examples(corpus.segments, languages, directions, 10, "copies", seed=1)
    assert len(copies) == 10 and all(e.src_lang == e.tgt_lang and e.src == e.tgt for e in copies)
    assert {e.src_lang for e in copies} == set(languages)


def test_interpolation_ends_are_the_two_models_and_the_middle_is_their_mean(world):
    _, _, tokenizer, _, _ = world
    base = _encdec(tokenizer)
    finetuned = _encdec(tokenizer)
    with torch.no_grad():
        for p in finetuned.parameters():
            p.add_(torch.randn_like(p))
    # Copies: a state dict shares storage with the model, which the sweep below changes.
    b = {k: v.clone() for k, v in base.state_dict().items()}
    f = {k: v.clone() for k, v in finetuned.state_dict().items()}
    b["step"], f["step"] = torch.tensor(1), torch.tensor(7)  # an integer buffer is not averaged
    for alpha, expected in ((0.0, b), (1.0, f)):
        mixed = interpolate_state_dicts(b, f, alpha)
        assert all(torch.equal(mixed[k], expected[k] if k != "step" else f[k]) for k in f)
    middle = interpolate_state_dicts(b, f, 0.5)
    key = "model.encoder.layers.0.fc1.weight"
    assert torch.allclose(middle[key], (b[key] + f[key]) / 2) and middle["step"].item() == 7
    del b["step"], f["step"]

    model = _encdec(tokenizer)
    load_interpolated(model, b, f, 0.25)
    assert torch.allclose(model.state_dict()[key], 0.75 * b[key] + 0.25 * f[key])
    # A sweep evaluates each interpolation and leaves the fine-tuned weights in place.
    seen = interpolation_sweep(finetuned, b, [0.0, 0.5], lambda m, a: m.state_dict()[key].clone())
    assert torch.equal(seen[0.0], b[key]) and torch.allclose(seen[0.5], middle[key])
    assert torch.equal(finetuned.state_dict()[key], f[key])


def test_retrieval_accuracy_is_high_for_aligned_states_and_low_for_shuffled_ones():
    torch.manual_seed(0)
    anchors = torch.randn(50, 16)
    aligned = anchors + 0.3 * torch.randn(50, 16)
    assert retrieval_accuracy(anchors, aligned) == 1.0
    assert retrieval_accuracy(anchors, aligned[torch.randperm(50)]) < 0.2


def test_layerwise_retrieval_of_identical_sentences_is_perfect_at_every_layer(world):
    corpus, languages, tokenizer, _, _ = world
    # "xa" made a copy of English: every layer must find each sentence's twin.
    distinct = list({s.translation["en"]: s for s in corpus.segments}.values())
    twins = [Segment(s.id, {**s.translation, "xa": s.translation["en"]}) for s in distinct]
    result = layerwise_retrieval(_encdec(tokenizer), tokenizer, twins, languages, "en", max_sentences=30)
    assert result["layers"] == [0, 1, 2] and result["sentences"] == {"xa-en": 30, "xb-en": 30, "xc-en": 30}
    assert result["pairs"]["xa-en"] == [1.0, 1.0, 1.0]
    assert max(result["pairs"]["xb-en"]) < 1.0  # a random model does not align real translations
    decoder_only = layerwise_retrieval(_qwen(tokenizer, layers=2), tokenizer, twins, languages, "en", 30)
    assert decoder_only["layers"] == [1, 2] and decoder_only["pairs"]["xa-en"] == [1.0, 1.0]


def _rows(out):
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_study_with_alignment_replay_and_interpolation(tmp_path, monkeypatch):
    raw = tiny_study(**{"finetune.size": [32]})
    raw["finetune"]["alignment"] = {"enabled": True, "pairs_per_language": 40}
    raw["finetune"]["replay"] = {"fraction": 0.25}
    raw["eval"]["interpolation"] = [0.5]
    study = parse_study(raw, "t")
    out = tmp_path / "s"
    assert run_study(study, out, progress=False) == 0
    trial_dir = next((out / "trials").iterdir())
    assert "-align-mid-alternate-replay0.25-" in trial_dir.name
    info = json.loads((trial_dir / "result.json").read_text())["info"]
    rows = _rows(out)
    assert {(r["alignment"], r["replay"], r["interpolation"], r["l2_to_base"]) for r in rows} == {
        ("mid-alternate", "0.25", "0.5", "none")}
    replay = info["mitigations"]["replay"]
    assert replay["examples"] == 8 and sum(replay["by_direction"].values()) == 8
    assert not set(replay["by_direction"]) & {"en-xa", "xa-en"}
    for r in rows:  # a direction trained on with replayed pairs is in no unseen category
        replayed = f"{r['src']}-{r['tgt']}" in replay["by_direction"]
        assert (r["category"] == "replayed") == replayed, r
        assert r["exposure"].startswith("replayed+") == replayed
        assert r["exposure"].endswith("aligned_both")  # every study language was aligned with the pivot
    assert info["exposure"]["replayed"] == sorted(replay["by_direction"])
    align = info["mitigations"]["alignment"]
    assert align["layer"] == 1 and align["pivot"] == "en" and align["pairs"] == 4 * 40
    assert align["pairs_per_language"] == {"xa": 40, "xb": 40, "xc": 40, "xd": 40}  # unseen languages too
    assert align["loss_curve"] and all(c["align_loss"] > 0 for c in align["loss_curve"])
    # (32 + 8 examples) / 16 = 3 translation steps, each followed by an alignment step.
    assert info["train"]["steps"] == 6

    sweep = info["mitigations"]["interpolation"]["points"]
    assert [e["alpha"] for e in sweep] == [0.0, 0.5, 1.0]
    assert list(sweep[1]["categories"]) == [c for c in CATEGORIES if c in {r["category"] for r in rows}]
    assert all(v["chrf_delta"] == 0 and v["off_target_delta"] == 0 for v in sweep[0]["categories"].values())
    for category, summary in sweep[2]["categories"].items():  # α=1 is the fine-tuned model of the rows
        deltas = [float(r["delta"]) for r in rows if r["category"] == category and r["metric"] == "chrf"]
        assert summary["chrf_delta"] == pytest.approx(sum(deltas) / len(deltas))
        assert summary["directions"] == len(deltas)

    reps = info["representations"]
    assert reps["marked_layer"] == 1  # the layer alignment trains
    for model in ("base", "finetuned"):
        assert reps[model]["layers"] == [0, 1, 2] and len(reps[model]["mean"]) == 3
        assert set(reps[model]["pairs"]) == {"xa-en", "xb-en", "xc-en", "xd-en"}
        assert all(0 <= a <= 1 for accs in reps[model]["pairs"].values() for a in accs)

    def comparable(d):
        return sorted((r["trial_id"], r["src"], r["tgt"], r["metric"], r["finetuned"]) for r in _rows(d))

    resume_and_check(monkeypatch, study, out, trial_dir, comparable(out), comparable)


def test_replay_of_chosen_directions_leaves_the_others_unseen_and_says_what_it_touched(tmp_path):
    raw = tiny_study(**{"finetune.size": [32]})
    raw["finetune"]["replay"] = {"fraction": 0.5, "directions": ["xc-xd", "xd-xc", "en-xc"]}
    raw["finetune"]["alignment"] = {"enabled": True, "pairs_per_language": 20, "languages": ["xb"]}
    raw["eval"]["during_training"] = {"every": 1, "directions": 5, "sentences": 4}
    out = tmp_path / "s"
    assert run_study(parse_study(raw, "t"), out, progress=False) == 0
    info = json.loads(next((out / "trials").glob("*/result.json")).read_text())["info"]
    assert set(info["mitigations"]["replay"]["by_direction"]) == {"xc-xd", "xd-xc", "en-xc"}
    rows = [r for r in _rows(out) if r["metric"] == "chrf"]
    category = {f"{r['src']}-{r['tgt']}": r["category"] for r in rows}
    exposure = {f"{r['src']}-{r['tgt']}": r["exposure"] for r in rows}
    assert {d for d, c in category.items() if c == "replayed"} == {"xc-xd", "xd-xc", "en-xc"}
    assert category["xd-en"] == "unseen_source" and category["xc-xb"] == "unseen_both"  # not rehearsed
    assert exposure["xc-xd"] == "replayed" and exposure["en-xc"] == "replayed+aligned_source"
    assert exposure["xb-xd"] == "aligned_source" and exposure["xc-xb"] == "aligned_target"
    assert exposure["xd-xc"] == "replayed" and exposure["xa-xd"] == "none"
    for point in info["forgetting_curve_by_direction"]:  # the curve's sample uses the same categories
        for direction, (sampled_category, _) in point["directions"].items():
            assert sampled_category == category[direction]
    assert info["exposure"] == {"replayed": ["en-xc", "xc-xd", "xd-xc"], "copied": [], "aligned": ["en", "xb"]}
    build_report(out)
    summary = (out / "report" / "summary.md").read_text()
    assert "## Directions by exposure" in summary and "| replayed |" in summary
    # Drift: every direction's shares, base and fine-tuned, add up to 1 over the classes.
    with (out / "drift.csv").open() as f:
        drift = list(csv.DictReader(f))
    totals = {}
    for d in drift:
        totals[(d["src"], d["tgt"], d["model"])] = totals.get((d["src"], d["tgt"], d["model"]), 0) + float(d["share"])
    assert {model for *_, model in totals} == {"base", "finetuned"} and len(totals) == 2 * len(category)
    assert all(abs(total - 1) < 1e-9 for total in totals.values())
    assert {d["category"] for d in drift if (d["src"], d["tgt"]) == ("xc", "xd")} == {"replayed"}
    assert "## Forgetting per unseen language" in summary


def test_replay_settings_that_cannot_hold_are_errors(tmp_path):
    raw = tiny_study(**{"finetune.size": [16]})
    raw["finetune"]["replay"] = {"fraction": 0.5, "directions": ["en-xa"]}
    with pytest.raises(UsageError, match="finetune.replay.directions: en-xa is a fine-tuning direction"):
        run_study(parse_study(raw, "t"), tmp_path / "a", progress=False)
    raw["finetune"]["replay"] = {"fraction": 0.5, "directions": ["xa-zz"]}
    with pytest.raises(UsageError, match="finetune.replay.directions: xa-zz is not a direction"):
        run_study(parse_study(raw, "t"), tmp_path / "b", progress=False)
    raw["finetune"]["replay"] = {"fraction": 0.5, "source": "copies", "directions": ["xb-xc"]}
    with pytest.raises(UsageError, match="directions: replayed directions need source: other_directions"):
        parse_study(raw, "t")
