"""The reference engine: batched greedy Hugging Face ``generate`` through the language control.

On a GPU its batches are sized from the free memory and the model's shape (:func:`batch_limits`);
on the CPU by fixed budgets. Under ``eval.engine: auto`` it is the fallback when no faster engine
can run the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mtforget.evaluate.engines.base import DEFAULT_MAX_BATCH_TOKENS, EngineOptions, EngineSpec, GenerationEngine
from mtforget.evaluate.generate import Job, Row, length_batches, row_lengths, translate_jobs
from mtforget.models.control import Control

# Sentences per batch on the CPU, where the user sets no cap.
DEFAULT_MAX_BATCH_SENTENCES = 128
# Share of the GPU's free memory that batches may fill. The estimate of generation_footprint
# counts the cache and one layer's activations, not the allocator's fragmentation, attention
# kernels' workspaces or another process starting on the same GPU; half leaves room for all of those.
GPU_MEMORY_SHARE = 0.5

HF_ENGINE_NAME = "hf-generate"


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

    def translate_many(self, jobs: list[Job], progress: Callable[[int], None] | None = None) -> list[list[str]]:
        """All jobs decoded together, rows of different directions in the same batches."""
        # Sized per call: the free GPU memory changes between evaluations (training, other engines).
        limits = batch_limits(self.model, self.max_new_tokens, self.max_batch_tokens, self.max_batch_sentences)
        return translate_jobs(self.model, self.control, jobs, limits.max_sentences, self.max_new_tokens,
                              limits.max_tokens, limits.reserve_per_row, self.min_new_tokens, progress)

    def plan_batches(self, rows: list[Row]) -> list[list[int]]:
        """The batches of :meth:`translate_many` (limits sized now, for the free memory now)."""
        limits = batch_limits(self.model, self.max_new_tokens, self.max_batch_tokens, self.max_batch_sentences)
        return length_batches(row_lengths(self.control, rows), limits.max_sentences, limits.max_tokens,
                              limits.reserve_per_row)

    def translate_batch(self, rows: list[Row]) -> list[str]:
        return self.control.generate_rows(self.model, [r[0] for r in rows], [r[1] for r in rows],
                                          [r[2] for r in rows], self.max_new_tokens, self.min_new_tokens)


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

    On the CPU: :data:`~mtforget.evaluate.engines.base.DEFAULT_MAX_BATCH_TOKENS` padded input tokens and
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


def open_engine(model: torch.nn.Module, control: Control, options: EngineOptions) -> HFEngine:
    """The engine for ``model``; it runs every model that ``generate`` runs."""
    return HFEngine(model, control, options.max_new_tokens, options.max_batch_tokens, options.max_batch_sentences,
                    options.min_new_tokens)


ENGINE = EngineSpec(label="Hugging Face generate", open=open_engine, auto="fallback")
