"""CTranslate2: greedy decoding in an inference engine built for translation (fused kernels, its
own length-sorted batching, optional int8 weights), from a converted copy of the model.

It reads the same inputs from the model's language control as Hugging Face ``generate`` and the
control cleans its outputs the same way, so the two differ only by floating-point detail. Under
``eval.engine: auto`` it is tried first, and taken only once it has converted the model, loaded it
on the model's device and translated a probe sentence there.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
import transformers

from mtforget.cache import cached_dir, fingerprint
from mtforget.errors import UsageError
from mtforget.evaluate.engines.base import (DEFAULT_MAX_BATCH_TOKENS, EngineOptions, EngineSpec, EngineUnavailable,
                                            GenerationEngine, error_line, probe_sentence)
from mtforget.evaluate.generate import Job, Row, length_batches, row_lengths
from mtforget.models.control import Control

log = logging.getLogger("mtforget")


class SetupFailed(RuntimeError):
    """CTranslate2 failed at one ``step`` of setting up (conversion, loading, a probe translation)."""

    def __init__(self, step: str, device: str, cause: BaseException) -> None:
        self.step = step
        self.device = device
        self.cause = f"{type(cause).__name__}: {error_line(cause)}"
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
                 compute_type: str = "default", max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 cache_conversion: bool = True, min_new_tokens: int = 0) -> None:
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
                raise SetupFailed("the conversion", self.device, exc) from exc
            self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
            runner = ct2.Translator if self.encoder_decoder else ct2.Generator
            # As many threads as torch has, so the two engines compare on equal hardware. Decoding
            # separate batches on separate threads (inter_threads) decodes faster, but leaves torch
            # training slower for the rest of the process, so the threads split each batch instead.
            try:
                self._runner = runner(str(self.model_dir), device=self.device,
                                      device_index=param.device.index or 0, compute_type=self.compute_type,
                                      intra_threads=torch.get_num_threads(), inter_threads=1)
            except Exception as exc:
                raise SetupFailed("loading the converted model", self.device, exc) from exc
        except BaseException:
            self._remove_scratch()
            raise

    def probe(self, text: str, src_lang: str, tgt_lang: str) -> None:
        """Translate ``text`` once, as evaluation will; a :class:`SetupFailed` if that fails.

        Importing, seeing a GPU and loading the model prove little: the kernels' libraries load
        at the first translation (a wheel built for CUDA 12 fails there under CUDA 13).
        """
        try:
            self.translate([text], src_lang, tgt_lang)
        except Exception as exc:
            raise SetupFailed("a probe translation", self.device, exc) from exc

    def translate_many(self, jobs: list[Job], progress: Callable[[int], None] | None = None) -> list[list[str]]:
        """All jobs in one call: CTranslate2 sorts their rows by length together and fills batches
        up to the token budget, rows of different directions side by side."""
        # batch_type "tokens": CTranslate2 sorts by length and fills batches up to the budget
        # itself, then returns results in the input order.
        results = self._run(jobs, {"max_batch_size": self.max_batch_tokens, "batch_type": "tokens"})
        if results is None:
            return [[] for _ in jobs]
        outputs, offset = [], 0
        for texts, _, _ in jobs:
            outputs.append([self._clean(r.result()) for r in results[offset : offset + len(texts)]])
            offset += len(texts)
            if progress is not None and texts:
                progress(len(texts))
        return outputs

    def plan_batches(self, rows: list[Row]) -> list[list[int]]:
        """Length-sorted batches within the token budget (rows × longest input), as CTranslate2
        forms them itself in :meth:`translate_many`."""
        return length_batches(row_lengths(self.control, rows), len(rows) or 1, self.max_batch_tokens)

    def translate_batch(self, rows: list[Row]) -> list[str]:
        results = self._run([([text], src, tgt) for text, src, tgt in rows],
                               {"max_batch_size": max(1, len(rows)), "batch_type": "examples"})
        return [self._clean(r.result()) for r in results] if results is not None else []

    def _run(self, jobs: list[Job], batching: dict) -> list | None:
        """CTranslate2's (asynchronous) results for every row of ``jobs``, batched as ``batching``
        says; None when there is no row."""
        if self._runner is None:
            raise RuntimeError(f"{self.name}: the engine is closed")
        tokens, prefixes = [], []
        for texts, src, tgt in jobs:
            if not texts:
                continue
            tokens += [self.tokenizer.convert_ids_to_tokens(ids) for ids in self.control.model_inputs(texts, src, tgt)]
            prefix = self.control.decoder_prefix(tgt) if self.encoder_decoder else []
            if prefix:
                # The decoder starts with the target language, as HF's per-row decoder prefix.
                prefixes += [self.tokenizer.convert_ids_to_tokens(prefix)] * len(texts)
        if not tokens:
            return None
        batching = {**batching, "beam_size": 1, "asynchronous": True}
        if self.encoder_decoder:
            # max_decoding_length counts the prefix token, as the HF control counts the language
            # token among its max_new_tokens; no input truncation, as in HF (the control truncates).
            return self._runner.translate_batch(tokens, target_prefix=prefixes or None,
                                                max_decoding_length=self.max_new_tokens,
                                                min_decoding_length=self.min_new_tokens, max_input_length=0,
                                                **batching)
        # include_prompt_in_result=False feeds the prompts in one pass and makes max_length
        # count new tokens only, like max_new_tokens; the stop token itself is not returned.
        return self._runner.generate_batch(tokens, max_length=self.max_new_tokens, min_length=self.min_new_tokens,
                                           include_prompt_in_result=False, end_token=self.control.stop_ids,
                                           sampling_topk=1, **batching)

    def _clean(self, result) -> str:
        """The scored form of one CTranslate2 result, cleaned by the control as HF outputs are."""
        tokens = result.hypotheses[0] if self.encoder_decoder else result.sequences[0]
        return self.control.clean(self._decode(tokens))

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


def open_engine(model: torch.nn.Module, control: Control, options: EngineOptions) -> CT2Engine:
    """A CTranslate2 engine for ``model`` that has translated the probe sentence on the model's
    device; an :class:`EngineUnavailable` with the reason when it cannot."""
    reason = ct2_unavailable_reason(model, control)
    if reason is not None:
        raise EngineUnavailable(reason, UsageError(f"eval.engine: ctranslate2 cannot run this model ({reason})"))
    try:
        return _probed_ct2_engine(model, control, options.max_new_tokens, options.compute_type,
                                  options.max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS, options.cache_conversion,
                                  options.probe, options.min_new_tokens)
    except SetupFailed as exc:
        fix = ", or install a CTranslate2 build for this CUDA" if exc.device == "cuda" else ""
        raise EngineUnavailable(exc.reason, UsageError(
            f"eval.engine: CTranslate2 cannot translate on {exc.device} ({exc.step} failed: {exc.cause}); "
            f"set eval.engine: hf{fix}")) from exc
    except UsageError as exc:
        raise EngineUnavailable(error_line(exc), exc) from None


def _probed_ct2_engine(model: torch.nn.Module, control: Control, max_new_tokens: int, compute_type: str,
                       max_batch_tokens: int, cache_conversion: bool, probe: tuple[str, str, str] | None,
                       min_new_tokens: int) -> CT2Engine:
    """A CTranslate2 engine that has translated ``probe``; a :class:`SetupFailed` (closed and
    cleaned up) if it could not."""
    text, src, tgt = probe_sentence(control, probe)
    engine = CT2Engine(model, control, max_new_tokens, compute_type, max_batch_tokens, cache_conversion,
                       min_new_tokens)
    try:
        engine.probe(text, src, tgt)
    except BaseException:
        engine.close()
        raise
    return engine


def ct2_unavailable_reason(model: torch.nn.Module, control: Control) -> str | None:
    """Why CTranslate2 cannot run ``model`` with ``control``, or None when it should be able to.

    A cheap check before any conversion: the package imports, has a converter for the model's
    config class, and (on a GPU) sees a CUDA device. A conversion can still fail later (an odd
    vocabulary, say); :func:`open_engine` handles that.
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
    if encoder_decoder != control.encoder_decoder:
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
        with tempfile.TemporaryDirectory(prefix="mtforget-ct2-") as tmp, _quiet_transformers(), \
                _saving_on_every_rank(model):
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
def _saving_on_every_rank(model: torch.nn.Module) -> Iterator[None]:
    """Let ``save_pretrained`` write on this process: once torch.distributed is initialised,
    transformers writes from rank 0 only, but each process of a launch converts the model it
    evaluates with into a scratch copy of its own."""
    model.should_save_on_this_rank = lambda is_main_process: is_main_process
    try:
        yield
    finally:
        del model.should_save_on_this_rank


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


ENGINE = EngineSpec(label="CTranslate2", open=open_engine, auto="first", compute_types=True)
