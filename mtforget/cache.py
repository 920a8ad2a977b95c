"""Content-addressed on-disk cache for corpora, tokenizers, base models, base evaluations and
language identifiers.

Every entry lives in ``<root>/<kind>/<key>`` where ``key`` is a hash of everything that determines
the entry, so deleting the cache only costs time and two studies that need the same base share it.
An entry carries the digest of each of its files (``.mtforget-digest.json``), checked whenever it
is used: a damaged entry (a file cut short by a power cut, changed or gone) is removed with a
warning and built again, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from mtforget.atomic import fsync_tree
from mtforget.errors import UsageError


def cache_root() -> Path:
    """``$MTFORGET_CACHE``, else ``$XDG_CACHE_HOME/mtforget``, else ``~/.cache/mtforget``."""
    if os.environ.get("MTFORGET_CACHE"):
        return Path(os.environ["MTFORGET_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mtforget"


def fingerprint(obj: Any, length: int = 16) -> str:
    """A stable hash of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """Return ``<root>/<kind>/<key>``, building it with ``build(tmp_dir)`` first if it is missing.

    The entry is built in a temporary sibling directory and renamed into place, so a crash while
    building never leaves a half-written entry that a later run would trust. Parallel trials take a
    file lock so one builds and the others wait; the processes of one ``accelerate launch`` build
    together instead (they train the entry jointly), and the first rename wins.
    """
    final = cache_root() / kind / key
    if final.is_dir() and _intact(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _build(final, key, build)
    with FileLock(str(final) + ".lock"):
        if final.is_dir() and _intact(final):  # built by another process while this one waited
            return final
        return _build(final, key, build)


def existing_entry(kind: str, key: str) -> Path | None:
    """``<root>/<kind>/<key>`` when it is there and intact, else None (a damaged one is removed)."""
    final = cache_root() / kind / key
    return final if final.is_dir() and _intact(final) else None


DIGEST_FILE = ".mtforget-digest.json"


def _digests(entry: Path) -> dict[str, str]:
    return {f.relative_to(entry).as_posix(): file_digest(f) for f in sorted(entry.rglob("*"))
            if f.is_file() and f.name != DIGEST_FILE}


def _intact(entry: Path) -> bool:
    """Whether ``entry`` holds the files its digest names, unchanged; a damaged entry is removed
    with a warning (it is this cache's own). An entry written before entries carried a digest gets
    one, unless a file of it is empty (what a power cut leaves)."""
    manifest = entry / DIGEST_FILE
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else None
        found = _digests(entry)
    except (OSError, ValueError, UsageError):
        expected, found = {}, None
    if expected is None and found is not None and all(f.stat().st_size for f in entry.rglob("*") if f.is_file()):
        _write_digests(entry, found)
        return True
    if found is not None and found == expected:
        return True
    sys.stderr.write(f"warning: cache entry {entry} is damaged (its files do not match their digest); "
                     "it is built again\n")
    shutil.rmtree(entry, ignore_errors=True)
    return False


def _write_digests(entry: Path, digests: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{DIGEST_FILE}.", dir=entry)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(digests, f, indent=0, sort_keys=True)
    os.replace(tmp, entry / DIGEST_FILE)


def _build(final: Path, key: str, build: Callable[[Path], None]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        build(tmp)
        _write_digests(tmp, _digests(tmp))
        fsync_tree(tmp)  # on disk before it is named: a power cut leaves no entry rather than an empty file
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same entry first; theirs is identical by construction.
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# Files in a checkpoint directory that nothing here reads (weights are loaded from safetensors
# only): hashing a multi-gigabyte pickle would cost time and decide nothing.
_UNREAD_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".md")


def content_fingerprint(path: str | Path) -> str | None:
    """A hash of the contents of a local file or directory, or None when ``path`` is not local.

    A directory hashes every file it holds (recursively, hidden ones and unread weight formats
    left out) by name and contents, so a checkpoint or corpus changed in place gets a new identity
    while a copy of it elsewhere keeps the old one. File digests are remembered in the cache by
    path, size and modification time, so a large checkpoint is read once, not on every run.
    """
    root = Path(path)
    if not root.exists():
        return None
    if root.is_file():
        files = [(root.name, root)]
    else:
        files = sorted((f.relative_to(root).as_posix(), f) for f in root.rglob("*")
                       if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts)
                       and not f.name.endswith(_UNREAD_SUFFIXES))
    return fingerprint([[name, file_digest(f)] for name, f in files])


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, remembered under its resolved path, size and mtime."""
    stat = path.stat()
    memo = cache_root() / "file_digests" / fingerprint([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    if memo.is_file():
        return memo.read_text(encoding="utf-8").strip()
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:  # a user's file (corpus, checkpoint) that cannot be read: theirs to fix
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    value = digest.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{memo.name}.", dir=memo.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value)
    os.replace(tmp, memo)
    return value
