"""Keep freed memory inside the process when training on the CPU.

glibc's malloc returns every block larger than its mmap threshold (at most 32 MB) to the
kernel when it is freed, and takes fresh pages for the next one: every large activation
and gradient of every step then costs page faults and the kernel's zeroing of its pages.
On the paper's NYUv2 model (batch 2, 2 CPU cores) that was about 10% of an equal-weighting
step and 20% of a Rep-MTL step, whose second-order pass allocates more. On a GPU the caching
allocator already reuses memory; ``reuse_freed_memory`` gives the CPU the same behaviour by
turning off mmap'd blocks and the trimming of the heap (``mallopt``), as setting
MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_ in the environment would. The process's peak
memory is unchanged; its resident memory no longer shrinks after the peak.

Process-wide and irreversible, so it is applied once, by the first CPU run that asks
(``engine.cpu_malloc = "reuse"``, the default); other C libraries are left alone.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int: trim only beyond 2 GiB of free top memory

_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse; returns whether it applies (glibc only)."""
    global _applied
    if _applied is None:
        _applied = _set_mallopt()
    return _applied


def _set_mallopt() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has no mallopt
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, _TRIM_NEVER))
