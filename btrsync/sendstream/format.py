"""The btrfs send-stream format (versions 1-3): numbers, names, limits, and the parser's error type.

Shared by the pure-Python parser (``_pyparser``), the C parser (``native/sendstream.c``, which
repeats these tables and is checked against them by the tests) and the tests' stream builder.
Source of truth: btrfs-progs ``kernel-shared/send.h`` and ``common/send-stream.c``.

Layout::

    stream  = "btrfs-stream\\0" | u32 version | command* (the last one END)
    command = u32 len | u16 cmd | u32 crc | len bytes of attributes
    attr    = u16 type | u16 len | len bytes          (all little-endian)

``crc`` is CRC32C (Castagnoli, reflected, initial value 0, no final inversion: the kernel's
``crc32c(0, ...)``) over the 10-byte header with the crc field zeroed, then the attributes. From
version 2 on the DATA attribute has no length field: it runs to the end of its command.
"""

from __future__ import annotations

from typing import Any, NamedTuple

MAGIC = b"btrfs-stream\0"
STREAM_HEADER_SIZE = len(MAGIC) + 4  # 17
CMD_HEADER_SIZE = 10
MIN_VERSION, MAX_VERSION = 1, 3

# A version 1 command (header included) fits the kernel's 64 KiB send buffer. From version 2 on
# the kernel's buffer is ALIGN(16 KiB + BTRFS_MAX_COMPRESSED, PAGE_SIZE) (144 KiB with 4 KiB
# pages) and btrfs-progs assumes no limit; we accept commands of up to 16 MiB + the header.
MAX_CMD_V1 = 64 * 1024
MAX_BODY_V2 = 16 * 1024 * 1024


def max_body(version: int) -> int:
    """The largest command length field (attribute bytes) a stream of ``version`` may carry."""
    return MAX_CMD_V1 - CMD_HEADER_SIZE if version == 1 else MAX_BODY_V2


# --- commands: number -> (name, first version) ---------------------------------------------------

CMD_SUBVOL, CMD_SNAPSHOT, CMD_END, CMD_WRITE, CMD_ENCODED_WRITE = 1, 2, 21, 15, 25

COMMANDS: dict[int, tuple[str, int]] = {
    1: ("subvol", 1), 2: ("snapshot", 1), 3: ("mkfile", 1), 4: ("mkdir", 1), 5: ("mknod", 1),
    6: ("mkfifo", 1), 7: ("mksock", 1), 8: ("symlink", 1), 9: ("rename", 1), 10: ("link", 1),
    11: ("unlink", 1), 12: ("rmdir", 1), 13: ("set_xattr", 1), 14: ("remove_xattr", 1),
    15: ("write", 1), 16: ("clone", 1), 17: ("truncate", 1), 18: ("chmod", 1), 19: ("chown", 1),
    20: ("utimes", 1), 21: ("end", 1), 22: ("update_extent", 1),
    23: ("fallocate", 2), 24: ("fileattr", 2), 25: ("encoded_write", 2),
    26: ("enable_verity", 3),
}
MAX_CMD = 26
CMD_NUMBERS = {name: num for num, (name, _) in COMMANDS.items()}

# --- attributes: number -> (name, kind, first version) -------------------------------------------
# kinds: u8/u32/u64 (that many bits, exact length), uuid (16 bytes), timespec (u64 sec + u32 nsec),
# string (a path or name, decoded UTF-8 with surrogateescape), binary (bytes), data (file data:
# reported as data_offset/data_len into the stream, never copied).

A_PATH, A_DATA = 15, 19

ATTRIBUTES: dict[int, tuple[str, str, int]] = {
    1: ("uuid", "uuid", 1), 2: ("ctransid", "u64", 1), 3: ("ino", "u64", 1),
    4: ("size", "u64", 1), 5: ("mode", "u64", 1), 6: ("uid", "u64", 1), 7: ("gid", "u64", 1),
    8: ("rdev", "u64", 1), 9: ("ctime", "timespec", 1), 10: ("mtime", "timespec", 1),
    11: ("atime", "timespec", 1), 12: ("otime", "timespec", 1),
    13: ("xattr_name", "string", 1), 14: ("xattr_data", "binary", 1),
    15: ("path", "string", 1), 16: ("path_to", "string", 1), 17: ("path_link", "string", 1),
    18: ("file_offset", "u64", 1), 19: ("data", "data", 1),
    20: ("clone_uuid", "uuid", 1), 21: ("clone_ctransid", "u64", 1),
    22: ("clone_path", "string", 1), 23: ("clone_offset", "u64", 1), 24: ("clone_len", "u64", 1),
    25: ("fallocate_mode", "u32", 2), 26: ("fileattr", "u64", 2),
    27: ("unencoded_file_len", "u64", 2), 28: ("unencoded_len", "u64", 2),
    29: ("unencoded_offset", "u64", 2), 30: ("compression", "u32", 2),
    31: ("encryption", "u32", 2),
    32: ("verity_algorithm", "u8", 3), 33: ("verity_block_size", "u32", 3),
    34: ("verity_salt_data", "binary", 3), 35: ("verity_sig_data", "binary", 3),
}
MAX_ATTR = 35
ATTR_NUMBERS = {name: num for num, (name, _, _) in ATTRIBUTES.items()}
FIXED_SIZE = {"u8": 1, "u32": 4, "u64": 8, "uuid": 16, "timespec": 12}

# What btrfs receive (send-stream.c, read_and_process_cmd) insists on, in the order it asks.
# ENCODED_WRITE's compression and encryption default to 0 (none) when absent.
REQUIRED: dict[int, tuple[int, ...]] = {
    1: (15, 1, 2),
    2: (15, 1, 2, 20, 21),
    3: (15, 3), 4: (15, 3), 5: (15, 3, 5, 8), 6: (15, 3), 7: (15, 3), 8: (15, 3, 17),
    9: (15, 16), 10: (15, 17), 11: (15,), 12: (15,),
    13: (15, 13, 14), 14: (15, 13),
    15: (15, 18, 19),
    16: (15, 18, 24, 20, 21, 22, 23),
    17: (15, 4), 18: (15, 5), 19: (15, 6, 7), 20: (15, 11, 10, 9),
    21: (),
    22: (15, 18, 4),
    23: (15, 25, 18, 4), 24: (15, 26),
    25: (15, 18, 27, 28, 29, 19),
    26: (15, 32, 33, 34, 35),
}


class Event(NamedTuple):
    """One command, checked: ``cmd`` name, ``path`` (None for END), the other attributes by name,
    the command's byte ``offset`` in the stream and its ``size`` (header included).

    The file data of WRITE/ENCODED_WRITE is not copied: ``attrs["data_offset"]`` (absolute
    stream offset) and ``attrs["data_len"]`` locate it. The C parser yields a struct sequence
    with the same fields, equal to this tuple.
    """

    cmd: str
    path: str | None
    attrs: dict[str, Any]
    offset: int
    size: int


class StreamError(ValueError):
    """A send stream is malformed: ``reason`` says what is wrong, ``offset`` where (a byte offset
    from the start of the stream). ``events`` holds the commands that the failing ``feed`` call
    completed before the error."""

    def __init__(self, reason: str, offset: int, events: Any = ()) -> None:
        super().__init__(f"send stream: {reason} at byte {offset}")
        self.reason = reason
        self.offset = offset
        self.events = list(events)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.offset, self.events))
