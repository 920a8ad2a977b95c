"""Handing memory that Python and PyTorch have freed back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


def release_memory(collect: bool = True) -> None:
    """Collect garbage (unless ``collect`` is false) and return the C heap's free pages to the
    operating system.

    glibc keeps freed memory mapped for reuse, so after pre-training a base (hundreds of MB of
    activations, batches and kernel caches) a process stays that large for the rest of its
    life; in a pool of workers that each run several trials, those peaks add up. ``malloc_trim``
    gives the free pages back (on glibc systems; elsewhere this only collects garbage). It takes
    well under a millisecond; a full collection takes about 0.2 s once transformers is imported,
    and tensors are freed by reference counting anyway, so frequent callers skip it.
    """
    if collect:
        gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # Looked up once per process: find_library runs ldconfig, a few milliseconds each time.
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None
