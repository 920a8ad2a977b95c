"""Readers for the corpus formats users have, all producing one multi-parallel :class:`Corpus`.

- ``jsonl``: the Hugging Face translation convention (ALMA, WMT exports; see ``corpus.py``).
- ``flores``: the FLORES-200 / FLORES+ directory layout: ``<dir>/<split>/<code>[.<split>]``, one
  sentence per line, line-aligned across languages (``eng_Latn.devtest``).
- ``tsv``: bitext, ``source<TAB>target`` per line, with the two languages named in the config.
- ``hf``: a dataset from the ``datasets`` library by name (or a local builder such as ``json``),
  rows with a ``translation`` column; the hub is only reached when the offline flags allow it.

Every reader normalises language codes through :func:`mtforget.data.languages.normalize_code`
and reports a malformed line as ``FILE:LINE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mtforget.data.corpus import Corpus, corpus_from_records, read_jsonl
from mtforget.data.textfile import check_file, text_lines
from mtforget.errors import UsageError

FLORES_FILE = re.compile(r"^([a-z]{3}_[A-Z][a-z]{3})(\.[a-z]+)?$")


def read_flores(directory: str | Path, splits: list[str] | None = None) -> Corpus:
    """Every language file of the given splits (default: all split folders) as one corpus.

    Segment ids are ``<split>-<line>``, so the same sentence in every language is one segment.
    """
    records: dict[str, dict] = {}
    for split_dir, files in flores_files(directory, splits):
        lengths = {}
        for path in files:
            code = FLORES_FILE.match(path.name).group(1)
            lines = [line for _, line in text_lines(path)]  # split on "\n" only, as wc -l counts
            lengths[path.name] = len(lines)
            for i, line in enumerate(lines):
                rec = records.setdefault(f"{split_dir.name}-{i}", {"id": f"{split_dir.name}-{i}", "translation": {}})
                rec["translation"][code] = line
        if len(set(lengths.values())) > 1:
            first, other = sorted(lengths.items(), key=lambda kv: kv[1])[::len(lengths) - 1]
            raise UsageError(f"{split_dir / other[0]}: {other[1]} lines, but {first[0]} has {first[1]} "
                             "(FLORES files must be line-aligned)")
    return corpus_from_records(list(records.values()), str(directory))


def flores_files(directory: str | Path, splits: list[str] | None = None) -> list[tuple[Path, list[Path]]]:
    """Each split folder of a FLORES directory (the given ones, default all) with its language
    files; a missing directory, split folder or language file is a :class:`UsageError`."""
    root = Path(directory)
    if root.is_file():
        raise UsageError(f"{root}: is a file, not a FLORES directory (<dir>/<split>/<code>.<split>)")
    if not root.is_dir():
        raise UsageError(f"{root}: FLORES directory not found")
    split_dirs = [root / s for s in splits] if splits else sorted(p for p in root.iterdir() if p.is_dir())
    found = []
    for split_dir in split_dirs:
        if not split_dir.is_dir():
            raise UsageError(f"{split_dir}: FLORES split folder not found")
        files = sorted(p for p in split_dir.iterdir() if p.is_file() and FLORES_FILE.match(p.name))
        if not files:
            raise UsageError(f"{split_dir}: no FLORES language files (like eng_Latn.{split_dir.name})")
        found.append((split_dir, files))
    return found


def read_tsv(path: str | Path, languages: list[str]) -> Corpus:
    """Bitext with one ``source<TAB>target`` pair per line, in ``languages[0]`` and ``languages[1]``."""
    path = check_file(Path(path), "corpus file")
    if not languages or len(languages) != 2:
        raise UsageError("corpus.tsv_languages: give the two languages of the columns, e.g. [en, de]")
    records = [{"id": f"line{lineno}", "translation": dict(zip(languages, fields))} for lineno, fields in tsv_rows(path)]
    return corpus_from_records(records, str(path))


def tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """The two columns of each non-empty line with its line number, one line at a time; a line
    without exactly two columns is a :class:`UsageError` naming ``FILE:LINE``."""
    for lineno, line in text_lines(path, "corpus file"):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise UsageError(f"{path}:{lineno}: expected 2 tab-separated columns, found {len(fields)}")
        yield lineno, fields


def read_hf_dataset(name: str, config: str | None = None, split: str = "train",
                    data_files: list[str] | None = None) -> Corpus:
    """Rows of a ``datasets`` dataset with a ``translation`` column (WMT, ALMA, OPUS style)."""
    try:
        import datasets
    except ImportError:
        raise UsageError("corpus.format: hf needs the datasets package (pip install 'mtforget[hub]')") from None
    try:
        data = datasets.load_dataset(name, config, split=split, data_files=data_files)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, bad split: all the user's to fix
        raise UsageError(f"corpus.path: cannot load dataset {name!r} ({str(exc).splitlines()[0]})") from None
    if "translation" not in data.column_names:
        raise UsageError(f"corpus.path: dataset {name!r} has no 'translation' column (it has {data.column_names})")
    ids = data["id"] if "id" in data.column_names else [f"row{i}" for i in range(len(data))]
    records = [{"id": str(i), "translation": t} for i, t in zip(ids, data["translation"])]
    return corpus_from_records(records, f"{name}:{split}")


def load_corpus(fmt: str, path: str, tsv_languages: list[str] | None = None, flores_splits: list[str] | None = None,
                hf_config: str | None = None, hf_split: str = "train") -> Corpus:
    """Read the corpus at ``path`` in format ``fmt`` (``jsonl``, ``flores``, ``tsv`` or ``hf``)."""
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "flores":
        return read_flores(path, flores_splits)
    if fmt == "tsv":
        return read_tsv(path, tsv_languages or [])
    if fmt == "hf":
        local = Path(path)
        if local.is_file():  # a local JSON file read through datasets' json builder
            return read_hf_dataset("json", None, hf_split, [str(local)])
        return read_hf_dataset(path, hf_config, hf_split)
    raise UsageError(f"corpus.format: unknown format {fmt!r}")
