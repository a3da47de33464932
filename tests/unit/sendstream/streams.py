"""Hand-made send streams for the parser tests: commands with any attributes (right or wrong),
correct or deliberately broken CRCs, and a sample stream with every command of a version whose
expected events are computed here, independently of the parsers."""

from __future__ import annotations

import random
import struct
import uuid
from typing import Any

from btrsync.sendstream import _pyparser
from btrsync.sendstream.format import (
    A_DATA,
    ATTR_NUMBERS,
    ATTRIBUTES,
    CMD_HEADER_SIZE,
    CMD_NUMBERS,
    MAGIC,
    Event,
)

try:
    from btrsync.sendstream import _native

    crc32c = _native.crc32c
except ImportError:  # the builder works without the C parser, only slower
    crc32c = _pyparser.crc32c


def header(version: int) -> bytes:
    return MAGIC + struct.pack("<I", version)


def _num(table: dict[str, int], key: int | str) -> int:
    return key if isinstance(key, int) else table[key]


def attr(key: int | str, value: bytes, *, version: int = 2, length: int | None = None) -> bytes:
    """One TLV; from v2 on, DATA has no length field (unless ``length`` forces one)."""
    t = _num(ATTR_NUMBERS, key)
    if t == A_DATA and version >= 2 and length is None:
        return struct.pack("<H", t) + value
    return struct.pack("<HH", t, len(value) if length is None else length) + value


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def timespec(sec: int, nsec: int) -> bytes:
    return struct.pack("<qI", sec, nsec)


def command(cmd: int | str, body: bytes, *, crc: int | None = None, length: int | None = None) -> bytes:
    """A command around ``body`` (encoded attributes); the CRC is right unless ``crc`` is given."""
    n = len(body) if length is None else length
    head = struct.pack("<IHI", n, _num(CMD_NUMBERS, cmd), 0)
    if crc is None:
        crc = crc32c(body, crc32c(head))
    return struct.pack("<IHI", n, _num(CMD_NUMBERS, cmd), crc) + body


def cmd_attrs(cmd: int | str, attrs: list[tuple[int | str, bytes]], version: int = 2, **kw: Any) -> bytes:
    return command(cmd, b"".join(attr(k, v, version=version) for k, v in attrs), **kw)


def end() -> bytes:
    return command("end", b"")


UUID_A = uuid.UUID("0fa0cfa8-1111-4222-8333-444455556666")
UUID_B = uuid.UUID("984e3f05-d895-3045-81b8-4855837af44e")


def subvol(path: str = "snap", version: int = 2) -> bytes:
    return cmd_attrs("subvol", [("path", path.encode()), ("uuid", UUID_A.bytes), ("ctransid", u64(7))],
                     version)


def minimal(version: int = 2, *middle: bytes) -> bytes:
    """header, SUBVOL, ``middle`` commands, END."""
    return header(version) + subvol(version=version) + b"".join(middle) + end()


class SampleStream:
    """Every command the version defines, with realistic attributes; ``events`` is what a parser
    must report (computed from what was encoded, not by a parser)."""

    def __init__(self, version: int, seed: int = 0, *, snapshot: bool = False,
                 write_size: int = 3000) -> None:
        self.version = version
        self.rng = random.Random(seed)
        self.parts = [header(version)]
        self.pos = len(self.parts[0])
        self.events: list[Event] = []
        self.payloads: list[tuple[int, bytes]] = []  # (data_offset, data) of every DATA attribute
        if snapshot:
            self.add("snapshot", "snap-2", uuid=UUID_B, ctransid=99, clone_uuid=UUID_A,
                     clone_ctransid=7)
        else:
            self.add("subvol", "snap", uuid=UUID_A, ctransid=7)
        self.body(write_size)
        self.add("end", None)

    def data(self) -> bytes:
        return b"".join(self.parts)

    def add(self, cmd: str, path: str | None, *, raw: dict[str, bytes] | None = None, **attrs: Any) -> None:
        """Encode ``cmd`` with ``path`` and ``attrs`` (python values; DATA as ``data=bytes``)."""
        tlvs = []
        expected: dict[str, Any] = {}
        if path is not None:
            tlvs.append(attr("path", path.encode("utf-8", "surrogateescape"), version=self.version))
        data_rel = None
        items = list(attrs.items())
        # DATA last (required from v2 on)
        items.sort(key=lambda kv: kv[0] == "data")
        for name, value in items:
            kind = ATTRIBUTES[ATTR_NUMBERS[name]][1]
            if kind == "data":
                head = attr("data", b"", version=self.version, length=None if self.version >= 2
                            else len(value))
                data_rel = CMD_HEADER_SIZE + sum(map(len, tlvs)) + len(head)
                tlvs.append(head + value)
                continue
            tlvs.append(attr(name, _encode(kind, value), version=self.version))
            expected[name] = str(value) if kind == "uuid" else value
        for name, value in (raw or {}).items():
            tlvs.append(attr(name, value, version=self.version))
            expected[name] = _pyparser._decode(ATTRIBUTES[ATTR_NUMBERS[name]][1], value)
        blob = command(cmd, b"".join(tlvs))
        if data_rel is not None:
            expected["data_offset"] = self.pos + data_rel
            expected["data_len"] = len(attrs["data"])
            self.payloads.append((self.pos + data_rel, attrs["data"]))
        ordered = dict(sorted(expected.items(),
                              key=lambda kv: ATTR_NUMBERS.get(kv[0], ATTR_NUMBERS["data"])))
        self.events.append(Event(cmd, path, ordered, self.pos, len(blob)))
        self.parts.append(blob)
        self.pos += len(blob)

    def body(self, write_size: int) -> None:
        rng = self.rng
        ino = iter(range(257, 10**6))
        self.add("chown", "", uid=0, gid=0)
        self.add("chmod", "", mode=0o755)
        self.add("mkdir", "o257-7-0", ino=next(ino))
        self.add("rename", "o257-7-0", path_to="dir with space")
        self.add("mkfile", "o258-7-0", ino=next(ino))
        self.add("rename", "o258-7-0", path_to="dir with space/ünïcødé\nname")
        f = "dir with space/ünïcødé\nname"
        self.add("set_xattr", f, xattr_name="user.bin", xattr_data=b"\x00\xff\nbinary")
        self.add("set_xattr", f, xattr_name="user.empty", xattr_data=b"")
        self.add("write", f, file_offset=0, data=rng.randbytes(write_size))
        self.add("write", f, file_offset=write_size, data=b"")
        self.add("clone", "clone-target", file_offset=4096, clone_len=8192, clone_uuid=UUID_B,
                 clone_ctransid=5, clone_path=f, clone_offset=0)
        self.add("truncate", f, size=123456)
        self.add("chown", f, uid=1000, gid=54321)
        self.add("chmod", f, mode=0o104755)
        self.add("utimes", f, atime=(1_600_000_000, 1), mtime=(-5, 999_999_999),
                 ctime=(2**40, 0))
        self.add("mknod", "o259-7-0", ino=next(ino), mode=0o20644, rdev=0x0801)
        self.add("mkfifo", "o260-7-0", ino=next(ino), mode=0o10640, rdev=0)
        self.add("mksock", "o261-7-0", ino=next(ino), mode=0o140755, rdev=0)
        self.add("symlink", "o262-7-0", ino=next(ino), path_link="../does/not/exist")
        self.add("link", "hard-b", path_link=f)
        self.add("remove_xattr", f, xattr_name="user.empty")
        self.add("update_extent", f, file_offset=0, size=4096)
        self.add("unlink", "hard-b")
        self.add("rmdir", "gone-dir")
        # surrogate-escaped (not UTF-8) name
        self.add("mkfile", "bad-\udcff-utf8", ino=next(ino))
        if self.version >= 2:
            self.add("fallocate", f, fallocate_mode=1, file_offset=0, size=1 << 20)
            self.add("fileattr", f, fileattr=0x10)
            self.add("encoded_write", f, file_offset=131072, unencoded_file_len=131072,
                     unencoded_len=131072, unencoded_offset=0, compression=2, data=rng.randbytes(4096))
            self.add("encoded_write", f, file_offset=262144, unencoded_file_len=4000,
                     unencoded_len=4096, unencoded_offset=0, compression=1, encryption=0,
                     data=rng.randbytes(1000))
        if self.version >= 3:
            self.add("enable_verity", f, verity_algorithm=1, verity_block_size=4096,
                     verity_salt_data=rng.randbytes(32), verity_sig_data=b"")
        self.add("utimes", "", atime=(0, 0), mtime=(1, 2), ctime=(3, 4))


def _encode(kind: str, value: Any) -> bytes:
    if kind == "u8":
        return struct.pack("<B", value)
    if kind == "u32":
        return struct.pack("<I", value)
    if kind == "u64":
        return struct.pack("<Q", value)
    if kind == "uuid":
        return value.bytes
    if kind == "timespec":
        return timespec(*value)
    if kind == "string":
        return value.encode("utf-8", "surrogateescape")
    return bytes(value)


# --- cutting streams into chunks and collecting what a parser makes of them --------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def every(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def outcome(parser_cls: Any, chunks: list[bytes]) -> tuple[Any, ...]:
    """(events as tuples, error (reason, offset) or None, bytes, commands) after feeding every
    chunk and finishing; the parser's events are collected across the error too."""
    from btrsync.sendstream.format import StreamError

    p = parser_cls()
    events: list[tuple[Any, ...]] = []
    error = None
    try:
        for chunk in chunks:
            events += [tuple(ev) for ev in p.feed(chunk)]
        p.finish()
    except StreamError as exc:
        events += [tuple(ev) for ev in exc.events]
        error = (exc.reason, exc.offset)
    return events, error, p.bytes, p.commands
