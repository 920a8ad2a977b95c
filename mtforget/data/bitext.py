"""Fine-tuning bitext apart from the evaluation corpus (``finetune.data``).

A study of forgetting fine-tunes on English-centric bitext (ALMA's human-written pairs, or tens of
millions of web-mined ones) and evaluates on a separate multi-parallel benchmark (FLORES-200)
that covers the languages never fine-tuned on. The sources here are read as a stream, once: each
fine-tuning direction keeps a seeded reservoir of its share of pairs, so a source of 10⁸ lines is
subsampled without being held in memory, and the same sample comes out on every run and machine.

Pairs whose source or target repeats an evaluation or dev sentence of the benchmark (after
whitespace normalisation) are dropped and counted: a model fine-tuned on its test sentences
would score forgetting that did not happen.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mtforget.cache import cached_dir, content_fingerprint, fingerprint
from mtforget.data.corpus import Segment, numbered_records, parse_segment
from mtforget.data.languages import normalize_code
from mtforget.data.loaders import FLORES_FILE, flores_files, tsv_rows
from mtforget.data.splits import Example
from mtforget.data.textfile import text_lines
from mtforget.errors import UsageError

SAMPLE_FORMAT = 1  # what a cached sample holds; bump when that changes


@dataclass(frozen=True)
class BitextSource:
    """One source of fine-tuning pairs: the keys of ``corpus`` that say where and how to read."""

    path: str
    format: str = "jsonl"
    tsv_languages: tuple[str, ...] | None = None
    flores_splits: tuple[str, ...] | None = None
    hf_config: str | None = None
    hf_split: str = "train"

    def identity(self) -> dict:
        """What decides the pairs this source gives: its settings and, when local, its contents."""
        return {"path": content_fingerprint(self.path) or self.path, "format": self.format,
                "tsv_languages": self.tsv_languages, "flores_splits": self.flores_splits,
                "hf_config": self.hf_config, "hf_split": self.hf_split}


@dataclass
class BitextSample:
    """Fine-tuning and dev pairs drawn from the sources, and what was left out."""

    train: list[Example]
    dev: list[Example]
    overlap_dropped: int  # sentence pairs dropped because a side is an evaluation or dev sentence
    available: dict[str, int] = field(default_factory=dict)  # pairs per direction after that guard


def normalize_text(text: str) -> str:
    """Whitespace collapsed, as the corpus readers store texts (the contamination guard compares these)."""
    return " ".join(text.split())


def held_out_texts(segments: Iterable[Segment]) -> set[str]:
    """Every text, in every language, of the evaluation and dev segments."""
    return {normalize_text(text) for seg in segments for text in seg.translation.values()}


def sample_bitext(sources: list[BitextSource], directions: list[tuple[str, str]], size: int, dev_size: int,
                  seed: int, held_out: set[str]) -> BitextSample:
    """``size`` training and ``dev_size`` dev pairs spread evenly over ``directions``, in one pass.

    Each direction keeps a reservoir (Algorithm R) of its training share plus its dev share,
    seeded by ``seed`` and the direction, so adding a direction leaves the others' samples as
    they were. Too few pairs for ``size`` is a :class:`UsageError` naming the number available.
    """
    train_shares = _shares(size, len(directions))
    dev_shares = _shares(dev_size, len(directions))
    capacity = {d: train_shares[i] + dev_shares[i] for i, d in enumerate(directions)}
    reservoirs: dict[tuple[str, str], list[tuple[str, str, str]]] = {d: [] for d in directions}
    seen = dict.fromkeys(directions, 0)
    rngs = {d: random.Random(f"{seed}:{d[0]}-{d[1]}") for d in directions}
    dropped = 0
    for seg in _records(sources):
        repeated: set[frozenset[str]] = set()  # a pair serves both of its directions; count it once
        for d in directions:
            src, tgt = seg.translation.get(d[0]), seg.translation.get(d[1])
            if src is None or tgt is None:
                continue
            if src in held_out or tgt in held_out:
                repeated.add(frozenset(d))
                continue
            seen[d] += 1
            if len(reservoirs[d]) < capacity[d]:
                reservoirs[d].append((src, tgt, seg.id))
            else:
                j = rngs[d].randrange(seen[d])
                if j < capacity[d]:
                    reservoirs[d][j] = (src, tgt, seg.id)
        dropped += len(repeated)
    train: list[Example] = []
    dev: list[Example] = []
    for i, d in enumerate(directions):
        pool = [Example(d[0], d[1], src, tgt, seg_id) for src, tgt, seg_id in reservoirs[d]]
        rngs[d].shuffle(pool)
        dev += pool[: dev_shares[i]]
        train += pool[dev_shares[i]:]
    available = {f"{s}-{t}": seen[(s, t)] for s, t in directions}
    if len(train) < size:
        counts = ", ".join(f"{d}: {n}" for d, n in available.items())
        raise UsageError(f"finetune.size: {size} pairs asked for, but finetune.data gives only {len(train)} spread "
                         f"evenly over the fine-tuning directions after {dev_size} dev pairs ({counts} pairs in "
                         "all, evaluation and dev sentences left out); use a smaller finetune.size or more data")
    random.Random(seed).shuffle(train)
    return BitextSample(train, dev, dropped, available)


def cached_sample(sources: list[BitextSource], directions: list[tuple[str, str]], size: int, dev_size: int,
                  seed: int, held_out: set[str]) -> BitextSample:
    """:func:`sample_bitext`, cached under everything that decides it (source contents included)."""
    key = fingerprint({"sources": [s.identity() for s in sources], "directions": directions, "size": size,
                       "dev_size": dev_size, "seed": seed, "held_out": fingerprint(sorted(held_out)),
                       "format": SAMPLE_FORMAT})

    def build(out: Path) -> None:
        sample = sample_bitext(sources, directions, size, dev_size, seed, held_out)
        (out / "sample.json").write_text(json.dumps({
            "train": [list(e.__dict__.values()) for e in sample.train],
            "dev": [list(e.__dict__.values()) for e in sample.dev],
            "overlap_dropped": sample.overlap_dropped, "available": sample.available}, ensure_ascii=False))

    data = json.loads((cached_dir("finetune_samples", key, build) / "sample.json").read_text(encoding="utf-8"))
    return BitextSample([Example(*e) for e in data["train"]], [Example(*e) for e in data["dev"]],
                        data["overlap_dropped"], data["available"])


def _shares(total: int, parts: int) -> list[int]:
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


def _records(sources: list[BitextSource]) -> Iterator[Segment]:
    for source in sources:
        yield from _READERS.get(source.format, _unknown)(source)


def _unknown(source: BitextSource) -> Iterator[Segment]:
    raise UsageError(f"finetune.data: unknown format {source.format!r} for {source.path}")


def _local(source: BitextSource) -> Path:
    path = Path(source.path)
    if path.is_dir():
        raise UsageError(f"finetune.data: {path}: is a directory, not a file")
    if not path.exists():
        raise UsageError(f"finetune.data: {path}: file not found")
    return path


def _jsonl(source: BitextSource) -> Iterator[Segment]:
    path = _local(source)
    for lineno, record in numbered_records(path):
        yield parse_segment(record, f"{path}:{lineno}", default_id=f"line{lineno}")


def _tsv(source: BitextSource) -> Iterator[Segment]:
    path = _local(source)
    languages = [normalize_code(c) for c in source.tsv_languages or ()]
    if len(languages) != 2:
        raise UsageError(f"finetune.data: {path}: give tsv_languages, the languages of the two columns, e.g. [cs, en]")
    for lineno, fields in tsv_rows(path):
        texts = {lang: normalize_text(text) for lang, text in zip(languages, fields) if text.strip()}
        if len(texts) == 2:
            yield Segment(f"line{lineno}", texts)


def _flores(source: BitextSource) -> Iterator[Segment]:
    for split_dir, files in flores_files(source.path, list(source.flores_splits or ()) or None):
        codes = [normalize_code(FLORES_FILE.match(p.name).group(1)) for p in files]
        readers = [text_lines(p) for p in files]  # lines split on "\n" only, as wc -l counts
        try:
            for i, lines in enumerate(zip(*readers, strict=True)):
                texts = {c: normalize_text(t) for c, (_, t) in zip(codes, lines) if t.strip()}
                yield Segment(f"{split_dir.name}-{i}", texts)
        except ValueError:
            raise UsageError(f"{split_dir}: FLORES files must be line-aligned") from None
        finally:
            for reader in readers:
                reader.close()


def _hf(source: BitextSource) -> Iterator[Segment]:
    try:
        import datasets
    except ImportError:
        raise UsageError("finetune.data: format hf needs the datasets package (pip install 'mtforget[hub]')") from None
    local = Path(source.path)
    name, files = ("json", [str(local)]) if local.is_file() else (source.path, None)
    try:
        rows = datasets.load_dataset(name, source.hf_config, split=source.hf_split, data_files=files, streaming=True)
        for i, row in enumerate(rows):
            where = f"{source.path}:{source.hf_split}:{i}"
            yield parse_segment({"id": row.get("id", f"row{i}"), "translation": row.get("translation")}, where,
                                default_id=f"row{i}")
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, bad split: all the user's to fix
        raise UsageError(f"finetune.data: cannot read dataset {source.path!r} ({str(exc).splitlines()[0]})") from None


_READERS = {"jsonl": _jsonl, "tsv": _tsv, "flores": _flores, "hf": _hf}
