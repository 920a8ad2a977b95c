"""Generation engines: one interface over Hugging Face ``generate`` and CTranslate2.

Evaluating a study translates every test sentence in every direction twice per trial (base and
fine-tuned), so decoding speed bounds how many directions and trials a study can afford.
:class:`CT2Engine` runs the same greedy search in CTranslate2, an inference engine built for
translation (fused kernels, its own length-sorted batching, optional int8 weights);
:class:`HFEngine` is the reference path through ``model.generate``. Both read the same inputs from
the model's language control and clean the outputs the same way, so they differ only by
floating-point detail: :data:`ENGINE_CHRF_TOLERANCE` bounds by how much, and the tests hold both
engines to it.

``make_engine("auto", ...)`` picks CTranslate2 only once it has translated a probe sentence on the
model's device, and falls back to Hugging Face (logging why) when it cannot: a wheel can import,
see a GPU and convert the model, and still fail at the first translation (a build linked against
another CUDA's libraries). The engine's ``name`` goes into results and into the base-evaluation
cache key, so scores from different engines are never mixed up.

Both engines decode all the directions of an evaluation together: rows of different directions
share batches, length-sorted over the whole evaluation, so a batch fills up however few sentences
each direction has. On a GPU the Hugging Face batches are sized from the free memory and the
model's shape (:func:`batch_limits`); on the CPU by fixed budgets.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Literal

import torch
import transformers

from mtforget.cache import cached_dir, fingerprint
from mtforget.errors import UsageError
from mtforget.evaluate.generate import Job, model_inputs, translate_jobs
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

# Padded input tokens per batch on the CPU (and CTranslate2's budget everywhere). Large enough
# that a batch of short sentences fills the cores, small enough that a batch of long prompts of a
# 7B model still fits a GPU's activations.
DEFAULT_MAX_BATCH_TOKENS = 4096
# Sentences per Hugging Face batch on the CPU, where the user sets no cap.
DEFAULT_MAX_BATCH_SENTENCES = 128
# Share of the GPU's free memory that Hugging Face batches may fill. The estimate of
# generation_footprint counts the cache and one layer's activations, not the allocator's
# fragmentation, attention kernels' workspaces or another process starting on the same GPU;
# half leaves room for all of those.
GPU_MEMORY_SHARE = 0.5
# What the probe translates when the caller names no sentence of its own.
PROBE_TEXT = "The weather is fine today."

HF_ENGINE_NAME = "hf-generate"


class GenerationEngine(ABC):
    """Greedy translation of sentence lists with one model; ``close`` frees what it holds.

    ``name`` identifies the engine and its numeric settings (it is stored with results and keys
    cached evaluations); ``kind`` is ``"hf"`` or ``"ctranslate2"``.
    """

    name: str
    kind: str
    fallback_reason: str | None = None  # why "auto" did not pick a faster engine, if it did not

    @abstractmethod
    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        """Translations of ``texts`` from ``src_lang`` to ``tgt_lang``, in the input order."""

    def translate_many(self, jobs: list[Job], progress: Callable[[int], None] | None = None) -> list[list[str]]:
        """Translations of several ``(texts, src_lang, tgt_lang)`` jobs, in order; ``progress`` is
        called with the number of sentences finished as they finish. Engines that decode jobs
        together override this; the default runs them one after the other."""
        outputs = []
        for texts, src, tgt in jobs:
            outputs.append(self.translate(texts, src, tgt))
            if progress is not None:
                progress(len(texts))
        return outputs

    def close(self) -> None:
        """Release the engine's resources (a converted model, threads); the HF model stays the caller's."""

    def __enter__(self) -> GenerationEngine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class HFEngine(GenerationEngine):
    """Batched greedy ``model.generate``: every job's rows length-sorted together, batches sized by
    :func:`batch_limits` (``max_batch_tokens`` and ``max_batch_sentences`` as there).

    ``translate`` decodes one direction on its own, as evaluation did before directions were mixed
    (benchmarks compare against it); ``translate_many`` mixes them. In float32 both give the same
    strings: a row's greedy output does not depend on what shares its batch. ``min_new_tokens``
    above 0 forces outputs of that length (benchmarks); evaluation leaves it at 0.
    """

    kind = "hf"

    def __init__(self, model: torch.nn.Module, control: Control, max_new_tokens: int = 64,
                 max_batch_tokens: int | None = None, max_batch_sentences: int | None = None,
                 min_new_tokens: int = 0) -> None:
        self.model = model
        self.control = control
        self.max_new_tokens = max_new_tokens
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_sentences = max_batch_sentences
        self.min_new_tokens = min_new_tokens
        self.name = HF_ENGINE_NAME

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        """Translations of ``texts`` from ``src_lang`` to ``tgt_lang``, in the input order."""
        return self.translate_many([(texts, src_lang, tgt_lang)])[0]

    def translate_many(self, jobs: list[Job], progress: Callable[[int], None] | None = None) -> list[list[str]]:
        """All jobs decoded together, rows of different directions in the same batches."""
        # Sized per call: the free GPU memory changes between evaluations (training, other engines).
        limits = batch_limits(self.model, self.max_new_tokens, self.max_batch_tokens, self.max_batch_sentences)
        return translate_jobs(self.model, self.control, jobs, limits.max_sentences, self.max_new_tokens,
                              limits.max_tokens, limits.reserve_per_row, self.min_new_tokens, progress)


@dataclass(frozen=True)
class BatchLimits:
    """How :func:`~mtforget.evaluate.generate.length_batches` cuts rows into batches: at most
    ``max_sentences`` rows and ``max_tokens`` positions, a row counting its input length plus
    ``reserve_per_row``."""

    max_sentences: int
    max_tokens: int
    reserve_per_row: int = 0


def batch_limits(model: torch.nn.Module, max_new_tokens: int, max_batch_tokens: int | None = None,
                 max_batch_sentences: int | None = None, free_bytes: int | None = None) -> BatchLimits:
    """Hugging Face batch limits for ``model`` on its device.

    On the CPU: :data:`DEFAULT_MAX_BATCH_TOKENS` padded input tokens and
    :data:`DEFAULT_MAX_BATCH_SENTENCES` sentences. On a GPU: :data:`GPU_MEMORY_SHARE` of the free
    memory (``free_bytes``, else what CUDA and torch's allocator have free) divided by the bytes a
    position costs (:func:`generation_footprint`), every row reserving room for ``max_new_tokens``
    generated positions and its logits, and as many sentences as that budget holds. A given
    ``max_batch_tokens`` replaces the budget (padded input tokens, no reserve, on any device); a
    given ``max_batch_sentences`` (the user's ``eval.batch_size``) caps the sentences everywhere.
    A given ``free_bytes`` sizes the batches as on a GPU with that much memory free, wherever the
    model is.
    """
    param = next(model.parameters())
    if param.device.type != "cuda" and free_bytes is None:
        return BatchLimits(max_batch_sentences or DEFAULT_MAX_BATCH_SENTENCES,
                           max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS)
    if max_batch_tokens is not None:
        tokens, reserve = max_batch_tokens, 0
    else:
        if free_bytes is None:
            free_bytes = cuda_free_bytes(param.device)
        per_position, per_row = generation_footprint(model)
        tokens = max(1, int(free_bytes * GPU_MEMORY_SHARE) // per_position)
        reserve = max_new_tokens + math.ceil(per_row / per_position)
    sentences = max(1, tokens // (1 + reserve))  # as many one-token rows as the budget holds
    if max_batch_sentences is not None:
        sentences = min(sentences, max_batch_sentences)
    return BatchLimits(sentences, tokens, reserve)


def generation_footprint(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes that greedy generation holds per sequence position, and per row, for ``model``.

    Per position: the key/value cache of every decoder layer (for an encoder-decoder also the
    cross-attention cache and the encoder output of each source position) plus one layer's
    activations (residual stream, attention projections, feed-forward), since without gradients
    only one layer's are alive at a time. Per row: the logits of a step in float32, which
    ``generate`` copies and post-processes (three vectors the size of the vocabulary).
    """
    config = model.config
    width = next(model.parameters()).element_size()
    hidden = config.hidden_size
    vocab = model.get_output_embeddings().weight.shape[0]
    if getattr(config, "is_encoder_decoder", False):
        layers = getattr(config, "decoder_layers", None) or config.num_hidden_layers
        ffn = max(getattr(config, "encoder_ffn_dim", 0) or 0, getattr(config, "decoder_ffn_dim", 0) or 0, 4 * hidden)
        # A source position holds cross-attention keys and values in every decoder layer and its
        # encoder output; a generated one self-attention keys and values: the larger of the two.
        cache = (2 * layers * hidden + hidden) * width
    else:
        layers = config.num_hidden_layers
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        ffn = getattr(config, "intermediate_size", None) or 4 * hidden
        cache = 2 * layers * kv_heads * head_dim * width
    activations = (4 * hidden + 3 * ffn) * width
    return cache + activations, 3 * vocab * 4


def cuda_free_bytes(device: torch.device) -> int:
    """Memory a new allocation can get on ``device``: what CUDA reports free plus what torch's
    caching allocator holds without using (it hands that out before asking CUDA for more)."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


class EngineUnavailable(RuntimeError):
    """CTranslate2 failed at one ``step`` of setting up (conversion, loading, a probe translation)."""

    def __init__(self, step: str, device: str, cause: BaseException) -> None:
        self.step = step
        self.device = device
        self.cause = f"{type(cause).__name__}: {_first_line(cause)}"
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        """One line: "CTranslate2 failed <step> on <device>: <exception>: <its first line>"."""
        return f"CTranslate2 failed {self.step} on {self.device}: {self.cause}"


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
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, cache_conversion: bool = True,
                 min_new_tokens: int = 0) -> None:
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
        self.min_new_tokens = min_new_tokens
        self.max_batch_tokens = max_batch_tokens
        self.name = f"ctranslate2-{ct2.__version__} {self.compute_type}"
        self._runner = None
        self._scratch = None if cache_conversion else Path(tempfile.mkdtemp(prefix="mtforget-ct2-model-"))
        try:
            try:
                self.model_dir, self.converted = convert_model(model, self.tokenizer, self.compute_type,
                                                               self._scratch)
            except Exception as exc:
                raise EngineUnavailable("the conversion", self.device, exc) from exc
            self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
            runner = ct2.Translator if self.encoder_decoder else ct2.Generator
            # As many threads as torch has, so the two engines compare on equal hardware. Decoding
            # separate batches on separate threads (inter_threads) was faster on the demo's base
            # (2,703 against 706 sentences/s with two threads), but left torch training 40% slower
            # for the rest of the process, so the threads split each batch instead.
            try:
                self._runner = runner(str(self.model_dir), device=self.device,
                                      device_index=param.device.index or 0, compute_type=self.compute_type,
                                      intra_threads=torch.get_num_threads(), inter_threads=1)
            except Exception as exc:
                raise EngineUnavailable("loading the converted model", self.device, exc) from exc
        except BaseException:
            self._remove_scratch()
            raise

    def probe(self, text: str, src_lang: str, tgt_lang: str) -> None:
        """Translate ``text`` once, as evaluation will; an :class:`EngineUnavailable` if that fails.

        Importing, seeing a GPU and loading the model prove little: the kernels' libraries load
        at the first translation (a wheel built for CUDA 12 fails there under CUDA 13).
        """
        try:
            self.translate([text], src_lang, tgt_lang)
        except Exception as exc:
            raise EngineUnavailable("a probe translation", self.device, exc) from exc

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        """Translations of ``texts`` from ``src_lang`` to ``tgt_lang``, in the input order."""
        return self.translate_many([(texts, src_lang, tgt_lang)])[0]

    def translate_many(self, jobs: list[Job], progress: Callable[[int], None] | None = None) -> list[list[str]]:
        """All jobs in one call: CTranslate2 sorts their rows by length together and fills batches
        up to the token budget, rows of different directions side by side."""
        if self._runner is None:
            raise RuntimeError(f"{self.name}: the engine is closed")
        tokens, prefixes = [], []
        for texts, src, tgt in jobs:
            if not texts:
                continue
            tokens += [self.tokenizer.convert_ids_to_tokens(ids) for ids in model_inputs(self.control, texts, src, tgt)]
            if self.encoder_decoder and self.control.convention != "marian":
                # The decoder starts with the target language, as HF's per-row decoder prefix.
                prefixes += [[self.tokenizer.convert_ids_to_tokens(self.control.token_id(tgt))]] * len(texts)
        if not tokens:
            return [[] for _ in jobs]
        # batch_type "tokens": CTranslate2 sorts by length and fills batches up to the budget
        # itself, then returns results in the input order.
        batching = {"max_batch_size": self.max_batch_tokens, "batch_type": "tokens", "beam_size": 1,
                    "asynchronous": True}
        if self.encoder_decoder:
            # max_decoding_length counts the prefix token, as the HF control counts the language
            # token among its max_new_tokens; no input truncation, as in HF (the control truncates).
            results = self._runner.translate_batch(tokens, target_prefix=prefixes or None,
                                                   max_decoding_length=self.max_new_tokens,
                                                   min_decoding_length=self.min_new_tokens, max_input_length=0,
                                                   **batching)
        else:
            # include_prompt_in_result=False feeds the prompts in one pass and makes max_length
            # count new tokens only, like max_new_tokens; the stop token itself is not returned.
            results = self._runner.generate_batch(tokens, max_length=self.max_new_tokens,
                                                  min_length=self.min_new_tokens, include_prompt_in_result=False,
                                                  end_token=self.control.stop_ids, sampling_topk=1, **batching)
        outputs, offset = [], 0
        for texts, _, _ in jobs:
            outputs.append([self._clean(r.result()) for r in results[offset : offset + len(texts)]])
            offset += len(texts)
            if progress is not None and texts:
                progress(len(texts))
        return outputs

    def _clean(self, result) -> str:
        """The scored form of one CTranslate2 result, as the HF controls clean theirs."""
        if self.encoder_decoder:
            return normalize_whitespace(self._decode(result.hypotheses[0]))
        return first_line(self._decode(result.sequences[0]))

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
                compute_type: ComputeType | str = "default", max_batch_tokens: int | None = None,
                max_batch_sentences: int | None = None, cache_conversion: bool = True,
                probe: tuple[str, str, str] | None = None, min_new_tokens: int = 0) -> GenerationEngine:
    """The engine of ``kind`` for ``model``: ``"hf"``, ``"ctranslate2"`` (or a UsageError), or ``"auto"``.

    CTranslate2 is taken only once it has converted the model, loaded it on the model's device
    and translated ``probe`` there — ``(text, src_lang, tgt_lang)``, through the same language
    control as evaluation; by default :data:`PROBE_TEXT` in a direction the control knows (see
    :func:`probe_direction`). Under ``"auto"`` any failure on the way means Hugging Face, with the
    reason logged and kept in the engine's ``fallback_reason`` (one line); under
    ``"ctranslate2"`` it is a UsageError that names the cause and the fix.

    ``compute_type`` applies to CTranslate2 only ("default": float32 on the CPU, the model's half
    precision on a GPU). ``max_batch_tokens`` and ``max_batch_sentences`` as in
    :func:`batch_limits` (None: sized for the device; CTranslate2 batches by tokens alone, with
    :data:`DEFAULT_MAX_BATCH_TOKENS` unless given); ``cache_conversion`` as in :class:`CT2Engine`;
    ``min_new_tokens`` above 0 forces outputs of that length (benchmarks).
    """
    if kind not in ("auto", "ctranslate2", "hf"):
        raise UsageError(f"eval.engine: unknown engine {kind!r} (auto, ctranslate2 or hf)")
    hf = {"max_new_tokens": max_new_tokens, "max_batch_tokens": max_batch_tokens,
          "max_batch_sentences": max_batch_sentences, "min_new_tokens": min_new_tokens}
    if kind == "hf":
        return HFEngine(model, control, **hf)
    reason = ct2_unavailable_reason(model, control)
    if reason is None:
        try:
            return _probed_ct2_engine(model, control, max_new_tokens, compute_type,
                                      max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS, cache_conversion, probe,
                                      min_new_tokens)
        except EngineUnavailable as exc:
            if kind == "ctranslate2":
                fix = ", or install a CTranslate2 build for this CUDA" if exc.device == "cuda" else ""
                raise UsageError(f"eval.engine: CTranslate2 cannot translate on {exc.device} "
                                 f"({exc.step} failed: {exc.cause}); set eval.engine: hf{fix}") from exc
            reason = exc.reason
        except UsageError as exc:
            if kind == "ctranslate2":
                raise
            reason = _first_line(exc)
    elif kind == "ctranslate2":
        raise UsageError(f"eval.engine: ctranslate2 cannot run this model ({reason})")
    log.warning("eval.engine auto: using Hugging Face generate, not CTranslate2 (%s)", reason)
    if compute_type not in ("default", "float32"):
        log.warning("eval.compute_type %s applies to CTranslate2 only; Hugging Face runs the model as loaded",
                    compute_type)
    engine = HFEngine(model, control, **hf)
    engine.fallback_reason = reason
    return engine


def _probed_ct2_engine(model: torch.nn.Module, control: Control, max_new_tokens: int, compute_type: str,
                       max_batch_tokens: int, cache_conversion: bool, probe: tuple[str, str, str] | None,
                       min_new_tokens: int) -> CT2Engine:
    """A CTranslate2 engine that has translated ``probe``; an :class:`EngineUnavailable` (closed
    and cleaned up) if it could not."""
    text, src, tgt = probe or (PROBE_TEXT, *probe_direction(control))
    engine = CT2Engine(model, control, max_new_tokens, compute_type, max_batch_tokens, cache_conversion,
                       min_new_tokens)
    try:
        engine.probe(text, src, tgt)
    except BaseException:
        engine.close()
        raise
    return engine


def probe_direction(control: Control) -> tuple[str, str]:
    """A direction the probe can translate with ``control``: between the first two languages whose
    tokens it has looked up (the study's, once ``make_control`` has checked them), else English
    to German; an instruction names any language, so English to German there."""
    if isinstance(control, LanguageTokens):
        known = control.known_languages or [code for code in ("en", "de") if control.has(code)]
        if known:
            return known[0], known[min(1, len(known) - 1)]
    return "en", "de"


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
