"""Handing memory that Python and PyTorch have freed back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def release_memory() -> None:
    """Collect garbage and return the C heap's free pages to the operating system.

    glibc keeps freed memory mapped for reuse, so after pre-training a base (hundreds of MB of
    activations, batches and kernel caches) a process stays that large for the rest of its
    life; in a pool of workers that each run several trials, those peaks add up. ``malloc_trim``
    gives the free pages back (on glibc systems; elsewhere this only collects garbage).
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
