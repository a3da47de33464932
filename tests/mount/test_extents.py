"""A file's data ranges and allocation from its index records alone (``mount/extents.py``)."""

from __future__ import annotations

from btrsync.fileindex.tree import Inode
from btrsync.mount.extents import FALLOC_FL_PUNCH_HOLE, allocated_blocks, data_ranges


def _file(size: int, *ops: tuple) -> Inode:
    return Inode("f", 300, size=size, ops=list(ops))


def _w(off: int, length: int) -> tuple:  # (link, seq, "w", cmd offset, cmd size, data offset, data len, file off)
    return (0, 0, "w", 0, 0, 0, length, off)


def test_writes_merge_and_round_out_to_blocks() -> None:
    f = _file(10_000_000, _w(0, 4096), _w(4096, 100), _w(8_000_000, 5000))
    assert data_ranges(f) == [(0, 4196), (8_000_000, 8_005_000)]
    # 0..8192 (two blocks) and 7_999_488..8_007_680 (the second range rounded out: 2 blocks)
    assert allocated_blocks(f) == (8192 + 8192) // 512


def test_punched_holes_and_truncation_remove_data() -> None:
    f = _file(3 * 65536, _w(0, 3 * 65536), (0, 1, "a", FALLOC_FL_PUNCH_HOLE | 1, 65536, 65536))
    assert data_ranges(f) == [(0, 65536), (131072, 196608)]
    t = _file(4096, _w(0, 65536), (0, 1, "t", 4096))
    assert data_ranges(t) == [(0, 4096)] and allocated_blocks(t) == 8


def test_clones_preallocation_and_encoded_writes_count() -> None:
    encoded = (0, 2, "e", 0, 0, 0, 100, 65536, 3, 131072, 0, 131072, 0)  # 128 KiB unencoded at 64 KiB
    f = _file(1 << 20, (0, 0, "c", None, False, 0, 4096, 0), (0, 1, "a", 0, 4096, 4096), encoded)
    assert data_ranges(f) == [(0, 8192), (65536, 196608)]


def test_an_empty_or_unwritten_file_occupies_nothing() -> None:
    assert allocated_blocks(_file(0)) == 0
    assert allocated_blocks(_file(1 << 30)) == 0  # all hole
    assert data_ranges(_file(100, _w(0, 4096))) == [(0, 100)]  # a size cut by a later truncate
