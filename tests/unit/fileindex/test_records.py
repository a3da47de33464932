"""The file index's records: the batch encoder writes exactly what the one-record encoder writes."""

from __future__ import annotations

import json

import pytest

from btrsync.fileindex import records
from btrsync.sendstream.parser import StreamParser
from tests.unit.sendstream.streams import SampleStream


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("snapshot", [False, True])
def test_encode_many_equals_encode_for_every_command(version: int, snapshot: bool) -> None:
    sample = SampleStream(version, seed=version, snapshot=snapshot)
    events = StreamParser().feed(sample.data())
    assert len(events) == len(sample.events) > 10
    assert records.encode_many(events) == b"".join(records.encode(ev) for ev in events)
    for line, ev in zip(records.encode_many(events).splitlines(), events, strict=True):
        assert records.decode(line)[:4] == [ev.cmd, ev.offset, ev.size, ev.path]


class _Ev:
    def __init__(self, cmd: str, path: str | None, attrs: dict) -> None:
        self.cmd, self.path, self.attrs, self.offset, self.size = cmd, path, attrs, 17, 40


def test_encode_many_escapes_and_falls_back_like_encode() -> None:
    odd = [
        _Ev("rename", "a\udcff\"\\\n\x01é\U0001F600", {"path_to": "b\udc80"}),  # undecodable bytes, escapes
        _Ev("set_xattr", "f", {"xattr_name": "user.x", "xattr_data": b"\x00\xff"}),  # bytes: hex
        _Ev("utimes", "f", {"atime": (1, 2), "mtime": [3, 4]}),
        _Ev("chmod", None, {"mode": 0o644, "odd": object()}),  # not JSON: the slow path's str()
    ]
    got = records.encode_many(odd)
    assert got == b"".join(records.encode(ev) for ev in odd)
    assert json.loads(got.splitlines()[0])[3] == odd[0].path
    assert records.encode_many([]) == b""
