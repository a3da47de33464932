"""A file's data ranges from the data commands the file index keeps (no data read).

``st_blocks`` of a mounted file is what these ranges occupy, so ``du``, ``cp --sparse`` and
``rsync -S`` see a sparse file as sparse before a byte of it is fetched.  Writes, encoded
writes, clones and preallocations add ranges, punched holes and truncates remove them; a clone is
counted whole (its source's holes are not looked at).
"""

from __future__ import annotations

import errno
import os

from btrsync.fileindex.tree import Inode

BLOCK = 4096
FALLOC_FL_PUNCH_HOLE = 0x02


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _cut(ranges: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in _merged(ranges):
        if b <= lo or a >= hi:
            out.append((a, b))
            continue
        if a < lo:
            out.append((a, lo))
        if b > hi:
            out.append((hi, b))
    return out


def data_ranges(inode: Inode) -> list[tuple[int, int]]:
    """``[start, end)`` ranges holding data, merged, within the file's size (``inode.ops`` needed)."""
    ranges: list[tuple[int, int]] = []
    for op in inode.ops or ():
        kind = op[2]
        if kind == "w":
            ranges.append((op[7], op[7] + op[6]))
        elif kind == "e":
            ranges.append((op[7], op[7] + op[11]))
        elif kind == "c":
            ranges.append((op[7], op[7] + op[6]))
        elif kind == "a":
            mode, off, length = op[3:6]
            if mode & FALLOC_FL_PUNCH_HOLE:
                ranges = _cut(ranges, off, off + length)
            else:
                ranges.append((off, off + length))
        elif kind == "t":
            ranges = _cut(ranges, op[3], 1 << 63)
    return _cut(ranges, inode.size, 1 << 63) if inode.size >= 0 else _merged(ranges)


def allocated_blocks(inode: Inode) -> int:
    """512-byte blocks the file's data occupies, each range rounded out to whole 4 KiB blocks."""
    total = 0
    end = 0
    for lo, hi in data_ranges(inode):
        lo = max(lo - lo % BLOCK, end)
        hi = -(-hi // BLOCK) * BLOCK
        if hi > lo:
            total += hi - lo
            end = hi
    return total // 512


def block_ranges(inode: Inode) -> list[tuple[int, int]]:
    """``data_ranges`` rounded out to whole blocks (within the size), as a filesystem reports them."""
    out: list[tuple[int, int]] = []
    for lo, hi in data_ranges(inode):
        lo, hi = lo - lo % BLOCK, min(-(-hi // BLOCK) * BLOCK, inode.size)
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def seek(inode: Inode, offset: int, whence: int) -> int:
    """``lseek`` with ``SEEK_DATA`` or ``SEEK_HOLE`` from the index alone (files without clones:
    there the ranges are exact to the block)."""
    if offset < 0:
        raise OSError(errno.EINVAL, "negative offset")
    if offset >= inode.size:
        raise OSError(errno.ENXIO, "past the end")
    ranges = block_ranges(inode)
    if whence == os.SEEK_DATA:
        for lo, hi in ranges:
            if hi > offset:
                return max(lo, offset)
        raise OSError(errno.ENXIO, "no data after the offset")
    if whence == os.SEEK_HOLE:
        for lo, hi in ranges:
            if lo <= offset < hi:
                return hi
        return offset
    raise OSError(errno.EINVAL, "only SEEK_DATA and SEEK_HOLE")
