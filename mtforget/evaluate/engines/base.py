"""The generation engine interface, and :func:`make_engine`, which picks an engine by name.

Evaluating a study translates every test sentence in every direction twice per trial (base and
fine-tuned), so decoding speed bounds how many directions and trials a study can afford. Every
engine runs the same greedy search from the same inputs (the model's language control builds them
and cleans the outputs), so engines differ only by floating-point detail:
:data:`ENGINE_CHRF_TOLERANCE` bounds by how much, and the tests hold every engine to it. The
reference engine is Hugging Face ``generate``; faster ones are tried first under ``"auto"``.

``make_engine("auto", ...)`` takes a faster engine only once it has set itself up on the model's
device, probe translation included, and falls back to the reference (logging why) when it cannot:
a library can import, see a GPU and convert the model, and still fail at the first translation (a
build linked against another CUDA's libraries). The engine's ``name`` goes into results and into
the base-evaluation cache key, so scores from different engines are never mixed up.

Engines decode all the directions of an evaluation together: rows of different directions share
batches, length-sorted over the whole evaluation, so a batch fills up however few sentences each
direction has.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import torch

from mtforget.errors import UsageError
from mtforget.evaluate.engines.registry import AUTO, ENGINES, describe_choices
from mtforget.evaluate.generate import Job, Row
from mtforget.models.control import Control

log = logging.getLogger("mtforget")

# Largest corpus-chrF difference (points, 0-100) allowed between two engines on the same model and
# sentences. Greedy search in float32 is the same algorithm in all of them, but the kernels sum
# in different orders, so a near-tie between two tokens can flip and change the rest of that
# sentence (on the demo's base: no sentence differs in float32, and int8 weights move mean chrF by
# under 0.1). A full point stays below the forgetting deltas a study reports, and far below what
# a real decoding bug (wrong language prefix, lost end token, misordered outputs) costs.
ENGINE_CHRF_TOLERANCE = 1.0

# Padded input tokens per batch where nothing else sizes batches (on the CPU, and for engines
# that batch by tokens alone). Large enough that a batch of short sentences fills the cores, small
# enough that a batch of long prompts of a 7B model still fits a GPU's activations.
DEFAULT_MAX_BATCH_TOKENS = 4096
# What a probe translates when the caller names no sentence of its own.
PROBE_TEXT = "The weather is fine today."


class GenerationEngine(ABC):
    """Greedy translation of sentence lists with one model; ``close`` frees what it holds.

    ``name`` identifies the engine and its numeric settings (it is stored with results and keys
    cached evaluations); ``kind`` is the registry name it is made under
    (:mod:`mtforget.evaluate.engines.registry`).
    """

    name: str
    kind: str
    control: Control
    fallback_reason: str | None = None  # why "auto" did not pick a faster engine, if it did not

    def translate(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        """Translations of ``texts`` from ``src_lang`` to ``tgt_lang``, in the input order."""
        return self.translate_many([(texts, src_lang, tgt_lang)])[0]

    @abstractmethod
    def translate_many(self, jobs: list[Job], progress: Callable[[int], None] | None = None) -> list[list[str]]:
        """Translations of several ``(texts, src_lang, tgt_lang)`` jobs, each in its input order,
        rows of different jobs decoded together; ``progress`` is called with the number of
        sentences finished as they finish."""

    def plan_batches(self, rows: list[Row]) -> list[list[int]]:
        """The batches (indices into ``rows``) in which this engine decodes ``rows``: length-sorted
        and within its batch limits. With :meth:`translate_batch` it lets several processes share
        an evaluation batch by batch (:mod:`mtforget.evaluate.sharding`); an engine without it is
        run whole by every process."""
        raise NotImplementedError

    def translate_batch(self, rows: list[Row]) -> list[str]:
        """The translations of ``rows`` decoded as one batch, in their order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine's resources (a converted model, threads); the HF model stays the caller's."""

    def __enter__(self) -> GenerationEngine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class EngineOptions:
    """The settings :func:`make_engine` hands every engine (see there); each uses those that apply."""

    max_new_tokens: int = 64
    compute_type: str = "default"
    max_batch_tokens: int | None = None
    max_batch_sentences: int | None = None
    cache_conversion: bool = True
    probe: tuple[str, str, str] | None = None
    min_new_tokens: int = 0


class EngineUnavailable(Exception):
    """An engine cannot run a model here.

    ``reason`` is one line for ``"auto"``'s log and the trial's ``engine_fallback_reason``;
    ``error`` is what stops the run when the user asked for this engine by name.
    """

    def __init__(self, reason: str, error: UsageError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


@dataclass(frozen=True)
class EngineSpec:
    """What an engine module registers as ``ENGINE``.

    ``open`` builds the engine for a model, or raises :class:`EngineUnavailable`; it checks all it
    can before returning (an engine that ``"auto"`` may pick must have translated once). ``auto``
    is the engine's part in the ``"auto"`` policy: ``"first"`` engines are tried in registry
    order, the ``"fallback"`` engine (exactly one) runs when none of them can, and None leaves the
    engine to be chosen by name only. ``compute_types``: whether it follows ``eval.compute_type``.
    """

    label: str  # the engine in log lines
    open: Callable[[torch.nn.Module, Control, EngineOptions], GenerationEngine]
    auto: Literal["first", "fallback"] | None = None
    compute_types: bool = False


def engine_spec(name: str) -> EngineSpec:
    """The registered engine ``name``."""
    return importlib.import_module(ENGINES[name]).ENGINE


def make_engine(kind: str, model: torch.nn.Module, control: Control, max_new_tokens: int = 64,
                compute_type: str = "default", max_batch_tokens: int | None = None,
                max_batch_sentences: int | None = None, cache_conversion: bool = True,
                probe: tuple[str, str, str] | None = None, min_new_tokens: int = 0) -> GenerationEngine:
    """The engine of ``kind`` for ``model``: a registered name, or ``"auto"``.

    A named engine that cannot run the model here is a UsageError that names the cause and the
    fix. ``"auto"`` tries the faster engines first; each is taken only once it has set itself up
    on the model's device and translated ``probe`` there — ``(text, src_lang, tgt_lang)``, through
    the same language control as evaluation; by default :data:`PROBE_TEXT` in a direction the
    control knows (see :func:`probe_direction`). When none can, the fallback engine runs, with the
    reason logged and kept in its ``fallback_reason`` (one line).

    ``compute_type`` applies to engines that convert the weights ("default": float32 on the CPU,
    the model's half precision on a GPU). ``max_batch_tokens`` and ``max_batch_sentences`` cap
    batches (None: sized for the device); ``cache_conversion`` keeps a converted model in the
    cache for later engines on the same weights (a base model) rather than in a scratch directory
    (a fine-tuned model, evaluated once); ``min_new_tokens`` above 0 forces outputs of that length
    (benchmarks).
    """
    if kind != AUTO and kind not in ENGINES:
        raise UsageError(f"eval.engine: unknown engine {kind!r} ({describe_choices()})")
    options = EngineOptions(max_new_tokens, compute_type, max_batch_tokens, max_batch_sentences, cache_conversion,
                            probe, min_new_tokens)
    if kind == AUTO:
        return _auto_engine(model, control, options)
    try:
        return engine_spec(kind).open(model, control, options)
    except EngineUnavailable as exc:
        raise exc.error from exc.__cause__


def _auto_engine(model: torch.nn.Module, control: Control, options: EngineOptions) -> GenerationEngine:
    """The first of the faster engines that can run ``model``, else the fallback engine with the
    reasons why none could."""
    specs = [engine_spec(name) for name in ENGINES]
    tried, reasons = [], []
    for spec in specs:
        if spec.auto != "first":
            continue
        try:
            return spec.open(model, control, options)
        except EngineUnavailable as exc:
            tried.append(spec)
            reasons.append(exc.reason)
    (fallback,) = [spec for spec in specs if spec.auto == "fallback"]
    engine = fallback.open(model, control, options)
    if tried:
        reason = "; ".join(reasons)
        log.warning("eval.engine auto: using %s, not %s (%s)", fallback.label,
                    " or ".join(spec.label for spec in tried), reason)
        converting = [spec.label for spec in specs if spec.compute_types]
        if options.compute_type not in ("default", "float32") and not fallback.compute_types:
            log.warning("eval.compute_type %s applies to %s only; %s runs the model as loaded",
                        options.compute_type, " and ".join(converting), fallback.label)
        engine.fallback_reason = reason
    return engine


def probe_sentence(control: Control, probe: tuple[str, str, str] | None) -> tuple[str, str, str]:
    """What an engine translates to prove it works: ``probe`` when given, else :data:`PROBE_TEXT`
    in :func:`probe_direction`."""
    return probe or (PROBE_TEXT, *probe_direction(control))


def probe_direction(control: Control) -> tuple[str, str]:
    """A direction the probe can translate with ``control``: between the first two languages it
    has checked (the study's, once ``make_control`` has checked them), else English to German
    where it can name them; an instruction names any language, so English to German there."""
    known = control.known_languages or [code for code in ("en", "de") if control.has(code)]
    if known:
        return known[0], known[min(1, len(known) - 1)]
    return "en", "de"


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
