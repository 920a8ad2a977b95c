"""Model families and language control: tiny random checkpoints of several architectures, each run
through `mtforget run --set model.path=DIR` as a user would with their own checkpoint."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (LlamaConfig, LlamaForCausalLM, M2M100Config, M2M100ForConditionalGeneration, MarianConfig,
                          MarianMTModel, Qwen2Config, Qwen2ForCausalLM)

from mtforget.cli import main
from mtforget.data.languages import iso639_3, language_name, mbart_code, nllb_code
from mtforget.data.splits import Example
from mtforget.data.synthetic import SyntheticWorld
from mtforget.models.control import BatchEncoder, Control
from mtforget.models.instruction import InstructionControl
from mtforget.models.language import LanguageTokens, detect_convention
from mtforget.models.loading import load_model, make_control
from mtforget.models.tokenizer import train_tokenizer
from tests.conftest import tiny_study

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(extra_tokens):
    texts = [t for r in SyntheticWorld(seed=0, n_languages=5).corpus(400, seed=0) for t in r["translation"].values()]
    # Real LLM tokenizers cover instruction text and newlines; so must these stand-ins.
    texts += ["Translate the following sentence from English to Wenufi.\nEnglish: x\nWenufi: system user assistant"] * 5
    tok = train_tokenizer(texts, [], 400)
    if extra_tokens:
        tok.add_tokens(extra_tokens, special_tokens=True)
    return tok


def _ids(tok):
    return {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


def build_checkpoint(family: str, path):
    """A tiny randomly initialised checkpoint of ``family``, saved as safetensors with its tokenizer."""
    torch.manual_seed(0)
    small = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256)
    causal = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True)
    if family == "nllb":  # NLLB is an M2M-100 architecture with FLORES-style codes
        tok = _tokenizer(["eng_Latn", "deu_Latn"])
        model = M2M100ForConditionalGeneration(M2M100Config(vocab_size=len(tok), decoder_start_token_id=tok.eos_token_id,
                                                            encoder_layerdrop=0.05, **small, **_ids(tok)))
    elif family == "marian":
        tok = _tokenizer([">>eng<<", ">>deu<<"])
        model = MarianMTModel(MarianConfig(vocab_size=len(tok), decoder_start_token_id=tok.pad_token_id,
                                           decoder_vocab_size=len(tok), **small, **_ids(tok)))
    elif family == "qwen2-chat":
        tok = _tokenizer(["<|im_start|>", "<|im_end|>"])
        tok.chat_template = CHATML
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), **causal, **_ids(tok)))
    elif family == "llama-plain":
        tok = _tokenizer([])
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **causal, **_ids(tok)))
    else:
        raise ValueError(family)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("family, architecture, control", [
    ("nllb", "encoder-decoder", "nllb"),
    ("marian", "encoder-decoder", "marian"),
    ("qwen2-chat", "decoder-only", "chat template"),
    ("llama-plain", "decoder-only", "plain prompt"),
])
def test_two_trial_study_on_a_local_checkpoint(tmp_path, family, architecture, control):
    ckpt = build_checkpoint(family, tmp_path / family)
    raw = tiny_study(**{"finetune.method": ["full", "lora"]})
    del raw["model"]["pretrain_steps"]  # the checkpoint is the base: no tiny base is pre-trained
    raw["finetune"]["size"] = 24
    raw["eval"]["max_new_tokens"] = 8
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--no-progress", "--set", f"model.path={ckpt}"]) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"full", "lora"}
    assert len(rows) == 2 * 5 * 4 * 5  # trials × directions × metrics
    infos = [json.loads(p.read_text())["info"] for p in (out / "trials").glob("*/result.json")]
    assert {i["architecture"] for i in infos} == {architecture}
    assert {i["language_control"] for i in infos} == {control}
    lora = next(i for i in infos if i["method"] == "lora")
    assert 0 < lora["trainable_parameters"] < lora["parameters"]
    if architecture == "encoder-decoder":
        # The checkpoint knew English (and German); the synthetic languages got new tokens.
        assert infos[0]["added_language_tokens"] == ["xa", "xb", "xc", "xd"]


def test_conventions_are_detected_and_spelled_per_family(tmp_path):
    cases = {"nllb": ("eng_Latn", "xa_Latn"), "marian": (">>eng<<", ">>xa<<")}
    for family, (en, xa) in cases.items():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(build_checkpoint(family, tmp_path / family))
        control = LanguageTokens.for_tokenizer(tok)
        assert control.convention == detect_convention(tok) == family
        assert control.token("en") == en and control.token("xa") == xa
    assert LanguageTokens(None).token("pt_BR") == "__pt_BR__"


def test_marian_names_the_target_on_the_source_side(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_checkpoint("marian", tmp_path / "m"))
    batch = LanguageTokens.for_tokenizer(tok).batch([Example("en", "de", "the dog", "der hund")])
    assert batch["input_ids"][0, 0].item() == tok.convert_tokens_to_ids(">>deu<<")
    assert tok.convert_tokens_to_ids(">>deu<<") not in batch["labels"][0].tolist()


@pytest.mark.parametrize("family, control_class", [("marian", LanguageTokens), ("nllb", LanguageTokens),
                                                   ("llama-plain", InstructionControl)])
def test_make_control_picks_by_architecture_a_control_with_every_protocol_member(tmp_path, family, control_class):
    model, tokenizer = load_model(build_checkpoint(family, tmp_path / family))
    control, _ = make_control(model, tokenizer, ["en", "de"])
    assert type(control) is control_class
    members = {name for cls in (BatchEncoder, Control) for name in (*vars(cls), *cls.__annotations__)
               if not name.startswith("_")}
    assert {"batch", "generate_rows", "model_inputs", "tokenizer"} <= members
    assert all(hasattr(control, name) for name in members), members - set(dir(control))
    assert control.encoder_decoder == model.config.is_encoder_decoder
    # What the decoder starts with: the target's token, except where the source names it (Marian)
    # or the prompt does (decoder-only).
    assert control.decoder_prefix("de") == ([control.token_id("de")] if family == "nllb" else [])
    assert control.clean(" a  b \nc") == ("a b" if family == "llama-plain" else "a b c")


def test_code_registry():
    assert nllb_code("de") == "deu_Latn" and nllb_code("zh_Hant") == "zho_Hant" and nllb_code("zh") == "zho_Hans"
    assert mbart_code("de") == "de_DE" and mbart_code("pt_BR") == "pt_XX" and mbart_code("xa") == "xa_XX"
    assert iso639_3("cs") == "ces" and iso639_3("eng") == "eng"
    assert language_name("pt_BR") == "Portuguese" and language_name("xa", {"xa": "Wenufi"}) == "Wenufi"


@pytest.mark.parametrize("chat", [True, False])
def test_instruction_prompts_mask_everything_but_the_target(chat):
    tok = _tokenizer(["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML if chat else None
    control = InstructionControl(tok, names={"xa": "Wenufi"})
    assert control.use_chat is chat
    prompt = tok.decode(control.prompt("the dog sleeps", "en", "xa"))
    assert "Translate the following sentence from English to Wenufi." in prompt
    assert prompt.rstrip().endswith("assistant" if chat else "Wenufi:")
    batch = control.batch([Example("en", "xa", "the dog sleeps", "co wucon")])
    labelled = [t for t in batch["labels"][0].tolist() if t != -100]
    assert labelled == control.target("co wucon")
    assert tok.decode(labelled, skip_special_tokens=True).strip() == "co wucon"
    assert control.stop_ids[0] == tok.eos_token_id
    if chat:
        assert tok.convert_tokens_to_ids("<|im_end|>") in control.stop_ids


def test_lora_switches_layerdrop_off_in_the_modules(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from mtforget.models.lora import apply_lora

    model = AutoModelForSeq2SeqLM.from_pretrained(build_checkpoint("nllb", tmp_path / "n"))
    assert model.model.encoder.layerdrop == 0.05
    wrapped = apply_lora(model, rank=2, alpha=4, dropout=0.0)
    assert all(getattr(m, "layerdrop", 0) == 0 for m in wrapped.modules())


def test_builtin_decoder_bases_plain_and_instruction_tuned(tmp_path):
    """tiny:lm is steered by a plain prompt, tiny:lm-instruct (built from it) by a chat template,
    and an encoder-decoder of similar size sits beside them in one list grid."""
    from mtforget.bases.tiny_decoder import OTHER_TASKS, TRANSLATE_PHRASINGS, instruction_mix
    from mtforget.study.trial import TrialMemo, _corpus_and_splits

    raw = tiny_study()
    raw["grid"] = [{"model.tiny": ["small", "lm", "lm-instruct"]}, {"model.tiny": ["lm"], "finetune.method": ["lora"]}]
    raw["eval"]["max_new_tokens"] = 8
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 0
    infos = {(i["model"], i["method"]): i for i in
             (json.loads(p.read_text())["info"] for p in (out / "trials").glob("*/result.json"))}
    assert set(infos) == {("tiny:small", "full"), ("tiny:lm", "full"), ("tiny:lm-instruct", "full"), ("tiny:lm", "lora")}
    assert infos[("tiny:lm", "full")]["language_control"] == "plain prompt"
    assert infos[("tiny:lm-instruct", "full")]["language_control"] == "chat template"
    assert {infos[k]["architecture"] for k in infos if k[0] != "tiny:small"} == {"decoder-only"}
    small, lm = infos[("tiny:small", "full")]["parameters"], infos[("tiny:lm", "full")]["parameters"]
    assert 0.8 < lm / small < 1.25  # similar size: the architecture is the contrast
    assert infos[("tiny:lm", "lora")]["trainable_parameters"] < lm

    instruct = json.loads((Path(infos[("tiny:lm-instruct", "full")]["base_dir"]) / "mtforget_base.json").read_text())
    plain = json.loads((Path(infos[("tiny:lm", "full")]["base_dir"]) / "mtforget_base.json").read_text())
    assert instruct["instruct_steps"] > 0 and plain["style"] == "plain prompt"
    summary = (out / "report" / "summary.md").read_text()
    assert "## Controlled contrasts" in summary and "| model.tiny | lm-instruct |" in summary

    # The instruction mix varies the phrasing and holds other tasks in about the configured share.
    from mtforget.study.config import parse_study
    corpus, splits = _corpus_and_splits(parse_study(raw, "x").corpus, TrialMemo())
    mix = instruction_mix(splits.train, list(corpus.languages), {}, 400, 0.25, seed=3)
    others = [m for m in mix if m.instruction in OTHER_TASKS.values()]
    assert 60 < len(others) < 140
    assert len({m.instruction.split()[0] for m in mix if m not in others}) >= 4
    assert any(t.startswith("Translate the following") for t in TRANSLATE_PHRASINGS)
