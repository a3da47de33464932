"""The ``--no-data`` walk both the estimate and the read-ahead use (sendstream/nodata.py)."""

from __future__ import annotations

import pytest

from btrsync.sendstream.format import StreamError
from btrsync.sendstream.nodata import NoDataWalk, Write
from tests.unit.sendstream.streams import attr, command, header, u64

MiB = 1 << 20


def _extent(path: bytes, offset: int, size: int) -> bytes:
    return command("update_extent", attr("path", path) + attr("file_offset", u64(offset)) + attr("size", u64(size)))


def _stream() -> bytes:
    return b"".join((
        header(1),
        command("subvol", attr("path", b"sub") + attr("uuid", bytes(16)) + attr("ctransid", u64(7))),
        _extent(b"dir/file", 0, 3 * MiB),
        command("clone", attr("path", b"dir/copy") + attr("file_offset", u64(0)) + attr("clone_len", u64(MiB))
                + attr("clone_uuid", bytes(16)) + attr("clone_ctransid", u64(7))
                + attr("clone_path", b"dir/file") + attr("clone_offset", u64(0))),
        _extent(b"dir/file", 3 * MiB, 2 * MiB),
        command("end", b""),
    ))


@pytest.mark.parametrize("piece", [1, 7, 16, 17, 64, 1 << 20])
def test_the_writes_in_order_and_the_measure_from_any_pieces(piece: int) -> None:
    stream = _stream()
    walk, writes = NoDataWalk(), []
    for i in range(0, len(stream), piece):
        writes += walk.feed(stream[i:i + piece])
    walk.finish()
    # each write with the file data before it, the clone counted there (as ChangeStats counts it)
    assert writes == [Write("dir/file", 0, 3 * MiB, 0), Write("dir/file", 3 * MiB, 2 * MiB, 4 * MiB)]
    assert walk.stream_bytes == len(stream) and walk.write_bytes == 5 * MiB
    assert walk.size == len(stream) + 5 * MiB  # the clone carries no data in the real stream
    assert walk.data_bytes == 6 * MiB


def test_a_damaged_or_foreign_stream_is_refused() -> None:
    with pytest.raises(StreamError):
        NoDataWalk().feed(b"not a btrfs stream at all")
    damaged = bytearray(_stream())
    damaged[-20] ^= 0xFF  # inside the last UPDATE_EXTENT: its CRC no longer matches
    with pytest.raises(StreamError):
        walk = NoDataWalk()
        walk.feed(bytes(damaged))
        walk.finish()
    with pytest.raises(StreamError):
        walk = NoDataWalk()
        walk.feed(_stream()[:-15])  # cut short
        walk.finish()
