"""The multi-parallel corpus and its JSON-lines reader.

One segment per line, in the Hugging Face translation convention, any number of languages per
line: ``{"id": "s17", "translation": {"en": "...", "de": "...", "ja": "..."}}``. A line may lack
some languages. The same reader serves the synthetic world and users' corpora. Language codes
are normalised through one registry (``deu_Latn`` and ``de`` are the same language).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from mtforget.cache import fingerprint
from mtforget.data.languages import normalize_code
from mtforget.data.textfile import check_file, text_lines
from mtforget.errors import UsageError

# BCP-47-like with "_" between subtags ("pt_BR", "zh_Hans"); "-" separates the two sides of a direction.
LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}(_[A-Za-z0-9]{2,8})*$")


@dataclass(frozen=True)
class Segment:
    """One meaning, realised in one or more languages."""

    id: str
    translation: dict[str, str]


@dataclass(frozen=True)
class Corpus:
    """A multi-parallel corpus: its segments and its languages in order of first appearance."""

    segments: tuple[Segment, ...]
    languages: tuple[str, ...]
    source: str

    def fingerprint(self) -> str:
        """A hash of the content (ids and texts), independent of where the corpus was read from."""
        return self._content_hash

    @cached_property
    def _content_hash(self) -> str:
        # Hashed once: a corpus is immutable, and a trial keys several caches by it.
        return fingerprint([[s.id, sorted(s.translation.items())] for s in self.segments])

    def without_long_segments(self, max_words: int) -> Corpus:
        """The corpus without segments that have a text over ``max_words`` words (or, for scripts
        written without spaces, over 8 × ``max_words`` characters)."""
        def short(seg: Segment) -> bool:
            return all(len(t.split()) <= max_words and len(t) <= 8 * max_words for t in seg.translation.values())

        kept = tuple(seg for seg in self.segments if short(seg))
        if not kept:
            raise UsageError(f"corpus.max_words: no segment of {self.source} has all texts within {max_words} words")
        return Corpus(kept, self.languages, self.source)

    def language_counts(self) -> dict[str, int]:
        """Number of segments that have each language."""
        counts = {lang: 0 for lang in self.languages}
        for seg in self.segments:
            for lang in seg.translation:
                counts[lang] += 1
        return counts


def corpus_from_records(records: list[dict], source: str) -> Corpus:
    """Build a corpus from already-parsed records, validating them like the file reader does."""
    return _build(enumerate(records, start=1), source)


def read_jsonl(path: str | Path) -> Corpus:
    """Read a JSON-lines corpus. Any malformed line is a :class:`UsageError` naming ``FILE:LINE``."""
    path = check_file(Path(path), "corpus file")
    return _build(numbered_records(path), str(path))


def numbered_records(path: Path) -> Iterator[tuple[int, dict]]:
    """The JSON object of each non-empty line with its line number; a malformed line is a
    :class:`UsageError` naming ``FILE:LINE``."""
    # One record at a time: holding every parsed line until the corpus is built leaves the
    # process larger for good (parsed JSON takes several times the file's size), in every worker
    # that reads it.
    for lineno, line in text_lines(path, "corpus file"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UsageError(f"{path}:{lineno}: expected a JSON object with a 'translation' field")
        yield lineno, record


def _build(numbered: Iterable[tuple[int, dict]], source: str) -> Corpus:
    segments: list[Segment] = []
    languages: dict[str, None] = {}  # an ordered set: file order decides the default directions
    first_line: dict[str, int] = {}
    for lineno, record in numbered:
        seg = parse_segment(record, f"{source}:{lineno}", default_id=f"line{lineno}")
        if seg.id in first_line:
            raise UsageError(
                f"{source}:{lineno}: duplicate segment id {seg.id!r} (first on line {first_line[seg.id]})"
            )
        first_line[seg.id] = lineno
        segments.append(seg)
        languages.update(dict.fromkeys(seg.translation))
    if not segments:
        raise UsageError(f"{source}: the corpus has no segments")
    return Corpus(tuple(segments), tuple(languages), source)


def parse_segment(record: dict, where: str, default_id: str) -> Segment:
    """One record of the translation convention as a segment (codes normalised, whitespace
    collapsed); a malformed record is a :class:`UsageError` naming ``where``."""
    translation = record.get("translation")
    if not isinstance(translation, dict) or not translation:
        raise UsageError(f"{where}: expected a non-empty 'translation' object mapping language codes to text")
    clean: dict[str, str] = {}
    for lang, text in translation.items():
        code = normalize_code(lang) if isinstance(lang, str) else ""
        if not LANGUAGE_CODE.match(code):
            raise UsageError(f"{where}: {lang!r} is not a language code (expected e.g. 'en', 'pt_BR', 'zh_Hans')")
        if not isinstance(text, str):
            raise UsageError(f"{where}: the {lang!r} text is not a string")
        if code in clean:
            raise UsageError(f"{where}: {lang!r} names the same language as another key ({code!r})")
        text = " ".join(text.split())
        if text:
            clean[code] = text
    if not clean:
        raise UsageError(f"{where}: every text of the segment is empty")
    seg_id = record.get("id", default_id)
    if not isinstance(seg_id, (str, int)):
        raise UsageError(f"{where}: 'id' must be a string or an integer")
    return Segment(str(seg_id), clean)
