"""Write send-stream commands: the few that btrsync adds to a stream it hands to ``btrfs receive``.

A command is ``u32 length | u16 type | u32 crc`` + its attributes (``u16 type | u16 length |
value``), all little-endian; the CRC32C covers the header with the crc field zeroed, then the
attributes (``format.py``). Only attributes with a length field are written here, so a command is
the same in every stream version.
"""

from __future__ import annotations

import struct

from btrsync.sendstream.format import ATTR_NUMBERS, CMD_END, CMD_HEADER_SIZE, CMD_NUMBERS
from btrsync.sendstream.parser import crc32c

Timespec = tuple[int, int]  # (seconds, nanoseconds), as the parser reports it

_HEADER = struct.Struct("<IHI")


def command(cmd: int, body: bytes) -> bytes:
    """The command ``cmd`` around ``body`` (its encoded attributes), with its CRC32C."""
    crc = crc32c(body, crc32c(_HEADER.pack(len(body), cmd, 0)))
    return _HEADER.pack(len(body), cmd, crc) + body


def attribute(name: str, value: bytes) -> bytes:
    return struct.pack("<HH", ATTR_NUMBERS[name], len(value)) + value


def timespec(ts: Timespec) -> bytes:
    sec, nsec = ts
    return struct.pack("<qI", int(sec), int(nsec))


def utimes(path: str, atime: Timespec, mtime: Timespec, ctime: Timespec) -> bytes:
    """UTIMES of ``path`` ('' is the subvolume's top directory), attributes in the kernel's order."""
    return command(CMD_NUMBERS["utimes"], b"".join((
        attribute("path", path.encode("utf-8", "surrogateescape")),
        attribute("atime", timespec(atime)), attribute("mtime", timespec(mtime)),
        attribute("ctime", timespec(ctime)))))


END = command(CMD_END, b"")
assert len(END) == CMD_HEADER_SIZE
