"""The send-stream parser on hand-made streams: what it reports, what it refuses, in any chunking.

Every test runs against the C parser and the pure-Python one (the ``Parser`` fixture).
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btrsync.sendstream import _pyparser, format, parser
from btrsync.sendstream.format import StreamError
from tests.unit.sendstream import streams as S
from tests.unit.sendstream.streams import attr, cmd_attrs, command, end, header, minimal, subvol, u64

CHUNKINGS = [None, 1, 7, 4 << 20]


def feed_all(p, data: bytes, size: int | None = None) -> list:
    chunks = [data] if size is None else S.every(data, size)
    events = []
    for chunk in chunks:
        events += p.feed(chunk)
    return events


def expect_error(Parser, data: bytes, reason: str, offset: int, *, at_finish: bool = False,
                 size: int | None = None) -> StreamError:
    p = Parser()
    with pytest.raises(StreamError) as info:
        feed_all(p, data, size)
        if not at_finish:
            pytest.fail("feed did not raise")
        p.finish()
    assert info.value.reason.startswith(reason), info.value.reason
    assert info.value.offset == offset
    assert str(info.value) == f"send stream: {info.value.reason} at byte {offset}"
    return info.value


# --- good streams --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("size", CHUNKINGS)
def test_sample_stream_reports_every_command(Parser, version, size) -> None:
    sample = S.SampleStream(version, seed=version)
    data = sample.data()
    p = Parser()
    assert p.version == 0 and p.commands == 0 and p.bytes == 0 and not p.ended
    events = feed_all(p, data, size)
    p.finish()
    assert [tuple(e) for e in events] == [tuple(e) for e in sample.events]
    assert p.version == version and p.commands == len(sample.events) and p.bytes == len(data)
    assert p.ended
    names = {e.cmd for e in events}
    expected = {name for num, (name, v) in format.COMMANDS.items() if v <= version}
    assert names == expected - {"snapshot"}  # every command of the version was exercised


def test_event_fields(Parser) -> None:
    sample = S.SampleStream(2, snapshot=True)
    events = feed_all(Parser(), sample.data())
    snap = events[0]
    assert snap.cmd == "snapshot" and snap.path == "snap-2" and snap.offset == 17
    assert snap.attrs == {"uuid": str(S.UUID_B), "ctransid": 99, "clone_uuid": str(S.UUID_A),
                          "clone_ctransid": 7}
    assert snap.size == len(sample.parts[1])
    utimes = next(e for e in events if e.cmd == "utimes")
    assert utimes.attrs["mtime"] == (-5, 999_999_999) and utimes.attrs["ctime"] == (2**40, 0)
    odd = next(e for e in events if e.cmd == "mkfile" and "bad" in e.path)
    assert odd.path.encode("utf-8", "surrogateescape") == b"bad-\xff-utf8"
    assert events[-1].cmd == "end" and events[-1].path is None and events[-1].attrs == {}
    assert isinstance(snap, tuple) and tuple(snap) == (snap.cmd, snap.path, snap.attrs, snap.offset,
                                                       snap.size)


@pytest.mark.parametrize("version", [1, 2])
def test_data_is_located_not_copied(Parser, version) -> None:
    sample = S.SampleStream(version, write_size=40_000)
    data = sample.data()
    events = feed_all(Parser(), data, 4096)
    located = [(e.attrs["data_offset"], e.attrs["data_len"]) for e in events if "data_len" in e.attrs]
    assert located == [(off, len(payload)) for off, payload in sample.payloads]
    for off, payload in sample.payloads:
        assert data[off:off + len(payload)] == payload
    assert all("data" not in e.attrs for e in events)


def test_v1_data_has_a_length_and_v2_data_runs_to_the_end(Parser) -> None:
    payload = b"x" * 100
    v1 = cmd_attrs("write", [("path", b"f"), ("file_offset", u64(0)), ("data", payload)], version=1)
    v2 = cmd_attrs("write", [("path", b"f"), ("file_offset", u64(0)), ("data", payload)], version=2)
    assert len(v1) == len(v2) + 2
    for version, blob in ((1, v1), (2, v2)):
        (ev,) = [e for e in feed_all(Parser(), minimal(version, blob)) if e.cmd == "write"]
        assert ev.attrs["data_len"] == 100
    # in v1, a DATA length shorter than the rest leaves room for more attributes
    blob = command("write", attr("data", b"abc", version=1) + attr("path", b"f") + attr("file_offset", u64(5)))
    (ev,) = [e for e in feed_all(Parser(), minimal(1, blob)) if e.cmd == "write"]
    assert ev.path == "f" and ev.attrs["file_offset"] == 5 and ev.attrs["data_len"] == 3


def test_accepts_any_buffer(Parser) -> None:
    data = minimal(2)
    for buf in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
        p = Parser()
        assert [e.cmd for e in p.feed(buf)] == ["subvol", "end"]
        p.finish()
    p = Parser()
    assert p.feed(b"") == []
    p.feed(data)
    assert p.feed(b"") == []
    p.finish()
    p.finish()  # idempotent


def test_largest_commands_pass(Parser) -> None:
    # v1: 64 KiB including the header; v2: 16 MiB of attributes
    path = attr("path", b"f", version=1) + attr("file_offset", u64(0), version=1)
    v1_data = b"\x01" * (format.MAX_CMD_V1 - 10 - len(path) - 4 - 16)
    v1 = command("write", path + attr("data", v1_data, version=1)
                 + attr("otime", S.timespec(0, 0), version=1))
    assert len(v1) == format.MAX_CMD_V1
    feed_all(Parser(), minimal(1, v1))
    head = attr("path", b"f") + attr("file_offset", u64(0)) + struct.pack("<H", format.A_DATA)
    v2 = command("write", head + bytes(format.MAX_BODY_V2 - len(head)))
    assert len(v2) == format.MAX_BODY_V2 + 10
    p = Parser()
    (ev,) = [e for e in feed_all(p, minimal(2, v2), 1 << 20) if e.cmd == "write"]
    p.finish()
    assert ev.attrs["data_len"] == format.MAX_BODY_V2 - len(head)


# --- bad streams ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", CHUNKINGS)
def test_bad_crc(Parser, size) -> None:
    good = S.SampleStream(2).data()
    start = len(header(2)) + len(subvol())
    for pos, what in ((start + 6, "crc field"), (start + 12, "body"), (start + 4, "type")):
        bad = bytearray(good)
        bad[pos] ^= 0x40
        exc = expect_error(Parser, bytes(bad), "CRC32C mismatch", start, size=size)
        assert exc.reason.startswith("CRC32C mismatch (stored 0x"), what


def test_error_carries_the_events_before_it(Parser) -> None:
    data = bytearray(minimal(2, cmd_attrs("unlink", [("path", b"x")])))
    data[-3] ^= 1  # the END command's crc
    exc = expect_error(Parser, bytes(data), "CRC32C mismatch", len(data) - 10)
    assert [e.cmd for e in exc.events] == ["subvol", "unlink"]


@pytest.mark.slow
def test_every_truncation_is_detected_at_finish(Parser) -> None:
    data = S.SampleStream(2, write_size=100).data()
    reasons = set()
    # every cut in the header and the first commands, then every 5th byte
    for cut in [*range(300), *range(300, len(data), 5)]:
        p = Parser()
        p.feed(data[:cut])  # a cut stream is never an error before the end...
        with pytest.raises(StreamError) as info:
            p.finish()  # ...but it is at the end
        assert info.value.offset == cut
        reasons.add(info.value.reason.split(" (")[0])
    assert reasons == {"empty stream", "stream ends inside the stream header",
                       "stream ends inside a command header", "stream ends inside a command",
                       "stream ends without an end command"}


def test_missing_end(Parser) -> None:
    data = header(2) + subvol()
    expect_error(Parser, data, "stream ends without an end command", len(data), at_finish=True)


def test_data_after_end(Parser) -> None:
    data = minimal(2)
    for extra in (b"\0", end(), header(2)):
        expect_error(Parser, data + extra, "data after the end command", len(data))
    p = Parser()
    p.feed(data)
    with pytest.raises(StreamError, match="data after the end command"):
        p.feed(b"x")


def test_bad_magic_is_seen_at_the_first_wrong_byte(Parser) -> None:
    p = Parser()
    with pytest.raises(StreamError) as info:
        p.feed(b"btrfs-strX")
    assert info.value.reason == "not a btrfs send stream (bad magic)" and info.value.offset == 0
    expect_error(Parser, b"x", "not a btrfs send stream", 0)
    expect_error(Parser, b"btrfs-stream\x01" + b"\x02\0\0\0", "not a btrfs send stream", 0)


@pytest.mark.parametrize("version", [0, 4, 0xFFFFFFFF])
def test_unsupported_version(Parser, version) -> None:
    expect_error(Parser, format.MAGIC + struct.pack("<I", version), "unsupported send stream version",
                 13)


def test_unknown_command(Parser) -> None:
    off = len(header(2)) + len(subvol())
    for cmd, reason in ((0, "unknown command type 0"), (27, "unknown command type 27"),
                        (0xFFFF, "unknown command type 65535")):
        expect_error(Parser, minimal(2, command(cmd, attr("path", b"x"))), reason, off)
    expect_error(Parser, minimal(1, cmd_attrs("encoded_write", [("path", b"x")], version=1)),
                 "command encoded_write is not defined in version 1", len(header(1)) + len(subvol(version=1)))
    expect_error(Parser, minimal(2, cmd_attrs("enable_verity", [("path", b"x")])),
                 "command enable_verity is not defined in version 2", off)


def test_unknown_attribute(Parser) -> None:
    off = len(header(2)) + len(subvol()) + 10
    p_tlv = len(attr("path", b"x"))
    expect_error(Parser, minimal(2, command("unlink", attr("path", b"x") + attr(77, b"zz"))),
                 "unknown attribute type 77", off + p_tlv)
    expect_error(Parser, minimal(2, command("unlink", attr(0, b"") + attr("path", b"x"))),
                 "unknown attribute type 0", off)
    expect_error(Parser, minimal(1, command("unlink", attr("path", b"x") + attr("fileattr", u64(1)))),
                 "attribute fileattr is not defined in version 1", off + p_tlv)
    expect_error(Parser, minimal(2, command("unlink", attr("path", b"x") + attr(34, b""))),
                 "attribute verity_salt_data is not defined in version 2", off + p_tlv)


def test_bad_attributes(Parser) -> None:
    off = len(header(2)) + len(subvol()) + 10
    p = attr("path", b"x")
    cases = [
        (p + attr("path", b"y"), "duplicate attribute path", off + len(p)),
        (p + attr("ino", b"1234567"), "attribute ino has 7 bytes, expected 8", off + len(p)),
        (p + attr("uuid", b"\0" * 15), "attribute uuid has 15 bytes, expected 16", off + len(p)),
        (p + attr("mtime", b"\0" * 8), "attribute mtime has 8 bytes, expected 12", off + len(p)),
        (p + attr("compression", u64(1)), "attribute compression has 8 bytes, expected 4", off + len(p)),
        (p + struct.pack("<HH", 16, 10) + b"abc", "attribute path_to of 10 bytes overruns the command "
                                                  "(3 bytes left)", off + len(p)),
        (p + b"\x10", "attribute header cut by the end of the command", off + len(p)),
        (p + b"\x10\x00\x05", "attribute header cut by the end of the command", off + len(p)),
        (p + b"\x10\x00", "attribute header cut by the end of the command", off + len(p)),
    ]
    for body, reason, where in cases:
        for size in (None, 1, 3):
            expect_error(Parser, minimal(2, command("unlink", body)), reason, where, size=size)


def test_required_attributes(Parser) -> None:
    off = len(header(2)) + len(subvol())
    expect_error(Parser, minimal(2, cmd_attrs("write", [("path", b"f"), ("file_offset", u64(0))])),
                 "write command lacks the data attribute", off)
    expect_error(Parser, minimal(2, cmd_attrs("mkfile", [("path", b"f")])),
                 "mkfile command lacks the ino attribute", off)
    expect_error(Parser, minimal(2, command("rename", b"")), "rename command lacks the path attribute", off)
    # optional: ENCODED_WRITE's compression and encryption
    ok = cmd_attrs("encoded_write", [("path", b"f"), ("file_offset", u64(0)), ("unencoded_file_len", u64(1)),
                                     ("unencoded_len", u64(1)), ("unencoded_offset", u64(0)),
                                     ("data", b"z")])
    feed_all(Parser(), minimal(2, ok))
    expect_error(Parser, header(2) + cmd_attrs("subvol", [("path", b"s"), ("uuid", bytes(16))]) + end(),
                 "subvol command lacks the ctransid attribute", 17)


def test_first_command_must_make_the_subvolume(Parser) -> None:
    expect_error(Parser, header(2) + cmd_attrs("unlink", [("path", b"x")]) + end(),
                 "stream starts with unlink, not subvol or snapshot", 17)
    expect_error(Parser, header(2) + end(), "stream starts with end, not subvol or snapshot", 17)


def test_crc_is_checked_before_attributes(Parser) -> None:
    off = len(header(2)) + len(subvol())
    body = attr("path", b"x") + attr(77, b"")
    expect_error(Parser, minimal(2, command("unlink", body, crc=1)), "CRC32C mismatch", off)
    expect_error(Parser, minimal(2, command(99, body, crc=1)), "CRC32C mismatch", off)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_oversized_command_is_refused_from_its_header(Parser, version) -> None:
    limit = format.max_body(version)
    off = len(header(version)) + len(subvol(version=version))
    head = header(version) + subvol(version=version) + struct.pack("<IHI", limit + 1, 15, 0)
    for size in (None, 1):
        exc = expect_error(Parser, head, f"command length {limit + 1} exceeds the limit of {limit} bytes",
                           off, size=size)
        assert [e.cmd for e in exc.events] == (["subvol"] if size is None else [])
    expect_error(Parser, header(version) + subvol(version=version) + struct.pack("<IHI", 2**32 - 1, 15, 0),
                 "command length 4294967295 exceeds", off)


def test_failed_parser_stays_failed(Parser) -> None:
    p = Parser()
    with pytest.raises(StreamError) as first:
        p.feed(minimal(2, command("unlink", attr("path", b"x"), crc=5)))
    for call in (lambda: p.feed(minimal(2)), p.finish, lambda: p.feed(b"")):
        with pytest.raises(StreamError) as again:
            call()
        assert (again.value.reason, again.value.offset) == (first.value.reason, first.value.offset)
        assert again.value.events == []
    assert not p.ended


def test_stream_error_is_a_value_error_and_pickles() -> None:
    exc = StreamError("bad thing", 42, ["e"])
    assert isinstance(exc, ValueError)
    back = pickle.loads(pickle.dumps(exc))
    assert (back.reason, back.offset, back.events, str(back)) == ("bad thing", 42, ["e"], str(exc))


# --- properties over random streams --------------------------------------------------------------

cuts = st.lists(st.integers(0, 200_000), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.integers(0, 2**32), st.integers(0, 70_000), cuts)
def test_any_split_gives_the_same_events_in_both_implementations(version, seed, write_size, cut) -> None:
    sample = S.SampleStream(version, seed, write_size=min(write_size, 60_000 if version == 1 else 70_000))
    data = sample.data()
    expected = ([tuple(e) for e in sample.events], None, len(data), len(sample.events))
    chunks = S.split(data, cut)
    assert S.outcome(parser.PyStreamParser, chunks) == expected
    if parser.native_available:
        assert S.outcome(parser.NativeStreamParser, chunks) == expected


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3), st.binary(max_size=400), cuts, st.data())
def test_implementations_agree_on_damage(version, noise, cut, data) -> None:
    sample = S.SampleStream(version, 5, write_size=200).data()
    pos = data.draw(st.integers(0, len(sample)))
    damaged = sample[:pos] + noise + sample[pos + data.draw(st.integers(0, 50)):]
    chunks = S.split(damaged, cut)
    py = S.outcome(parser.PyStreamParser, chunks)
    assert py == S.outcome(parser.PyStreamParser, [damaged])  # chunking never changes the outcome
    if parser.native_available:
        assert S.outcome(parser.NativeStreamParser, chunks) == py


# --- CRC32C ---------------------------------------------------------------------------------------


def _crc_functions():
    funcs = [("python", _pyparser.crc32c)]
    if parser.native_available:
        from btrsync.sendstream import _native

        funcs.append(("slice-by-8", _native.crc32c_sw))
        if _native.crc32c_hardware_available:
            funcs.append(("sse4.2", _native.crc32c_hw))
    return funcs


@pytest.mark.parametrize("name,fn", _crc_functions())
def test_crc32c_check_value(name, fn) -> None:
    # the standard CRC-32C check value, with the usual inversions around the raw register
    assert fn(b"123456789", 0xFFFFFFFF) ^ 0xFFFFFFFF == 0xE3069283
    assert fn(b"") == 0 and fn(b"", 1234) == 1234
    assert fn(b"\0" * 32) == 0  # raw register from 0: zeros stay zero


@pytest.mark.parametrize("name,fn", _crc_functions())
@pytest.mark.slow
def test_crc32c_implementations_agree(name, fn) -> None:
    import random

    rng = random.Random(7)
    blob = rng.randbytes(3 * 8192 * 2 + 3000)
    reference = _crc_bytewise
    lengths = [0, 1, 7, 8, 9, 63, 64, 65, 255, 256, 767, 768, 769, 4095, 4096, 4097, 24575, 24576,
               24577, len(blob) - 9]
    for length in lengths:
        for offset in (0, 1, 3, 7, 8):
            piece = blob[offset:offset + length]
            seed = rng.getrandbits(32)
            assert fn(piece, seed) == reference(piece, seed), (name, length, offset)
    # incremental == one shot
    assert fn(blob[1000:], fn(blob[:1000])) == fn(blob)


def _crc_bytewise(data: bytes, crc: int = 0) -> int:
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc


def test_real_kernel_crc_convention() -> None:
    # the END command as the kernel writes it: len 0, cmd 21, crc over the header with crc 0
    blob = end()
    assert blob == bytes.fromhex("000000001500") + struct.pack("<I", _crc_bytewise(bytes.fromhex(
        "00000000150000000000")))


# --- the two implementations and their selection --------------------------------------------------


def test_native_tables_match_the_format_module(native) -> None:
    t = native.tables()
    assert t["commands"] == {n: tuple(v) for n, v in format.COMMANDS.items()}
    assert t["attributes"] == {n: tuple(v) for n, v in format.ATTRIBUTES.items()}
    assert t["required"] == format.REQUIRED
    assert t["max_cmd_v1"] == format.MAX_CMD_V1 and t["max_body_v2"] == format.MAX_BODY_V2
    assert native.StreamError is StreamError


def test_native_build_is_current(native) -> None:
    import hashlib
    from pathlib import Path

    source = Path(__file__).resolve().parents[3] / "native" / "sendstream.c"
    if not source.exists():
        pytest.skip("installed without the C source")
    built = native.SOURCE_SHA256
    assert built == hashlib.sha256(source.read_bytes()).hexdigest(), (
        "the C parser was built from an older native/sendstream.c: rebuild it with "
        "'.venv/bin/python -m pip install -e .' (or 'python setup.py build_ext --inplace')")


def test_native_parser_with_the_table_crc(native) -> None:
    data = S.SampleStream(2, write_size=100_000).data()
    before = native.crc32c_implementation()
    try:
        native.use_hardware_crc(False)
        assert native.crc32c_implementation() == "slice-by-8"
        assert len(parser.parse(data, 4096, parser=native.StreamParser())) > 10
        bad = bytearray(data)
        bad[5000] ^= 1
        with pytest.raises(StreamError, match="CRC32C mismatch"):
            parser.parse(bytes(bad), parser=native.StreamParser())
    finally:
        native.use_hardware_crc(before == "sse4.2")
    assert native.crc32c_implementation() == before


def test_selection_and_the_pure_switch() -> None:
    assert parser.implementation == ("native" if parser.native_available and not
                                     os.environ.get("BTRSYNC_PURE_PARSER") else "python")
    code = ("from btrsync.sendstream import parser as p; "
            "print(p.implementation, p.StreamParser is p.PyStreamParser, p.crc32c.__module__)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BTRSYNC_")}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "BTRSYNC_PURE_PARSER": "1"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["python", "True", "btrsync.sendstream._pyparser"]
    if parser.native_available:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        assert out[:2] == ["native", "False"]


def test_parse_helper(Parser) -> None:
    sample = S.SampleStream(3)
    events = parser.parse(sample.data(), 1000, parser=Parser())
    assert [tuple(e) for e in events] == [tuple(e) for e in sample.events]
    with pytest.raises(StreamError, match="without an end command"):
        parser.parse(sample.data()[:-10], parser=Parser())


def test_parsers_run_in_threads_side_by_side(Parser) -> None:
    data = S.SampleStream(2, write_size=70_000).data()
    results: list[int] = []

    def work() -> None:
        for _ in range(5):
            results.append(len(parser.parse(data, 50_000, parser=Parser())))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and len(set(results)) == 1


def test_python_parser_memory_stays_small_whatever_the_data() -> None:
    import tracemalloc

    head = attr("path", b"f") + attr("file_offset", u64(0)) + struct.pack("<H", format.A_DATA)
    big = command("write", head + bytes(format.MAX_BODY_V2 - len(head)))
    data = minimal(2, big)
    mv = memoryview(data)
    p = parser.PyStreamParser()
    p.feed(mv[:1 << 20])  # warm up (CRC masks)
    tracemalloc.start()
    try:
        for i in range(1 << 20, len(data), 1 << 20):
            p.feed(mv[i:i + (1 << 20)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    p.finish()
    # the chunk's data is checksummed in place: no copy of a chunk, let alone the command
    assert peak < 256 << 10, peak
