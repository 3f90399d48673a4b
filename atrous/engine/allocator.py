"""Keep freed memory in the process, so that tensors allocated every step reuse it.

PyTorch's CPU tensors come from ``malloc``. glibc serves large blocks with ``mmap`` and unmaps
them when they are freed (and trims the heap's top), so every training step maps its
activations afresh and the kernel zero-fills each page on first touch. On a virtual machine a
page fault costs microseconds: measured on this project's 2-core machine, a WaveNet dilated
layer's forward pass (4 x 64 x 4096 samples, kernel 2) takes 13-16 ms with glibc's defaults and
4-5 ms when freed memory is kept, the same convolution. Settings made by the user win, and
nothing changes then: ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``GLIBC_TUNABLES``, or an allocator preloaded with ``LD_PRELOAD``
(jemalloc, tcmalloc).

The cost: the process keeps its peak memory mapped until it exits, as PyTorch's CUDA caching
allocator does for GPU memory. The ``atrous`` command calls :func:`reuse_freed_memory` before
any work (``ATROUS_MALLOC=system`` keeps glibc's defaults); a training script may call it too.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)  # blocks below this come from the heap, where freed memory is
# reused: 1 GiB, or 32 MiB where an older glibc refuses more (half its 64 MiB heap size)
_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes: the heap is never trimmed
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
OPT_OUT = "ATROUS_MALLOC"  # "system": leave glibc's settings alone


def reuse_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to keep freed memory for reuse (see the module docstring).

    Returns:
        Whether the settings were changed: False off Linux, without glibc, when the user chose
        allocator settings or another allocator, or with ``ATROUS_MALLOC=system``.
    """
    if os.environ.get(OPT_OUT, "").lower() == "system":
        return False
    if any(name in os.environ for name in _USER_SETTINGS) or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    # The mmap threshold first: setting it also stops glibc from moving it after each free.
    if not any(mallopt(_M_MMAP_THRESHOLD, threshold) for threshold in _MMAP_THRESHOLDS):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None on another platform or C library (whose mallopt differs or
    does nothing)."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
