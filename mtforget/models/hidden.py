"""Mean-pooled hidden states of plain sentences after chosen layers, for any translation model.

Both the alignment objective and the layer-wise representation analysis need "the state of a
sentence after layer k": the sentence is fed **without any prompt or language token**, the hidden
states after layer ``k`` are averaged over its tokens. Which stack holds the layers depends on the
architecture: the encoder of an encoder-decoder model, the decoder stack of a decoder-only one.

Layers are numbered from 1 (the output of the first layer); 0 is the input of the first layer (the
embeddings, positions included). States are read by forward hooks on the layer modules, and a
private exception stops the forward once the deepest requested layer has run. This works on any
architecture whose layers sit in a ``ModuleList`` (Bart/M2M/NLLB/Marian/mBART, T5, Llama/Qwen/
Mistral, GPT-2), through a peft LoRA wrapper too, without re-implementing a model's forward
(attention masks, rotary positions and caches differ per family and per transformers version),
and nothing above the last requested layer is computed, so no parameter above it is in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtforget.models.language import pad

# Attribute names of the layer list in the stacks of the families we know.
_LAYER_LISTS = ("layers", "block", "h")


class _StopForward(Exception):
    """Raised by the hook after the deepest wanted layer; never escapes :func:`layer_states`."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a peft wrapper (LoRA layers stay in place, so they still act)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_encoder_decoder(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) is an encoder-decoder."""
    return bool(getattr(unwrap(model).config, "is_encoder_decoder", False))


def layer_stack(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """The module to call with ``input_ids`` and the list of its layers.

    Encoder-decoder: the encoder. Decoder-only: the body without the LM head (``base_model``).
    """
    hf = unwrap(model)
    stack = hf.get_encoder() if is_encoder_decoder(hf) else hf.base_model
    for name in _LAYER_LISTS:
        layers = getattr(stack, name, None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return stack, layers
    raise ValueError(f"cannot find the layers of {type(hf).__name__} (looked for {', '.join(_LAYER_LISTS)})")


def num_layers(model: torch.nn.Module) -> int:
    """Number of layers of the stack that sentence states are read from."""
    return len(layer_stack(model)[1])


def resolve_layer(model: torch.nn.Module, layer: str | int) -> int:
    """``"middle"`` → ``n // 2`` (layer 16 of 32, as the alignment paper; at least 1); an int as given.

    Raises ValueError when the int is outside ``1..n``.
    """
    n = num_layers(model)
    if layer == "middle":
        return max(1, n // 2)
    if not isinstance(layer, int) or not 1 <= layer <= n:
        raise ValueError(f"layer {layer!r} is outside 1..{n} (the model has {n} layers in its "
                         f"{'encoder' if is_encoder_decoder(model) else 'decoder'})")
    return layer


@dataclass(frozen=True)
class SentenceBatch:
    """Plain sentences, right-padded; ``pool_mask`` marks the tokens that are averaged."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pool_mask: torch.Tensor


def encode_sentences(tokenizer, texts: list[str], encoder_decoder: bool, max_length: int = 128) -> SentenceBatch:
    """Tokenize ``texts`` with no prompt and no language token.

    Encoder-decoder: ``tokens </s>``, as the encoder sees a source minus its language token; every
    token is pooled. Decoder-only: the tokens, after the tokenizer's BOS when it adds one by default
    (models such as Llama run off-distribution without it), and the BOS is left out of the pool:
    its state is the same for every sentence and often has a huge norm.
    """
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    # A sentence that tokenizes to nothing would divide by zero when pooled; give it the eos token.
    eos = tokenizer.eos_token_id
    ids = [seq or [eos] for seq in ids]
    if encoder_decoder:
        seqs = [seq[: max_length - 1] + [eos] for seq in ids]
        prefix = 0
    else:
        bos = tokenizer.bos_token_id
        adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        prefix = 1 if adds_bos else 0
        seqs = [[bos] * prefix + seq[: max_length - prefix] for seq in ids]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    input_ids, attention_mask = pad(seqs, pad_id)
    pool_mask = attention_mask.clone()
    pool_mask[:, :prefix] = 0
    return SentenceBatch(input_ids, attention_mask, pool_mask)


def layer_states(model: torch.nn.Module, batch: SentenceBatch, layers: list[int]) -> dict[int, torch.Tensor]:
    """Mean-pooled states ``[batch, hidden]`` after each layer in ``layers`` (0 = the embeddings).

    Runs under whatever grad mode the caller chose: with gradients, the states keep their graph
    (only parameters at or below the deepest layer are in it). The pooled states are float32.
    """
    stack, modules = layer_stack(model)
    deepest = max(layers)
    if min(layers) < 0 or deepest > len(modules):
        raise ValueError(f"layers {layers} outside 0..{len(modules)}")
    captured: dict[int, torch.Tensor] = {}

    def keep(index: int, hidden: torch.Tensor) -> None:
        captured[index] = hidden
        if index == deepest:
            raise _StopForward

    handles = []
    if 0 in layers:  # the embeddings are what the first layer receives
        handles.append(modules[0].register_forward_pre_hook(
            lambda _m, args, kwargs: keep(0, args[0] if args else kwargs["hidden_states"]), with_kwargs=True))
    for index in {i for i in layers if i > 0}:
        handles.append(modules[index - 1].register_forward_hook(
            lambda _m, _args, output, index=index: keep(index, output[0] if isinstance(output, tuple) else output)))
    device = next(model.parameters()).device
    inputs = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
    if not is_encoder_decoder(model):
        inputs["use_cache"] = False  # no key/value cache to build for a pass that is cut short
    # LayerDrop (M2M-100 checkpoints default to 0.05) could skip the very layer to read: off for this pass.
    layerdrop = getattr(stack, "layerdrop", 0.0)
    if layerdrop:
        stack.layerdrop = 0.0
    try:
        stack(**inputs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
        if layerdrop:
            stack.layerdrop = layerdrop
    if deepest not in captured:
        raise RuntimeError(f"layer {deepest} of {type(stack).__name__} did not run")
    # Pooled in at least float32 (bf16 sums lose the small differences InfoNCE compares), and never
    # below the model's own precision.
    dtype = torch.promote_types(captured[deepest].dtype, torch.float32)
    mask = batch.pool_mask.to(device).unsqueeze(-1).to(dtype)
    return {i: (captured[i].to(dtype) * mask).sum(1) / mask.sum(1).clamp(min=1) for i in layers}
