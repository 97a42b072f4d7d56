"""Keep glibc from handing large receive buffers back to the kernel after every item.

A pipeline input allocates one buffer per large item. With glibc's defaults a buffer of 1 MiB or
more is mmap-ed and unmapped again each time (and the heap is trimmed), so every item pays page
faults for fresh memory: receiving over TCP ran at about half the raw socket rate because of it.
Raising the mmap and trim thresholds once per process (what MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ do from the environment) lets freed buffers be reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import structlog

log = structlog.get_logger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 * 1024 * 1024  # glibc's ceiling for this setting on 64-bit
TRIM_THRESHOLD = 256 * 1024 * 1024

_tuned = False


def tune_for_large_items() -> None:
    """Once per process; a no-op where libc is not glibc or the environment already decides."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if not ok:
        log.debug("mallopt refused the pipeline's allocator settings")
