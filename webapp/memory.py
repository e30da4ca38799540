"""Keeping a long-running server's memory from creeping up.

A server computes in many threads; glibc's allocator gives each thread an arena of its own, and raises its
threshold for returning large blocks to the system as it sees them freed, so the memory of finished
requests stays with the process as free, fragmented heap. Capping the arenas, and trimming the heap after
each request (malloc_trim also returns free pages inside the heap), keep the resident set at what the live
models and requests use. Elsewhere than Linux with glibc nothing is done.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_ARENA_MAX = -8  # a mallopt parameter (glibc malloc.h)
ARENAS = 2


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
    """Cap glibc's arenas (call once, early). True when it could."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS))


def trim() -> None:
    """Give the free heap memory back to the system (after a request)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["limit_fragmentation", "trim"]
