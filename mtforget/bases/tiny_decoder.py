"""Built-in tiny decoder-only bases: a plain-prompt LM and its instruction-tuned sibling.

``tiny:lm`` is a Llama-class decoder trained from scratch on every direction of the corpus, always
laid out in one fixed plain prompt ("Translate the following sentence from X to Y.\\nX: …\\nY:"),
like a base LLM that has seen translation in one format only. ``tiny:lm-instruct`` starts from
``tiny:lm``'s weights and is instruction-tuned through a chat template on varied natural
instructions and a share of non-translation tasks, the way an -Instruct model is made from its base.
Both are about the size of ``tiny:small``, so a study can contrast encoder-decoder with decoder-only
at similar size, and instruction-following with its absence.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from mtforget.bases.pretraining import PIECES, Precision, pretraining_precision
from mtforget.bases.specs import (DECODER_RECIPE_VERSION, DECODER_SPEC, DECODER_STYLES, DecoderSpec,
                                  plain_decoder_recipe)
from mtforget.cache import cached_dir, fingerprint
from mtforget.data.corpus import Corpus, Segment
from mtforget.data.languages import language_name
from mtforget.data.splits import Splits, sample_all_directions
from mtforget.models.instruction import INSTRUCTION, InstructionControl
from mtforget.models.loading import count_parameters
from mtforget.models.tokenizer import train_tokenizer
from mtforget.train.loop import TrainSettings, train

CHAT_MARKERS = ("<|im_start|>", "<|im_end|>")
# ChatML, the layout of Qwen's instruct models.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Ways users ask for a translation; the study's own instruction is one of them, as it would be
# among the many phrasings an instruction-tuned model has seen.
TRANSLATE_PHRASINGS = (
    INSTRUCTION,
    "Translate this {src} text into {tgt}.",
    "Render the {src} sentence below in {tgt}.",
    "What is this {src} sentence in {tgt}?",
    "Give me a {tgt} translation of the following {src} sentence.",
    "Please translate into {tgt}.",
    "{src} to {tgt}, please.",
    "I need this in {tgt}.",
)
# Tasks other than translation, so the instruction decides the task rather than the format.
OTHER_TASKS = {
    "repeat": "Repeat the following sentence exactly.",
    "identify": "Which language is this sentence written in?",
    "count": "How many words are in this sentence?",
    "first": "What is the first word of this sentence?",
}


@dataclass(frozen=True)
class TaskExample:
    """One instruction-tuning example: an instruction, the user's text and the expected answer."""

    instruction: str
    text: str
    answer: str


@dataclass
class ChatTasks:
    """Encodes :class:`TaskExample` batches through the chat template (loss on the answer only)."""

    control: InstructionControl

    def batch(self, examples: list[TaskExample], multiple: int = 1) -> dict[str, torch.Tensor]:
        return self.control.training_batch([(self.control.chat_prompt(ex.instruction, ex.text),
                                             self.control.target(ex.answer)) for ex in examples], multiple)


def instruction_mix(segments: tuple[Segment, ...] | list[Segment], languages: list[str], names: dict[str, str],
                    n: int, task_share: float, seed: int, mix: dict[str, float] | None = None) -> list[TaskExample]:
    """``n`` instruction-tuning examples: translations under varied phrasings, and other tasks
    (languages weighted by ``mix``, as in pre-training)."""
    rng = random.Random(seed)
    pairs = sample_all_directions(segments, languages, n, seed, mix)
    out = []
    for ex in pairs:
        src, tgt = language_name(ex.src_lang, names), language_name(ex.tgt_lang, names)
        if rng.random() >= task_share:
            out.append(TaskExample(rng.choice(TRANSLATE_PHRASINGS).format(src=src, tgt=tgt), ex.src, ex.tgt))
            continue
        task = rng.choice(sorted(OTHER_TASKS))
        words = ex.src.split()
        answer = {"repeat": ex.src, "identify": src, "count": str(len(words)), "first": words[0] if words else ""}
        out.append(TaskExample(OTHER_TASKS[task], ex.src, answer[task]))
    return out


def build_decoder(spec: DecoderSpec, tokenizer, attention: str = "sdpa") -> LlamaForCausalLM:
    """A randomly initialised Llama-class decoder sized by ``spec`` for ``tokenizer`` (``attention``:
    a transformers attention implementation)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.d_model, intermediate_size=spec.ffn_dim,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=256, tie_word_embeddings=True, attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        attn_implementation=attention,
    )
    return LlamaForCausalLM(config)


def _tokenizer_texts(splits: Splits, languages: list[str], names: dict[str, str]):
    """The corpus plus the words and line breaks of the prompts, so none of them is unknown."""
    for seg in splits.train:
        yield from seg.translation.values()
    lines = [p.format(src=language_name(a, names), tgt=language_name(b, names))
             for p in TRANSLATE_PHRASINGS for a in languages for b in languages if a != b]
    lines += list(OTHER_TASKS.values()) + [language_name(lang, names) + ":" for lang in languages]
    for _ in range(20):  # the template's role names and line breaks, weighted like real prompts
        yield "\n".join(lines) + "\nsystem\nuser\nassistant\n0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"


def tiny_decoder_base(name: str, corpus: Corpus, splits: Splits, seed: int, names: dict[str, str],
                      steps: int | None = None, progress: bool = True, mix: dict[str, float] | None = None) -> Path:
    """The directory of ``tiny:lm`` or ``tiny:lm-instruct`` for ``corpus`` (built and cached if missing).

    ``steps`` overrides the plain pre-training budget; instruction tuning scales with it. ``mix``
    weighs the languages of pre-training and instruction tuning
    (:func:`~mtforget.data.splits.sample_all_directions`).
    """
    spec = DECODER_SPEC
    steps = steps or spec.steps
    precision = pretraining_precision()
    languages = list(corpus.languages)
    names = {lang: language_name(lang, names) for lang in languages}
    facts = {
        "recipe": DECODER_RECIPE_VERSION, "spec": plain_decoder_recipe(spec), "steps": steps,
        "corpus": corpus.fingerprint(), "train_ids": fingerprint([s.id for s in splits.train]), "languages": languages,
        "names": names, "seed": seed, "precision": asdict(precision), "torch": torch.__version__,
        "transformers": transformers.__version__,
        **({"mix": mix} if mix else {}),  # only an uneven mix, so the even one keeps its keys
    }
    key = fingerprint(facts)
    if name == "lm-instruct":
        plain_dir = tiny_decoder_base("lm", corpus, splits, seed, names, steps, progress, mix)
        tuned_key = fingerprint({**facts, "spec": asdict(spec)})
        return cached_dir("bases", f"tiny-lm-instruct-{tuned_key}",
                          lambda out: _instruction_tune(plain_dir, out, spec, steps, splits, languages, names, seed,
                                                        progress, precision, mix))

    def build(out: Path) -> None:
        tokenizer = train_tokenizer(_tokenizer_texts(splits, languages, names), [], spec.vocab_size, CHAT_MARKERS)
        torch.manual_seed(seed)
        model = build_decoder(spec, tokenizer, precision.attention)
        control = InstructionControl(tokenizer, names, use_chat=False)
        examples = sample_all_directions(splits.train, languages, steps * spec.batch_size, seed, mix)
        settings = TrainSettings(lr=spec.lr, batch_size=spec.batch_size, max_steps=steps, warmup_ratio=0.06,
                                 schedule="linear", seed=seed, log_every=100, bf16=precision.bf16,
                                 pad_to_multiple_of=precision.pad_to_multiple_of, micro_batches=PIECES)
        outcome = train(model, control, examples, settings, desc="pre-train tiny:lm", progress=progress)
        _save(out, model, tokenizer, {"tiny": "lm", "style": DECODER_STYLES["lm"], "steps": outcome.steps,
                                      "train_seconds": round(outcome.seconds, 2),
                                      "final_train_loss": outcome.train_loss, "precision": precision.name,
                                      "pad_to_multiple_of": precision.pad_to_multiple_of},
              spec, seed, languages, corpus, mix)

    return cached_dir("bases", f"tiny-lm-{key}", build)


def _instruction_tune(plain_dir: Path, out: Path, spec: DecoderSpec, steps: int, splits: Splits,
                      languages: list[str], names: dict[str, str], seed: int, progress: bool,
                      precision: Precision, mix: dict[str, float] | None = None) -> None:
    """Continue ``tiny:lm`` on chat-formatted instructions: the ``-instruct`` sibling."""
    model = LlamaForCausalLM.from_pretrained(plain_dir, use_safetensors=True, attn_implementation=precision.attention)
    tokenizer = transformers.AutoTokenizer.from_pretrained(plain_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tuning_steps = max(1, round(spec.instruct_steps * steps / spec.steps))
    examples = instruction_mix(splits.train, languages, names, tuning_steps * spec.batch_size, spec.task_share,
                               seed + 1, mix)
    settings = TrainSettings(lr=spec.instruct_lr, batch_size=spec.batch_size, max_steps=tuning_steps,
                             warmup_ratio=0.06, schedule="linear", seed=seed + 1, log_every=50, bf16=precision.bf16,
                             pad_to_multiple_of=precision.pad_to_multiple_of, micro_batches=PIECES)
    tasks = ChatTasks(InstructionControl(tokenizer, names, use_chat=True))
    outcome = train(model, tasks, examples, settings, desc="instruction-tune tiny:lm-instruct", progress=progress)
    _save(out, model, tokenizer, {"tiny": "lm-instruct", "style": DECODER_STYLES["lm-instruct"],
                                  "steps": steps, "instruct_steps": outcome.steps,
                                  "train_seconds": round(outcome.seconds, 2), "final_train_loss": outcome.train_loss,
                                  "precision": precision.name, "pad_to_multiple_of": precision.pad_to_multiple_of},
          spec, seed, languages, None, mix)


def _save(out: Path, model, tokenizer, facts: dict, spec: DecoderSpec, seed: int, languages: list[str],
          corpus: Corpus | None, mix: dict[str, float] | None = None) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {**facts, "spec": asdict(spec), "seed": seed, "parameters": count_parameters(model), "languages": languages}
    if corpus is not None:
        meta["corpus"] = corpus.fingerprint()
    if mix:
        meta["pretrain_mix"] = mix
    (out / "mtforget_base.json").write_text(json.dumps(meta, indent=2))
