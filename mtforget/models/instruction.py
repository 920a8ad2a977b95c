"""Language control for decoder-only LLMs: a natural-language instruction.

"Translate the following sentence from German to Czech." goes in the system turn of the
tokenizer's chat template when it has one (instruction-tuned models), or in a plain prompt when it
has none (base models). Loss is on the target tokens only; generation stops at the end of the
assistant turn (chat) or at the end of the line (plain), and only the new tokens are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mtforget.data.languages import language_name
from mtforget.data.splits import Example
from mtforget.models.language import OneDirectionGeneration, normalize_whitespace, pad, padded_batch

INSTRUCTION = "Translate the following sentence from {src} to {tgt}."
_MARK = "\x00MTFORGET\x00"  # stands for the assistant's text while reading the template's turn ending


@dataclass
class InstructionControl(OneDirectionGeneration):
    """Encodes examples for a decoder-only model and generates translations."""

    tokenizer: object
    names: dict[str, str] = field(default_factory=dict)  # language names beyond the registry's
    max_length: int = 256
    use_chat: bool | None = None  # None: the chat template when the tokenizer has one
    _turn_end: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.use_chat is None:
            self.use_chat = bool(getattr(self.tokenizer, "chat_template", None))
        if self.tokenizer.pad_token_id is None:
            # Decoder-only tokenizers often lack a pad token; padding is masked anyway.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.use_chat:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARK}], tokenize=False)
            ending = rendered.split(_MARK, 1)[1]
            self._turn_end = self.tokenizer(ending, add_special_tokens=False)["input_ids"]
        else:
            self._turn_end = self.tokenizer("\n", add_special_tokens=False)["input_ids"][-1:]

    @classmethod
    def for_model(cls, model, tokenizer, languages: list[str], names: dict[str, str],
                  max_length: int) -> tuple[InstructionControl, list[str]]:
        """The control of a decoder-only ``model``, through the chat template when the tokenizer
        has one, and no added tokens (an instruction names any language in words). ``max_length``
        caps the prompt and the answer each, so a sequence holds up to twice as many tokens."""
        return cls(tokenizer, names=names, max_length=2 * max_length), []

    @property
    def encoder_decoder(self) -> bool:
        """Never: instructions steer decoder-only models."""
        return False

    @property
    def known_languages(self) -> list[str]:
        """None: an instruction names languages in words, so there are no tokens to look up."""
        return []

    @property
    def description(self) -> str:
        """``chat template`` or ``plain prompt`` (see :class:`~mtforget.models.control.Control`)."""
        return "chat template" if self.use_chat else "plain prompt"

    def has(self, code: str) -> bool:
        """Always: an instruction can name any language."""
        return True

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end a translation."""
        stops = [self.tokenizer.eos_token_id] + self._turn_end[:1]
        return list(dict.fromkeys(t for t in stops if t is not None))

    def instruction(self, src: str, tgt: str) -> str:
        """The instruction for ``src→tgt`` with language names ("... from German to Czech.")."""
        return INSTRUCTION.format(src=language_name(src, self.names), tgt=language_name(tgt, self.names))

    def chat_prompt(self, instruction: str, text: str) -> list[int]:
        """Token ids of a chat turn asking ``instruction`` about ``text``, up to the assistant's answer."""
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": text}]
        try:
            rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 - some templates refuse a system turn: fold it into the user's
            merged = [{"role": "user", "content": f"{instruction}\n{text}"}]
            rendered = self.tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"][-(self.max_length // 2):]

    def prompt(self, text: str, src: str, tgt: str) -> list[int]:
        """Token ids of everything before the translation."""
        if self.use_chat:
            return self.chat_prompt(self.instruction(src, tgt), text)
        plain = f"{self.instruction(src, tgt)}\n{language_name(src, self.names)}: {text}\n" \
                f"{language_name(tgt, self.names)}:"
        return self.tokenizer(plain)["input_ids"][-(self.max_length // 2):]

    def model_inputs(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[list[int]]:
        """The prompts of ``texts`` in one direction, as :meth:`generate_rows` builds them."""
        return [self.prompt(text, src_lang, tgt_lang) for text in texts]

    def decoder_prefix(self, tgt_lang: str) -> list[int]:
        """Nothing: the prompt names the target language."""
        return []

    def clean(self, text: str) -> str:
        """The scored form of a decoded continuation: its first line (see :func:`first_line`)."""
        return first_line(text)

    def target(self, text: str) -> list[int]:
        """Token ids of the translation and what ends it (the turn ending, or a newline and eos)."""
        ids = self.tokenizer(text if self.use_chat else " " + text, add_special_tokens=False)["input_ids"]
        ending = self._turn_end if self.use_chat else self._turn_end + [self.tokenizer.eos_token_id]
        return ids[: self.max_length // 2 - len(ending)] + ending

    def batch(self, examples: list[Example], multiple: int = 1) -> dict[str, torch.Tensor]:
        """Prompt + target per example, right-padded (to a multiple of ``multiple``); labels only on the target."""
        return self.training_batch([(self.prompt(ex.src, ex.src_lang, ex.tgt_lang), self.target(ex.tgt))
                                    for ex in examples], multiple)

    def training_batch(self, pairs: list[tuple[list[int], list[int]]], multiple: int = 1) -> dict[str, torch.Tensor]:
        """Padded ``prompt + answer`` sequences from (prompt ids, answer ids), loss on the answer only."""
        seqs = [prompt + answer for prompt, answer in pairs]
        labels = [[-100] * len(prompt) + answer for prompt, answer in pairs]
        return padded_batch(seqs, labels, self.tokenizer.pad_token_id, multiple)

    @torch.no_grad()
    def generate_rows(self, model, texts: list[str], src_langs: list[str], tgt_langs: list[str],
                      max_new_tokens: int, min_new_tokens: int = 0) -> list[str]:
        """Greedy translations of one batch whose rows may each go in another direction: each
        row's prompt names its own languages, prompts are left-padded (``generate`` derives the
        positions from the attention mask), only new tokens are decoded, first line only."""
        device = next(model.parameters()).device
        prompts = [self.prompt(t, s, g) for t, s, g in zip(texts, src_langs, tgt_langs)]
        input_ids, attention_mask = pad(prompts, self.tokenizer.pad_token_id, left=True)
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                   max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False,
                                   num_beams=1, eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id)
        new = generated[:, input_ids.shape[1]:]
        return [self.clean(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def first_line(text: str) -> str:
    """The translation in a decoder's continuation: its first line, whitespace-normalised.

    A model that does not stop at the end of the line goes on with more text (another sentence,
    the next prompt line); only the first line answers the instruction.
    """
    return normalize_whitespace(text.strip().split("\n", 1)[0])
