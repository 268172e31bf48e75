"""glibc malloc settings for a process that runs model batches: keep the memory a batch frees.

A batch's large tensors (activations, a few MB each) are freed when it ends. With glibc's defaults the
free space at the top of a heap goes back to the kernel (it is "trimmed"), and the next batch faults
it in again, a zeroed page at a time: on the builtin image tower (emoji images, one torch thread, a
fresh process each) ~105 page faults and 0.13 ms of kernel time per image, 1.19-1.23x the CPU per image
of a process that keeps the memory (`bench/malloc_faults.py`, bench/RESULTS.md, issue 18). Raising
glibc's trim threshold alone made it worse (220-385 faults per image): glibc then stops raising its
mmap threshold, so each large tensor became an mmap of its own, unmapped when freed. Setting both keeps
that memory in the heap: under one fault per image after the first batch.

The cost: the process holds on to up to `TRIM_THRESHOLD` of freed memory (memory it had in use before).
Set VLMOPS_KEEP_FREED_MEMORY=0 to keep glibc's defaults. Other C libraries (musl, macOS) are left as
they are. jemalloc or tcmalloc (LD_PRELOAD), which PyTorch's tuning guide suggests, do the same job for
a whole deployment; this needs nothing installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from vlmops.errors import VlmopsError

ENV = "VLMOPS_KEEP_FREED_MEMORY"
M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit: larger blocks are mmap'd (and unmapped) anyway
TRIM_THRESHOLD = 256 << 20

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in this process for the next batch (once per process).
    True when set; False with another C library, or when VLMOPS_KEEP_FREED_MEMORY=0. Any value but 0 or 1
    is refused, naming the variable (a typo must not silently mean "on")."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1"):
        raise VlmopsError(f"{ENV}={value!r}: use 1 (keep freed memory, the default) or 0 (glibc's defaults)")
    if value == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting either one stops glibc from moving the other
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
