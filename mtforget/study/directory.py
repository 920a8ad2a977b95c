"""A study directory belongs to mtforget and to one ``run`` at a time.

A directory is a study directory when it holds the marker file that mtforget writes into every
directory it creates for a study (not when it merely holds files of the names a study directory
has, which a user may have too). ``run`` refuses a non-empty folder without that marker, so it
never overwrites or deletes a user's files, and takes an OS lock (``fcntl.flock``) on the
directory's lock file before it writes anything: a second ``run`` on the same directory stops at
once, naming the process that holds it. The kernel drops the lock when its process ends, however
it ends, so a killed run leaves no stale lock behind.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import mtforget
from mtforget.atomic import write_json_atomic
from mtforget.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no OS lock to take
    fcntl = None

MARKER = ".mtforget-study"
LOCK = ".mtforget.lock"


class StudyDirRefused(UsageError):
    """The study directory cannot be used by this run (not one of mtforget's, or in use): nothing
    was written to it."""


class StudyLock:
    """The lock a ``run`` holds on its study directory; :meth:`release` (or the end of the
    process) drops it."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def release(self) -> None:
        """Drop the lock."""
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> StudyLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_study_dir(path: Path) -> bool:
    """Whether ``path`` is a directory that mtforget made for a study (it has the marker), or one
    that an earlier version made (its ``results.sqlite`` is mtforget's store)."""
    return (path / MARKER).is_file() or _earlier_study_dir(path)


def claim_study_dir(out: Path) -> StudyLock:
    """Make ``out`` this run's study directory: refuse a folder that is not a study directory and
    not empty, create it otherwise, lock it and mark it; the lock to hold while the run writes.

    Raises :class:`StudyDirRefused` (exit 2) without writing anything when ``out`` is a file, a
    user's non-empty folder, or a study directory another run holds.
    """
    if out.exists() and not out.is_dir():
        raise StudyDirRefused(f"--out {out}: is a file, not a study directory; give --out a new or empty folder")
    if out.is_dir() and not is_study_dir(out) and any(out.iterdir()):
        raise StudyDirRefused(f"--out {out}: the folder is not empty and is not an mtforget study directory (it has no "
                              f"{MARKER}); mtforget writes only into new, empty or its own folders: give --out "
                              "a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StudyDirRefused(f"--out {out}: cannot write the study directory there ({exc.strerror or exc})") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StudyDirRefused(f"--out {out}: another mtforget run (pid {holder}) is writing this study directory; "
                                  "wait for it to end, or give another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    if not (out / MARKER).is_file():
        write_json_atomic(out / MARKER, {"mtforget": mtforget.__version__, "created": time.time(),
                                         "about": "this folder is an mtforget study directory"})
    return StudyLock(fd)


def _earlier_study_dir(path: Path) -> bool:
    """Whether ``path/results.sqlite`` is a store of mtforget (it records the version that wrote
    it): a study directory written before the marker existed."""
    store = path / "results.sqlite"
    if not store.is_file():
        return False
    try:
        db = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'mtforget'").fetchone()
        finally:
            db.close()
        return row is not None and isinstance(json.loads(row[0]), str)
    except (sqlite3.Error, ValueError):
        return False
