"""Reading users' text files by one rule, whatever the format (JSON lines, TSV, FLORES, the
study file): UTF-8, a leading byte-order mark accepted and dropped, lines split on ``\\n`` alone
(as ``wc -l`` counts them; a ``\\r`` before it dropped), and every problem a :class:`UsageError`
naming the file and, where there is one, the line: a missing or unreadable file, a directory,
bytes that are not UTF-8, a NUL character.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from mtforget.errors import UsageError


def check_file(path: Path, what: str = "file") -> Path:
    """``path`` if it is a file; else a :class:`UsageError` saying it is a directory or missing."""
    if path.is_dir():
        raise UsageError(f"{path}: is a directory, not a {what}")
    if not path.is_file():
        raise UsageError(f"{path}: {what} not found")
    return path


def text_lines(path: Path, what: str = "file") -> Iterator[tuple[int, str]]:
    """Each line of ``path`` with its number (from 1), without its line break, read one at a time."""
    check_file(path, what)
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if lineno == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                yield lineno, decode_line(raw, path, lineno).removesuffix("\n").removesuffix("\r")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_text(path: Path, what: str = "file") -> str:
    """The whole text of ``path`` by the same rule (a leading BOM dropped)."""
    check_file(path, what)
    try:
        data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"{path}:{line}: not valid UTF-8") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise UsageError(f"{path}:{line}: contains a NUL character")
    return text


def decode_line(raw: bytes, path: Path, lineno: int) -> str:
    """One line's bytes as text; invalid UTF-8 or a NUL character is a :class:`UsageError`."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}:{lineno}: not valid UTF-8") from None
    if "\x00" in line:
        raise UsageError(f"{path}:{lineno}: contains a NUL character")
    return line
