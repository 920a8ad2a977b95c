"""Checkpoints fine-tuned elsewhere (``finetune.checkpoints``): each folder is a trial that is
evaluated against the base, not trained.

A folder is a full model (``config.json`` and safetensors weights), or a PEFT adapter
(``adapter_config.json``) that is applied to the base and merged into it. A folder without
tokenizer files takes the base's tokenizer; one with them must have the base's vocabulary. A
Trainer ``checkpoint-N`` folder carries its step (and, when the run counted them, its input
tokens) in ``trainer_state.json``; a glob of such folders expands in step order, so a series of
them is the forgetting curve of the run that wrote them.

Everything that can be checked without the base is checked when the study expands
(:func:`resolve_checkpoints`, :func:`check_study`); what needs the base (architecture,
vocabulary, the adapter's modules) is checked when the trial loads it (:func:`load_checkpoint`).
Every problem is a :class:`~mtforget.errors.UsageError` naming the folder.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtforget.cache import content_fingerprint
from mtforget.errors import UsageError

if TYPE_CHECKING:
    import torch

    from mtforget.study.config import StudyConfig

log = logging.getLogger("mtforget")

KEY = "finetune.checkpoints"
ADAPTER_CONFIG = "adapter_config.json"
TRAINER_STATE = "trainer_state.json"
# Any of these makes a folder carry its own tokenizer (fast, SentencePiece and BPE tokenizers).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "sentencepiece.bpe.model",
                   "spiece.model", "vocab.json")
# The keys of ``finetune`` that still mean something when nothing is trained here.
EVALUATION_KEYS = ("directions", "checkpoints", "max_length")


@dataclass(frozen=True)
class CheckpointFolder:
    """One checkpoint made elsewhere, as found on disk."""

    path: str  # absolute
    adapter: str | None  # the PEFT tuner type (``LORA``, ``IA3`` ...), None for a full model
    step: int | None  # the Trainer's global step (trainer_state.json), None without one
    tokens: int | None  # input tokens the Trainer had seen, when it counted them
    train_loss: float | None  # the last training loss trainer_state.json logged

    @property
    def label(self) -> str:
        """``<run folder>/checkpoint-N`` for a Trainer checkpoint, else the folder's name."""
        path = Path(self.path)
        return f"{path.parent.name}/{path.name}" if self.step is not None else path.name

    @property
    def method(self) -> str:
        """``full``, or the adapter's tuner in lower case (``lora``, ``ia3`` ...)."""
        return self.adapter.lower() if self.adapter else "full"

    @property
    def series(self) -> str | None:
        """The run a Trainer checkpoint belongs to (its parent folder); None for other folders."""
        return str(Path(self.path).parent) if self.step is not None else None

    def describe(self) -> dict:
        """What a trial records about the checkpoint it evaluated."""
        return {"path": self.path, "kind": "adapter" if self.adapter else "full", "method": self.method,
                "step": self.step, "tokens": self.tokens, "series": self.series,
                "tokenizer": "own" if has_tokenizer(Path(self.path)) else "base"}


def resolve_checkpoints(patterns: list[str]) -> list[CheckpointFolder]:
    """The folders ``patterns`` name, in order; a glob expands to its folders in step order
    (folders without a step after, by name). A folder named twice counts once."""
    folders: dict[str, CheckpointFolder] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [p for p in glob.glob(pattern) if Path(p).is_dir()]
            if not matches:
                raise UsageError(f"{KEY}: {pattern} matches no folder")
            found = sorted((inspect_checkpoint(p) for p in matches),
                           key=lambda f: (f.step is None, f.step or 0, _natural(Path(f.path).name)))
        else:
            found = [inspect_checkpoint(pattern)]
        for folder in found:
            folders.setdefault(folder.path, folder)
    return list(folders.values())


def inspect_checkpoint(path: str | Path) -> CheckpointFolder:
    """What kind of checkpoint ``path`` holds, and its step; exit 2 when it holds no weights."""
    folder = Path(path).expanduser().absolute()
    if not folder.is_dir():
        raise UsageError(f"{KEY}: {folder} is not a folder")
    adapter = None
    if (folder / ADAPTER_CONFIG).is_file():
        adapter = _adapter_type(folder)
        if not (folder / "adapter_model.safetensors").is_file():
            raise UsageError(f"{KEY}: {folder} is a PEFT adapter without adapter_model.safetensors (weights are "
                             "read from safetensors only)")
    else:
        if not (folder / "config.json").is_file():
            raise UsageError(f"{KEY}: {folder} holds neither a model (config.json) nor a PEFT adapter "
                             f"({ADAPTER_CONFIG})")
        if not any(folder.glob("*.safetensors")):
            raise UsageError(f"{KEY}: {folder} has no .safetensors weights (other formats are refused)")
    step, tokens, loss = _trainer_state(folder)
    return CheckpointFolder(str(folder), adapter, step, tokens, loss)


def check_study(config: StudyConfig) -> None:
    """A study with ``finetune.checkpoints`` says what they were fine-tuned on and sets nothing
    that only training here would read (it would not take effect)."""
    from mtforget.mitigations import MITIGATIONS, settings_of

    ft = config.finetune
    if not ft.directions:
        raise UsageError(f"finetune.directions: required with {KEY}: list the directions the checkpoints were "
                         "fine-tuned on (e.g. [en-de, de-en]); they decide each evaluation direction's category "
                         "(supervised, zero-shot, unseen ...)")
    defaults = type(ft)()
    for name in type(ft).model_fields:
        if name not in EVALUATION_KEYS and getattr(ft, name) != getattr(defaults, name):
            raise UsageError(f"finetune.{name}: has no effect with {KEY} (they are evaluated as they are, not "
                             "trained here); remove it")
    for m in MITIGATIONS.values():
        if m.key.startswith("eval.") and m.enabled(settings_of(config, m.key)):
            raise UsageError(f"{m.key}: needs a model fine-tuned here; it cannot apply to {KEY}")
    if config.eval.during_training.every:
        raise UsageError(f"eval.during_training.every: nothing trains with {KEY}; a series of Trainer "
                         "checkpoint-N folders gives the curve of the run that wrote them")


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` carries tokenizer files of its own."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


@dataclass
class LoadedCheckpoint:
    """The base turned into the checkpoint's model, and the tokenizer the checkpoint brings."""

    model: torch.nn.Module
    tokenizer: object | None  # None: the checkpoint takes the base's
    trainable: int  # parameters the checkpoint changed: the adapter's, or all of them


def load_checkpoint(folder: CheckpointFolder, model: torch.nn.Module, tokenizer, base: Path | str) -> LoadedCheckpoint:
    """Make ``model`` (the base ``base``, loaded and on its device) the checkpoint's model: a full
    checkpoint's weights are copied into it, an adapter is applied and merged; the base's
    architecture and vocabulary must be the checkpoint's."""
    from mtforget.models.loading import count_parameters

    if folder.adapter:
        model, trainable = _apply_adapter(folder, model, base)
    else:
        _copy_weights(folder, model, base)
        trainable = count_parameters(model)
    return LoadedCheckpoint(model, _own_tokenizer(folder, tokenizer, base), trainable)


def _copy_weights(folder: CheckpointFolder, model: torch.nn.Module, base: Path | str) -> None:
    """Copy a full checkpoint's weights into ``model`` (in its dtype, on its device)."""
    from transformers import AutoConfig

    where = folder.path
    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{KEY}: {where}: cannot read its config.json ({_first_line(exc)})") from None
    ours = model.config
    if config.model_type != ours.model_type:
        raise UsageError(f"{KEY}: {where} is a {config.model_type} model, the base {base} is {ours.model_type}: "
                         "give checkpoints fine-tuned from model.path")
    vocabulary = model.get_input_embeddings().num_embeddings
    if getattr(config, "vocab_size", vocabulary) != vocabulary:
        raise UsageError(f"{KEY}: {where} has a vocabulary of {config.vocab_size} tokens, the base {base} of "
                         f"{vocabulary} (with the language tokens the study needs): give checkpoints fine-tuned "
                         "from model.path")
    parameter = next(model.parameters())
    try:
        tuned = type(model).from_pretrained(where, use_safetensors=True, dtype=parameter.dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{KEY}: cannot load {where} as a {ours.model_type} model ({_first_line(exc)})") from None
    theirs, mine = tuned.state_dict(), model.state_dict()
    differ = sorted(set(theirs) ^ set(mine)) or [k for k in mine if mine[k].shape != theirs[k].shape]
    if differ:
        raise UsageError(f"{KEY}: {where} has another architecture than the base {base} (parameter {differ[0]} "
                         "differs): give checkpoints fine-tuned from model.path")
    model.load_state_dict(theirs)


def _apply_adapter(folder: CheckpointFolder, model: torch.nn.Module, base: Path | str) -> tuple[torch.nn.Module, int]:
    """Apply the adapter in ``folder`` to ``model`` and merge it; the adapter's parameters."""
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    where = folder.path
    settings = PeftConfig.from_pretrained(where)
    _check_adapter_base(where, settings.base_model_name_or_path, base)
    try:
        tuned = PeftModel.from_pretrained(model, where)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UsageError(f"{KEY}: the adapter {where} does not fit the base {base} ({_first_line(exc)})") from None
    with safe_open(str(Path(where) / "adapter_model.safetensors"), "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(tuned).items()}
    if saved != expected:
        differ = sorted(set(saved) ^ set(expected)) or sorted(k for k in saved if saved[k] != expected[k])
        raise UsageError(f"{KEY}: the adapter {where} does not fit the base {base} (its weight {differ[0]} has no "
                         "place in the base): give adapters trained on model.path")
    trainable = sum(math.prod(shape) for shape in saved.values())
    if not hasattr(tuned, "merge_and_unload"):
        raise UsageError(f"{KEY}: {where}: a {folder.adapter} adapter cannot be merged into the base")
    return tuned.merge_and_unload(), trainable


def _check_adapter_base(where: str, named: str | None, base: Path | str) -> None:
    """An adapter names the model it was trained on: a local folder must hold the base's files,
    a hub id must be the base's (a hub id for a local base cannot be checked: it is logged)."""
    if not named:
        return
    if Path(named).expanduser().is_dir():
        if content_fingerprint(Path(named).expanduser()) != content_fingerprint(base):
            raise UsageError(f"{KEY}: the adapter {where} was trained on {named}, whose files differ from the base "
                             f"{base}")
    elif not Path(str(base)).exists() and named != str(base):
        raise UsageError(f"{KEY}: the adapter {where} was trained on {named}, not on the base {base}")
    elif Path(str(base)).exists():
        log.info("the adapter %s names its base %s, which cannot be compared with %s here; its modules fit", where,
                 named, base)


def _own_tokenizer(folder: CheckpointFolder, tokenizer, base: Path | str):
    """The checkpoint's own tokenizer (which must have the base's vocabulary), or None."""
    if not has_tokenizer(Path(folder.path)):
        return None
    from transformers import AutoTokenizer

    try:
        own = AutoTokenizer.from_pretrained(folder.path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{KEY}: {folder.path}: cannot load its tokenizer ({_first_line(exc)})") from None
    if own.get_vocab() != tokenizer.get_vocab():
        raise UsageError(f"{KEY}: {folder.path} has a tokenizer with another vocabulary than the base {base} "
                         f"({len(own.get_vocab())} vs {len(tokenizer.get_vocab())} tokens): give checkpoints "
                         "fine-tuned from model.path")
    return own


def _adapter_type(folder: Path) -> str:
    try:
        settings = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"{KEY}: {folder / ADAPTER_CONFIG} is not valid JSON") from None
    if not isinstance(settings, dict) or not settings.get("peft_type"):
        raise UsageError(f"{KEY}: {folder / ADAPTER_CONFIG} names no peft_type")
    return str(settings["peft_type"])


def _trainer_state(folder: Path) -> tuple[int | None, int | None, float | None]:
    """The step, input tokens seen and last training loss a Trainer checkpoint records."""
    path = folder / TRAINER_STATE
    if not path.is_file():
        return None, None, None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        step = int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{KEY}: {path} has no global_step (not a Trainer state)") from None
    losses = [h["loss"] for h in state.get("log_history", []) if isinstance(h.get("loss"), (int, float))]
    return step, int(state.get("num_input_tokens_seen") or 0) or None, losses[-1] if losses else None


def _natural(name: str) -> list:
    """``checkpoint-10`` after ``checkpoint-9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
