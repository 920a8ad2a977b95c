"""Batched greedy translation through a model's language control (Hugging Face ``generate``)."""

from __future__ import annotations

from collections.abc import Callable

from mtforget.models.control import Control

Job = tuple[list[str], str, str]  # (texts, src_lang, tgt_lang)
Row = tuple[str, str, str]  # (text, src_lang, tgt_lang): one sentence to translate


def job_rows(jobs: list[Job]) -> list[Row]:
    """The rows of ``jobs``, job after job, each in its input order."""
    return [(text, src, tgt) for texts, src, tgt in jobs for text in texts]


def row_lengths(control: Control, rows: list[Row]) -> list[int]:
    """Each row's model input length in tokens (a run of rows in one direction encoded at once)."""
    lengths: list[int] = []
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and rows[end][1:] == rows[start][1:]:
            end += 1
        lengths += [len(ids) for ids in control.model_inputs([r[0] for r in rows[start:end]], *rows[start][1:])]
        start = end
    return lengths


def length_batches(lengths: list[int], max_sentences: int, max_tokens: int | None = None,
                   reserve_per_row: int = 0) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, shortest first.

    A batch holds at most ``max_sentences`` sequences and, when ``max_tokens`` is set, at most
    ``max_tokens`` padded positions: rows × (its longest sequence + ``reserve_per_row``). Sorting
    first keeps padding low, and the token budget keeps a batch of long sentences from needing far
    more memory than a batch of short ones; the reserve stands for what every row holds beyond its
    input while it decodes (the cache of its new tokens, its logits). A single sequence longer
    than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so lengths[i] is the longest of the batch once it is added.
        too_many = len(current) >= max_sentences
        too_long = (max_tokens is not None and current
                    and (len(current) + 1) * (lengths[i] + reserve_per_row) > max_tokens)
        if too_many or too_long:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def translate_jobs(
    model,
    control: Control,
    jobs: list[Job],
    batch_size: int = 128,
    max_new_tokens: int = 64,
    max_batch_tokens: int | None = None,
    reserve_per_row: int = 0,
    min_new_tokens: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """Translate several ``(texts, src_lang, tgt_lang)`` jobs greedily, decoding them together.

    The rows of every job are sorted by token length as one list and cut into batches by
    :func:`length_batches`, so rows of different directions share a batch (each carries its own
    languages, see the controls' ``generate_rows``) and a batch fills up however few sentences a
    direction has. Returns each job's translations in its input order; ``progress`` is called with
    the number of rows each batch finished. ``min_new_tokens`` above 0 makes every output that
    long (benchmarks use it to decode a fixed length); evaluation leaves it at 0.
    """
    texts = [text for job_texts, _, _ in jobs for text in job_texts]
    src_langs = [src for job_texts, src, _ in jobs for _ in job_texts]
    tgt_langs = [tgt for job_texts, _, tgt in jobs for _ in job_texts]
    lengths = [len(ids) for job_texts, src, tgt in jobs if job_texts
               for ids in control.model_inputs(job_texts, src, tgt)]
    outputs: list[str] = [""] * len(texts)
    for idx in length_batches(lengths, batch_size, max_batch_tokens, reserve_per_row):
        done = control.generate_rows(model, [texts[i] for i in idx], [src_langs[i] for i in idx],
                                     [tgt_langs[i] for i in idx], max_new_tokens, min_new_tokens)
        for i, text in zip(idx, done):
            outputs[i] = text
        if progress is not None:
            progress(len(idx))
    results, offset = [], 0
    for job_texts, _, _ in jobs:
        results.append(outputs[offset : offset + len(job_texts)])
        offset += len(job_texts)
    return results


def translate(
    model,
    control: Control,
    texts: list[str],
    src_lang: str,
    tgt_lang: str,
    batch_size: int = 128,
    max_new_tokens: int = 64,
    max_batch_tokens: int | None = None,
    reserve_per_row: int = 0,
    min_new_tokens: int = 0,
) -> list[str]:
    """Translate ``texts`` from ``src_lang`` to ``tgt_lang`` greedily, in the input order.

    ``control`` is the model's language control (:class:`~mtforget.models.control.Control`). One
    direction's sentences batched as :func:`translate_jobs` batches several: sorted by token
    length, at most ``batch_size`` sentences and ``max_batch_tokens`` padded positions a batch.
    ``batch_size=1`` gives the per-sentence loop that benchmarks compare against.
    """
    if not texts:
        return []
    return translate_jobs(model, control, [(texts, src_lang, tgt_lang)], batch_size, max_new_tokens,
                          max_batch_tokens, reserve_per_row, min_new_tokens)[0]
