"""Keep freed arrays' memory in the process instead of returning it to the OS at once.

glibc's malloc serves every large allocation (≥ 128 KiB at first) with a fresh mmap and
unmaps it on free, so each inference pays a page fault per 4 KiB of every activation,
patch chunk and noise buffer it allocates: ~1.6k faults per call of the shipped model,
~9k for a ResNet-20 batch, about 10–15 % of the ideal-mode time on this VM. Raising the
mmap and trim thresholds lets those blocks be reused from the heap, as onnxruntime reuses
its arena. The price is that the process keeps its peak heap (up to the trim threshold)
after a run. Set XBAR_KEEP_HEAP=0 before the first bundle is loaded or Runtime built to
leave malloc alone.

Kept heaps are per malloc arena, and glibc gives threads arenas of their own: with layers
built on worker threads side by side (xbar.runtime.parallel.as_done), each thread's arena
kept its own peak, and a ResNet-50 chip held 1.1 GB instead of 0.8. One arena serves every
thread from the same freed blocks (0.7 GB); xbar's allocations are few and large (arrays),
so the arena's lock is not contended. The limit binds only threads that start after it
(an arena, once made, is handed to later threads), hence it is set when a bundle is loaded,
before the loader's own threads start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 30  # bytes; glibc may cap it (at 32 MiB on 64-bit), tried next
MMAP_THRESHOLD_CAP = 32 << 20
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before trimming


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Apply the thresholds once per process (glibc on Linux only); True if they took."""
    if os.environ.get("XBAR_KEEP_HEAP", "1").strip() == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        # glibc's soname on every Linux architecture; find_library would run ldconfig (ms).
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - an unusual layout
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
        except OSError:
            return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_CAP)
    return bool(ok and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and libc.mallopt(M_ARENA_MAX, 1))
