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
MMAP_THRESHOLD = 256 * 1024  # bytes (the app's --mmap-threshold); setting it turns off glibc's raising of it


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


def limit_fragmentation(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Cap glibc's arenas and fix its mmap threshold at `mmap_threshold` bytes (0: leave glibc's adaptive
    threshold; call once, early). True when it could.

    The fixed threshold trades speed for memory: every block from it up is mapped and its pages faulted in
    afresh (on the 2-core machine of the README, a tiny forward+backward at 224x224 takes about 1.7 times as
    long at 256 KiB as with glibc's threshold)."""
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_ARENA_MAX, ARENAS))
    return ok and (not mmap_threshold or bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))))


def trim() -> None:
    """Give the free heap memory back to the system (after a request)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["limit_fragmentation", "trim"]
