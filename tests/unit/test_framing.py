"""Send-stream framing: complete streams pass in any split, cut streams never do."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from btrsync.errors import SendFailedError
from btrsync.sendstream.framing import CMD_END, MAGIC, StreamFraming


def _cmd(kind: int, body: bytes) -> bytes:
    return struct.pack("<IHI", len(body), kind, 0) + body


commands = st.lists(st.tuples(st.integers(1, 20), st.binary(max_size=40)), max_size=40)


def _stream(cmds: list[tuple[int, bytes]]) -> bytes:
    return MAGIC + struct.pack("<I", 2) + b"".join(_cmd(k, b) for k, b in cmds) + _cmd(CMD_END, b"")


def _feed(data: bytes, cuts: list[int]) -> StreamFraming:
    f = StreamFraming("test")
    points = sorted({c % (len(data) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        f.feed(data[a:b])
    return f


@given(commands, st.lists(st.integers(0, 10_000), max_size=20))
def test_complete_stream_passes_however_it_is_split(cmds, cuts) -> None:
    f = _feed(_stream(cmds), cuts)
    f.finish()
    assert f.commands == len(cmds) + 1 and f.version == 2


@given(commands, st.data())
def test_any_truncation_is_detected(cmds, data) -> None:
    stream = _stream(cmds)
    cut = data.draw(st.integers(0, len(stream) - 1))
    f = _feed(stream[:cut], data.draw(st.lists(st.integers(0, 10_000), max_size=5)))
    with pytest.raises(SendFailedError, match="empty|cut short"):
        f.finish()


def test_garbage_is_not_a_stream() -> None:
    with pytest.raises(SendFailedError, match="bad magic"):
        StreamFraming("t").feed(b"x" * 100)


def test_data_after_end_is_rejected() -> None:
    with pytest.raises(SendFailedError, match="after the end"):
        StreamFraming("t").feed(_stream([]) + _cmd(1, b""))
