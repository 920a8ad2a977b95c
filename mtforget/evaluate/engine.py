"""Generation engines: one interface over Hugging Face ``generate`` and CTranslate2.

Evaluating a study translates every test sentence in every direction twice per trial (base and
fine-tuned), so decoding speed bounds how many directions and trials a study can afford.
:class:`CT2Engine` runs the same greedy search in CTranslate2, an inference engine built for
translation (fused kernels, its own length-sorted batching, optional int8 weights);
:class:`HFEngine` is the reference path through ``model.generate``. Both read the same inputs from
the model's language control and clean the outputs the same way, so they differ only by
floating-point detail: :data:`ENGINE_CHRF_TOLERANCE` bounds by how much, and the tests hold both
engines to it.

``make_engine("auto", ...)`` picks CTranslate2 when it can convert the architecture and falls back
to Hugging Face (logging why) when it cannot; the engine's ``name`` goes into results and into the
base-evaluation cache key, so scores from different engines are never mixed up.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Literal

import torch
import transformers

from mtforget.cache import cached_dir, fingerprint
from mtforget.errors import UsageError
from mtforget.evaluate.generate import model_inputs, translate
from mtforget.models.instruction import InstructionControl, first_line
from mtforget.models.language import LanguageTokens, normalize_whitespace

log = logging.getLogger("mtforget")

EngineKind = Literal["auto", "ctranslate2", "hf"]
ComputeType = Literal["default", "float32", "int8", "int8_float32"]
Control = LanguageTokens | InstructionControl

# Largest corpus-chrF difference (points, 0-100) allowed between the two engines on the same
# model and sentences. Greedy search in float32 is the same algorithm in both, but the kernels sum
# in different orders, so a near-tie between two tokens can flip and change the rest of that
# sentence (on the demo's base: no sentence differs in float32, and int8 weights move mean chrF by
# under 0.1). A full point stays below the forgetting deltas a study reports, and far below what
# a real decoding bug (wrong language prefix, lost end token, misordered outputs) costs.
ENGINE_CHRF_TOLERANCE = 1.0

# Padded input tokens per batch. Large enough that a batch of short sentences fills the cores,
# small enough that a batch of long prompts of a 7B model still fits a GPU's activations.
DEFAULT_MAX_BATCH_TOKENS = 4096

HF_ENGINE_NAME = "hf-generate"


class GenerationEngine(ABC):
    """Greedy translation of sentence lists with one model; ``close`` frees what it holds.

    ``name`` identifies the engine and its numeric settings (it is stored with results and keys
    cached evaluations); ``kind`` is ``"hf"`` or ``"ctranslate2"``.
    """

    name: str
    kind: str

    @abstractmethod
    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        """Translations of ``texts`` from ``src_lang`` to ``tgt_lang``, in the input order."""

    def translate_many(self, jobs: list[tuple[list[str], str, str]]) -> list[list[str]]:
        """Translations of several ``(texts, src_lang, tgt_lang)`` jobs, in order. Engines that can
        decode jobs concurrently override this; the default runs them one after the other."""
        return [self.translate(texts, src, tgt) for texts, src, tgt in jobs]

    def close(self) -> None:
        """Release the engine's resources (a converted model, threads); the HF model stays the caller's."""

    def __enter__(self) -> GenerationEngine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class HFEngine(GenerationEngine):
    """Batched greedy ``model.generate``, batches length-sorted and sized by a token budget."""

    kind = "hf"

    def __init__(self, model: torch.nn.Module, control: Control, max_new_tokens: int = 64,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, max_batch_sentences: int = 128) -> None:
        self.model = model
        self.control = control
        self.max_new_tokens = max_new_tokens
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_sentences = max_batch_sentences
        self.name = HF_ENGINE_NAME
        self.fallback_reason: str | None = None  # why "auto" did not pick CTranslate2, if it did not

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        """Translations of ``texts`` from ``src_lang`` to ``tgt_lang``, in the input order."""
        return translate(self.model, self.control, texts, src_lang, tgt_lang, batch_size=self.max_batch_sentences,
                         max_new_tokens=self.max_new_tokens, max_batch_tokens=self.max_batch_tokens)


class CT2Engine(GenerationEngine):
    """CTranslate2 greedy decoding of a converted copy of ``model`` (converted once, cached).

    Encoder-decoder models run in a ``Translator`` (target language token as the target prefix,
    except Marian, whose target is named on the source side); decoder-only models in a
    ``Generator`` that continues the control's prompt and stops at its stop tokens.

    ``cache_conversion`` keeps the conversion in the cache for later engines on the same weights
    (a base model, evaluated by every trial); off, it goes to a temporary directory that
    ``close`` deletes (a fine-tuned model, evaluated once: a 7B conversion is 14 GB of disk).
    """

    kind = "ctranslate2"

    def __init__(self, model: torch.nn.Module, control: Control, max_new_tokens: int = 64,
                 compute_type: ComputeType | str = "default",
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, cache_conversion: bool = True) -> None:
        ct2 = _ctranslate2()
        reason = ct2_unavailable_reason(model, control)
        if ct2 is None or reason is not None:
            raise UsageError(f"eval.engine: CTranslate2 cannot run this model ({reason})")
        param = next(model.parameters())
        self.device = "cuda" if param.device.type == "cuda" else "cpu"
        self.compute_type = resolve_compute_type(compute_type, self.device, param.dtype)
        supported = ct2.get_supported_compute_types(self.device)
        if self.compute_type not in supported:
            raise UsageError(f"eval.compute_type: {self.compute_type} is not available on {self.device} "
                             f"(CTranslate2 supports {', '.join(sorted(supported))} there)")
        self.control = control
        self.tokenizer = control.tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_batch_tokens = max_batch_tokens
        self.name = f"ctranslate2-{ct2.__version__} {self.compute_type}"
        self._scratch = None if cache_conversion else Path(tempfile.mkdtemp(prefix="mtforget-ct2-model-"))
        try:
            self.model_dir, self.converted = convert_model(model, self.tokenizer, self.compute_type, self._scratch)
        except BaseException:
            self._remove_scratch()
            raise
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        runner = ct2.Translator if self.encoder_decoder else ct2.Generator
        # As many threads as torch has, so the two engines compare on equal hardware. Decoding
        # separate batches on separate threads (inter_threads) was faster on the demo's base (2,703
        # against 706 sentences/s with two threads), but left torch training 40% slower for the
        # rest of the process, so the threads split each batch instead.
        self._runner = runner(str(self.model_dir), device=self.device,
                              device_index=param.device.index or 0, compute_type=self.compute_type,
                              intra_threads=torch.get_num_threads(), inter_threads=1)

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        """Translations of ``texts`` from ``src_lang`` to ``tgt_lang``, in the input order."""
        return self.translate_many([(texts, src_lang, tgt_lang)])[0]

    def translate_many(self, jobs: list[tuple[list[str], str, str]]) -> list[list[str]]:
        """All jobs submitted at once; with several CTranslate2 workers they decode concurrently."""
        pending = [self._submit(texts, src, tgt) for texts, src, tgt in jobs]
        return [finish([r.result() for r in results]) if results else [] for results, finish in pending]

    def _submit(self, texts: list[str], src_lang: str, tgt_lang: str):
        """Start decoding ``texts``; returns the asynchronous results and the function that turns
        them into cleaned translations."""
        if self._runner is None:
            raise RuntimeError(f"{self.name}: the engine is closed")
        if not texts:
            return [], None
        tokens = [self.tokenizer.convert_ids_to_tokens(ids)
                  for ids in model_inputs(self.control, texts, src_lang, tgt_lang)]
        # batch_type "tokens": CTranslate2 sorts by length and fills batches up to the budget
        # itself, then returns results in the input order.
        batching = {"max_batch_size": self.max_batch_tokens, "batch_type": "tokens", "beam_size": 1}
        if self.encoder_decoder:
            prefix = None
            if self.control.convention != "marian":
                # The decoder is forced to start with the target language, as HF's forced_bos_token_id.
                lang = self.tokenizer.convert_ids_to_tokens(self.control.token_id(tgt_lang))
                prefix = [[lang] for _ in texts]
            # max_decoding_length counts the prefix token, as max_new_tokens counts the forced one;
            # min_decoding_length 0 and no input truncation, as in HF (the control truncates).
            results = self._runner.translate_batch(tokens, target_prefix=prefix,
                                                   max_decoding_length=self.max_new_tokens,
                                                   min_decoding_length=0, max_input_length=0, asynchronous=True,
                                                   **batching)
            return results, lambda done: [normalize_whitespace(self._decode(r.hypotheses[0])) for r in done]
        # include_prompt_in_result=False feeds the prompts in one pass and makes max_length count
        # new tokens only, like max_new_tokens; the stop token itself is not returned.
        results = self._runner.generate_batch(tokens, max_length=self.max_new_tokens, include_prompt_in_result=False,
                                              end_token=self.control.stop_ids, sampling_topk=1, asynchronous=True,
                                              **batching)
        return results, lambda done: [first_line(self._decode(r.sequences[0])) for r in done]

    def _decode(self, tokens: list[str]) -> str:
        # Through token strings rather than CTranslate2's ids: its vocabulary may be reordered or
        # padded relative to the tokenizer's (the M2M-100 converter moves <unk>).
        return self.tokenizer.decode(self.tokenizer.convert_tokens_to_ids(tokens), skip_special_tokens=True)

    def close(self) -> None:
        """Unload the converted model; a cached conversion stays on disk for the next engine."""
        self._runner = None
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def make_engine(kind: EngineKind | str, model: torch.nn.Module, control: Control, max_new_tokens: int = 64,
                compute_type: ComputeType | str = "default", max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                max_batch_sentences: int = 128, cache_conversion: bool = True) -> GenerationEngine:
    """The engine of ``kind`` for ``model``: ``"hf"``, ``"ctranslate2"`` (or a UsageError), or ``"auto"``.

    ``"auto"`` takes CTranslate2 when it is installed, has a converter for the architecture and
    the conversion succeeds; otherwise Hugging Face, with the reason logged and kept in the
    engine's ``fallback_reason``. ``compute_type`` applies to CTranslate2 only ("default":
    float32 on the CPU, the model's half precision on a GPU); ``max_batch_sentences`` caps the
    Hugging Face batches only (CTranslate2 batches by tokens alone); ``cache_conversion`` as in
    :class:`CT2Engine`.
    """
    if kind not in ("auto", "ctranslate2", "hf"):
        raise UsageError(f"eval.engine: unknown engine {kind!r} (auto, ctranslate2 or hf)")
    hf = {"max_new_tokens": max_new_tokens, "max_batch_tokens": max_batch_tokens,
          "max_batch_sentences": max_batch_sentences}
    if kind == "hf":
        return HFEngine(model, control, **hf)
    reason = ct2_unavailable_reason(model, control)
    if reason is None:
        try:
            return CT2Engine(model, control, max_new_tokens, compute_type, max_batch_tokens, cache_conversion)
        except Exception as exc:  # noqa: BLE001 - any conversion or loading failure means "use HF" under auto
            if kind == "ctranslate2":
                raise UsageError(f"eval.engine: ctranslate2 failed on this model: {type(exc).__name__}: "
                                 f"{_first_line(exc)}") from exc
            reason = f"conversion failed: {type(exc).__name__}: {_first_line(exc)}"
    elif kind == "ctranslate2":
        raise UsageError(f"eval.engine: ctranslate2 cannot run this model ({reason})")
    log.warning("eval.engine auto: using Hugging Face generate, not CTranslate2 (%s)", reason)
    if compute_type not in ("default", "float32"):
        log.warning("eval.compute_type %s applies to CTranslate2 only; Hugging Face runs the model as loaded",
                    compute_type)
    engine = HFEngine(model, control, **hf)
    engine.fallback_reason = reason
    return engine


def ct2_unavailable_reason(model: torch.nn.Module, control: Control) -> str | None:
    """Why CTranslate2 cannot run ``model`` with ``control``, or None when it should be able to.

    A cheap check before any conversion: the package imports, has a converter for the model's
    config class, and (on a GPU) sees a CUDA device. A conversion can still fail later (an odd
    vocabulary, say); ``make_engine`` handles that.
    """
    ct2 = _ctranslate2()
    if ct2 is None:
        return "the ctranslate2 package is not installed"
    from ctranslate2.converters import transformers as ct2_transformers

    config_name = type(model.config).__name__
    # The converter's registry of config classes: the only list of what it can convert.
    loaders = getattr(ct2_transformers, "_MODEL_LOADERS", None)
    if loaders is not None and config_name not in loaders:
        return f"no CTranslate2 converter for {config_name}"
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    if encoder_decoder != isinstance(control, LanguageTokens):
        return "the language control does not match the architecture"
    if next(model.parameters()).device.type == "cuda" and ct2.get_cuda_device_count() == 0:
        return "this ctranslate2 build sees no CUDA device"
    return None


def resolve_compute_type(requested: str, device: str, dtype: torch.dtype) -> str:
    """The CTranslate2 compute type for ``requested``: "default" is float32 on the CPU, where
    it reproduces the HF model's numbers, and the model's own half precision on a GPU."""
    if requested != "default":
        return requested
    if device == "cuda":
        return "bfloat16" if dtype == torch.bfloat16 else "float16"
    return "float32"


def convert_model(model: torch.nn.Module, tokenizer, quantization: str,
                  out_dir: Path | None = None) -> tuple[Path, bool]:
    """The CTranslate2 conversion of the in-memory ``model``, and whether this call converted.

    Without ``out_dir`` the conversion is cached under a hash of the weights, config and
    vocabulary (what the converted model is made of), the quantization and the library versions,
    so a fine-tuned model gets its own entry and an unchanged one is converted only once; with
    ``out_dir`` it is written there, uncached. The model is saved (safetensors) with its tokenizer
    to a temporary directory for the converter, which is deleted afterwards.
    """
    from ctranslate2.converters import TransformersConverter

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="mtforget-ct2-") as tmp, _quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            # force: the output directory exists already (empty), which the converter would refuse.
            TransformersConverter(tmp).convert(str(out), quantization=quantization, force=True)
        log.info("converted the model to CTranslate2 (%s)", quantization)

    if out_dir is not None:
        build(out_dir)
        return out_dir, True
    return _cached_conversion(model, tokenizer, quantization, build)


def _cached_conversion(model: torch.nn.Module, tokenizer, quantization: str,
                       build: Callable[[Path], None]) -> tuple[Path, bool]:
    """``build`` into the ct2 cache entry of this model, unless the entry exists already."""
    from ctranslate2 import __version__ as ct2_version

    key = fingerprint({
        "weights": weights_fingerprint(model),
        # Less where the checkpoint was loaded from, which does not change the converted model.
        "config": {k: v for k, v in model.config.to_dict().items()
                   if k not in ("_name_or_path", "transformers_version")},
        "vocabulary": sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]),
        "special_tokens": tokenizer.special_tokens_map,
        "quantization": quantization,
        "ctranslate2": ct2_version,
        "transformers": transformers.__version__,
    })
    converted = False

    def build_once(out: Path) -> None:
        nonlocal converted
        build(out)
        converted = True

    return cached_dir("ct2", f"{type(model.config).__name__}-{key}", build_once), converted


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every tensor of the state dict: names, dtypes, shapes and bytes.

    Hashing the bytes (rather than a path or mtime) is what tells a fine-tuned model from its base
    and an added language token from none; it reads each tensor once, cheap next to a conversion.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the save/load progress bars of a conversion (they would fill trial logs)."""
    utils = transformers.utils.logging
    enabled = utils.is_progress_bar_enabled()
    utils.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            utils.enable_progress_bar()


def _ctranslate2() -> ModuleType | None:
    """The ctranslate2 module, or None where it is not installed (then "auto" uses HF)."""
    try:
        import ctranslate2
    except ImportError:
        return None
    return ctranslate2


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
