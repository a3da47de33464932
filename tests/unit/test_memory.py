"""btrsync/memory.py: the allocator setting the btrsync process starts with."""

from __future__ import annotations

import subprocess
import sys

from btrsync.memory import release_large_buffers

PROBE = """
import ctypes, sys
from btrsync.memory import release_large_buffers
if sys.argv[1] == 'set':
    assert release_large_buffers()
for _ in range(3):  # free big mmapped blocks first: glibc's dynamic threshold rises past them
    b = bytearray(20 << 20); del b
part = bytearray(16 << 20)  # an S3 part
addr = ctypes.addressof((ctypes.c_char * 1).from_buffer(part))
for line in open('/proc/self/maps'):
    span, rest = line.split(' ', 1)
    lo, hi = (int(x, 16) for x in span.split('-'))
    if lo <= addr < hi:
        # own: a mapping of about its size (the kernel may merge it with a small neighbour);
        # shared: a glibc arena's heap, 64 MiB
        print('heap' if '[heap]' in rest else 'own' if hi - lo < (32 << 20) else 'shared')
"""


def _where(mode: str) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_a_part_buffer_is_a_mapping_of_its_own() -> None:
    """With the setting, a 16 MiB buffer is its own mapping (unmapped when freed) even after glibc
    raised its threshold; without it, it comes from the heap (so the test can tell them apart)."""
    assert _where("set") == "own"
    assert _where("unset") == "heap"


def test_setting_is_accepted() -> None:
    assert release_large_buffers() is True
