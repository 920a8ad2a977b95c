"""Files replaced so that a kill at any instant leaves the old version or the new one, never
neither and never half of one.

Every file mtforget replaces in a study directory (a trial's ``result.json`` and outputs, the
study's exports and report, checkpoint pointers) goes through :func:`atomic_path`: the new
version is written to a hidden temporary sibling, flushed to disk, and swapped in with one
``os.replace``; the directory entry is flushed too, so that the swap itself survives a power cut.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's contents and metadata to disk (a no-op where the platform
    cannot open a directory, as on Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (and ``root`` itself) to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new version to; on a clean exit it is
    flushed and swapped in for ``path`` in one rename, on an error it is removed and ``path`` is
    left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically (see :func:`atomic_path`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as indented JSON atomically (see :func:`atomic_path`).

    Strict JSON: a float that is not a number (NaN, an infinity) is written as null, which every
    JSON reader takes (``NaN`` is not JSON: jq and a browser's JSON.parse reject it)."""
    text = json.dumps(strict_json(obj), ensure_ascii=False, indent=2, sort_keys=False, allow_nan=False)
    write_text_atomic(path, text + "\n")


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (tuples become lists, as in JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj
