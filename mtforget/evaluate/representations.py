"""Layer-wise cross-lingual representation analysis: how well translations find each other.

For every layer (the embeddings and each encoder layer of an encoder-decoder; each layer of a
decoder-only stack), test sentences are fed without any prompt and mean-pooled
(:mod:`mtforget.models.hidden`). For each language paired with the pivot, a sentence must retrieve
its own translation among the pair's pivot sentences by top-1 cosine similarity, and the other way
round; the accuracy is the average of both directions. High accuracy means the layer represents a
meaning the same way across the two languages; the alignment paper finds the peak in the middle
layers, and fine-tuning on a few languages can erode it for the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtforget.data.corpus import Segment
from mtforget.models.hidden import encode_sentences, is_encoder_decoder, layer_states, num_layers


def retrieval_accuracy(anchors: torch.Tensor, candidates: torch.Tensor) -> float:
    """Top-1 cosine retrieval accuracy of row ``i`` of each side finding row ``i`` of the other, averaged."""
    similarity = F.normalize(anchors.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T
    target = torch.arange(len(anchors), device=similarity.device)
    forward = (similarity.argmax(1) == target).float().mean()
    backward = (similarity.argmax(0) == target).float().mean()
    return float((forward + backward) / 2)


@torch.no_grad()
def sentence_states(model: torch.nn.Module, tokenizer, texts: list[str], layers: list[int],
                    batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled states ``[len(layers), len(texts), hidden]`` of ``texts`` (CPU, float32)."""
    if not texts:
        raise ValueError("no texts to encode")
    encoder_decoder = is_encoder_decoder(model)
    # Length-sorted batches pad little; the states are put back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(0)  # sized once the hidden width is known
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = encode_sentences(tokenizer, [texts[i] for i in idx], encoder_decoder)
            states = layer_states(model, batch, layers)
            stacked = torch.stack([states[layer] for layer in layers]).cpu()
            if not out.numel():
                out = torch.empty(len(layers), len(texts), stacked.shape[-1])
            out[:, idx] = stacked
    finally:
        model.train(was_training)
    return out


def layerwise_retrieval(model: torch.nn.Module, tokenizer, segments: tuple[Segment, ...] | list[Segment],
                        languages: list[str], pivot: str, max_sentences: int = 100,
                        batch_size: int = 64) -> dict:
    """Retrieval accuracy per layer for every language paired with ``pivot``.

    Each pair uses the first ``max_sentences`` segments that have both languages; a pair with fewer
    than two is left out (retrieval among one candidate says nothing). Returns
    ``{"layers": [0, 1, …], "mean": [accuracy per layer, averaged over pairs],
    "pairs": {"xa-en": [accuracy per layer], …}, "sentences": {"xa-en": n}, "pivot": "en"}``.
    """
    first = 0 if is_encoder_decoder(model) else 1  # a decoder-only model's embeddings are not compared
    layers = list(range(first, num_layers(model) + 1))
    chosen = {lang: [s for s in segments if lang in s.translation and pivot in s.translation][:max_sentences]
              for lang in languages if lang != pivot}
    chosen = {lang: segs for lang, segs in chosen.items() if len(segs) >= 2}
    # Every text is encoded once: the pivot side of a segment serves all languages that use it.
    pivot_ids = list(dict.fromkeys(s.id for segs in chosen.values() for s in segs))
    pivot_text = {s.id: s.translation[pivot] for segs in chosen.values() for s in segs}
    texts = [pivot_text[i] for i in pivot_ids]
    spans: dict[str, tuple[int, int]] = {}
    for lang, segs in chosen.items():
        spans[lang] = (len(texts), len(texts) + len(segs))
        texts += [s.translation[lang] for s in segs]
    result: dict = {"layers": layers, "mean": [], "pairs": {}, "sentences": {}, "pivot": pivot}
    if not chosen:
        return result
    states = sentence_states(model, tokenizer, texts, layers, batch_size)
    row = {seg_id: i for i, seg_id in enumerate(pivot_ids)}
    for lang, segs in chosen.items():
        start, end = spans[lang]
        pivot_rows = torch.tensor([row[s.id] for s in segs])
        key = f"{lang}-{pivot}"
        result["pairs"][key] = [round(retrieval_accuracy(states[i, start:end], states[i, pivot_rows]), 4)
                                for i in range(len(layers))]
        result["sentences"][key] = len(segs)
    result["mean"] = [round(sum(acc[i] for acc in result["pairs"].values()) / len(result["pairs"]), 4)
                      for i in range(len(layers))]
    return result
