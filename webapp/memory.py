"""Keeping a long-running server's memory from creeping up.

A server computes in many threads; glibc's allocator gives each thread an arena of its own, and raises its
threshold for returning large blocks to the system as it sees them freed (up to 32 MB), so the memory of
finished requests stays with the process as free, fragmented heap, and two requests computing at once
each leave their peak there. Capping the arenas, fixing the threshold (blocks from MMAP_THRESHOLD up, a
tensor's activations, are mapped on their own and unmapped when freed), and trimming the heap after each
request (malloc_trim also returns free pages inside the heap) keep the resident set near what the live
models and requests use. Elsewhere than Linux with glibc nothing is done.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters (glibc malloc.h)
ARENAS = 2
MMAP_THRESHOLD = 256 * 1024  # bytes; setting it also turns off glibc's raising of it


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only: other C libraries have no such calls
    except (OSError, AttributeError):
        return None
    return libc


def limit_fragmentation() -> bool:
    """Cap glibc's arenas and fix its mmap threshold (call once, early). True when it could."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS)) & bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim() -> None:
    """Give the free heap memory back to the system (after a request)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["limit_fragmentation", "trim"]
