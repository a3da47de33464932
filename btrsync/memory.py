"""The ``btrsync`` process's allocator setting: large buffers go back to the system when freed.

glibc's malloc raises its mmap threshold each time an mmapped block is freed (up to 32 MiB), so
after the first S3 part of 16 MiB is freed, later parts come from the heap arenas of whichever
thread allocates them, and freed parts stay there: a push to S3 peaked at ~350 MB for ~260 MB in
use (benchmark 11).  A fixed threshold of 8 MiB (``mallopt(M_MMAP_THRESHOLD)``, which also turns
the dynamic raise off) makes every buffer of 8 MiB or more (S3 parts) a mapping of its own,
unmapped when freed, while the 4 MiB chunk buffers stay in the heap (mmapping those costs ~50 %
of push throughput, see benchmarks/README.md).  Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

from btrsync.fdio import libc

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # <malloc.h>
LARGE_BUFFER = 8 << 20


def release_large_buffers(threshold: int = LARGE_BUFFER) -> bool:
    """Set the fixed mmap threshold; True when glibc accepted it."""
    try:
        mallopt = libc().mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("mallopt(M_MMAP_THRESHOLD, %d) -> %s", threshold, ok)
    return ok
