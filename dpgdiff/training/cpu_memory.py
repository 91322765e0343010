"""CPU allocator settings for a training run: keep freed tensor memory in the process instead of the kernel.

A training step allocates and frees the same few-MB activations every step (a d=128 FFN hidden state
is 7,680 x 512 floats, 15.7 MB). glibc serves blocks above its mmap threshold with a fresh mmap, so
every page of such a tensor is faulted in and zeroed by the kernel on first write and unmapped on free,
step after step (with the CE's logits: 20k-40k page faults per step at d=64-128, bench/profile_step.py;
BENCHMARKS.md "Issue 9"). With the threshold fixed at glibc's maximum and a
high trim threshold, blocks up to 32 MB come from the heap and are reused. Larger ones (the CE's
logits) are reused by `dpgdiff.models.losses.LOGITS`. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import platform
from typing import Optional

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit on 64-bit (4 * 1024 * 1024 * sizeof(long))
TRIM_THRESHOLD = 1024 * 1024 * 1024  # hand freed heap memory back to the kernel only beyond 1 GiB


@functools.cache
def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """From now on, freed blocks up to 32 MB stay in the process heap for the next step; -> whether it took.

    Process-wide and kept: glibc has no way back to its default, self-adjusting threshold (any mallopt
    of these two parameters switches that off), and fixed defaults (128 KB) would be worse than this."""
    libc = _glibc()
    return bool(libc) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
        and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the kernel (the end of a run: RSS falls to what is in use)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
