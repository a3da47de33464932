"""Pure-Python send-stream parser: the fallback of ``native/sendstream.c``, with the same interface.

The state machine is the C one, step for step, so that both give the same events and the same
errors (reason, offset) for any input split into any chunks; the tests hold them to that.
Use :mod:`btrsync.sendstream.parser`, which picks the C parser when it is built.

CRC32C without C: a CRC is linear over GF(2), so bit ``j`` of the CRC of a block is the parity
of (block AND mask_j) for 32 fixed masks. With Python's big integers that is 32 ANDs and 32
``bit_count`` calls per 4 KiB block, all in C, some five times faster than a table per byte.
"""

from __future__ import annotations

import struct
from typing import Any

from btrsync.sendstream.format import (
    A_DATA,
    A_PATH,
    ATTRIBUTES,
    CMD_END,
    CMD_HEADER_SIZE,
    CMD_SNAPSHOT,
    CMD_SUBVOL,
    COMMANDS,
    FIXED_SIZE,
    MAGIC,
    MAX_ATTR,
    MAX_CMD,
    MAX_VERSION,
    REQUIRED,
    STREAM_HEADER_SIZE,
    Event,
    StreamError,
    max_body,
)

# --- CRC32C (raw register update: initial value 0 and no final inversion, as in the kernel) -----

_POLY = 0x82F63B78


def _byte_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _byte_table()
_BIG_BLOCK = 4096
_BLOCKS = (4096, 512, 64)
_masks: dict[int, list[tuple[int, int]]] = {}


def _build_masks() -> dict[int, list[tuple[int, int]]]:
    """``(mask_j, 1 << j)`` per block size: bit ``k`` of a block (little-endian integer) flips CRC
    bit ``j`` iff bit ``k`` of mask_j is set. Column ``k`` is one bit run through the register
    ``8 * size - k`` times; smaller blocks use the tail of the masks of the big one."""
    nbits = 8 * _BIG_BLOCK
    columns = [0] * nbits
    v = 1
    for d in range(1, nbits + 1):
        v = (v >> 1) ^ _POLY if v & 1 else v >> 1
        columns[nbits - d] = v
    columns.reverse()  # most significant bit first, for int(..., 2)
    big = [int("".join(["1" if (c >> j) & 1 else "0" for c in columns]), 2) for j in range(32)]
    return {size: [(m >> (8 * (_BIG_BLOCK - size)), 1 << j) for j, m in enumerate(big)]
            for size in _BLOCKS}


def crc32c(data: Any, crc: int = 0) -> int:
    """The CRC32C register after ``data``, starting from ``crc`` (send streams start at 0)."""
    mv = data if type(data) is bytes else memoryview(data).cast("B")
    n = len(mv)
    if n < _BLOCKS[-1]:  # short: bytewise
        table = _TABLE
        for b in mv:
            crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc
    i = 0
    if n >= _BLOCKS[-1]:
        if not _masks:
            _masks.update(_build_masks())
        for size in _BLOCKS:
            pairs = _masks[size]
            while n - i >= size:
                # the register folds into the block's first four bytes (the CRC is linear)
                m = int.from_bytes(mv[i:i + size], "little") ^ crc
                crc = 0
                for mask, bit in pairs:
                    if (m & mask).bit_count() & 1:
                        crc |= bit
                i += size
    table = _TABLE
    for b in mv[i:]:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


# --- the parser ---------------------------------------------------------------------------------

S_MAGIC, S_CMDHDR, S_BODY, S_END = range(4)
T_TYPE, T_LEN, T_VALUE, T_SKIP = range(4)


class _Fail(Exception):
    """Internal: unwinds ``_consume`` once ``self._fail_*`` is set."""


def _int(v: Any) -> int:
    return int.from_bytes(v, "little")


def _uuid(v: Any) -> str:
    h = bytes(v).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _timespec(v: Any) -> tuple[int, int]:
    return (int.from_bytes(v[:8], "little", signed=True), int.from_bytes(v[8:], "little"))


def _string(v: Any) -> str:
    return bytes(v).decode("utf-8", "surrogateescape")


_DECODE_KIND = {"u8": _int, "u32": _int, "u64": _int, "uuid": _uuid, "timespec": _timespec,
                "string": _string, "binary": bytes}


def _decode(kind: str, v: Any) -> Any:
    return _DECODE_KIND[kind](v)


# per attribute number (index 0 unused): name, decoder, fixed size (0: any), first version
_A_NAME = [""] + [ATTRIBUTES[t][0] for t in range(1, MAX_ATTR + 1)]
_A_DECODE = [None] + [_DECODE_KIND.get(ATTRIBUTES[t][1]) for t in range(1, MAX_ATTR + 1)]
_A_SIZE = [0] + [FIXED_SIZE.get(ATTRIBUTES[t][1], 0) for t in range(1, MAX_ATTR + 1)]
_A_VERSION = [0] + [ATTRIBUTES[t][2] for t in range(1, MAX_ATTR + 1)]
_C_NAME = [""] + [COMMANDS[c][0] for c in range(1, MAX_CMD + 1)]
_C_VERSION = [0] + [COMMANDS[c][1] for c in range(1, MAX_CMD + 1)]
_HEADER = struct.Struct("<IHI")
_ZERO_CRC = b"\0\0\0\0"


class StreamParser:
    """Incremental, validating btrfs send-stream parser (pure Python).

    ``feed(chunk)`` returns the events (:class:`Event`) of the commands the chunk completes,
    each checked (length, CRC32C, attributes) before it is reported; ``finish()`` raises unless
    the stream ended right after END. Any problem raises :class:`StreamError`, and the parser
    then stays failed.
    """

    def __init__(self) -> None:
        self._state = S_MAGIC
        self.version = 0
        self._pos = 0
        self.commands = 0
        self._hdr = bytearray(STREAM_HEADER_SIZE)
        self._hdr_have = 0
        self._cmd_off = 0
        self._cmd = 0
        self._cmd_len = 0
        self._body_left = 0
        self._crc_stored = 0
        self._crc = 0
        self._tstate = T_TYPE
        self._th = bytearray(4)
        self._th_have = 0
        self._tlv_off = 0
        self._ttype = 0
        self._tleft = 0
        self._present: set[int] = set()
        self._values: dict[int, bytearray] = {}
        self._data = (0, 0)
        self._perr: tuple[int, str] | None = None
        self._failed: tuple[int, str] | None = None

    @property
    def bytes(self) -> int:
        """Bytes consumed."""
        return self._pos

    @property
    def ended(self) -> bool:
        """The END command was seen (and nothing went wrong)."""
        return self._state == S_END and self._failed is None

    # -- public ---------------------------------------------------------------------------------

    def feed(self, data: Any) -> list[Event]:
        if self._failed is not None:
            raise StreamError(self._failed[1], self._failed[0])
        events: list[Event] = []
        try:
            self._consume(memoryview(data).cast("B"), events)
        except _Fail:
            assert self._failed is not None
            raise StreamError(self._failed[1], self._failed[0], events) from None
        return events

    def finish(self) -> None:
        if self._failed is None:
            state = self._state
            if state == S_END:
                return
            try:
                if state == S_MAGIC:
                    if self._pos == 0:
                        self._fail(0, "empty stream")
                    self._fail(self._pos, "stream ends inside the stream header")
                if state == S_CMDHDR:
                    if self._hdr_have:
                        self._fail(self._pos, "stream ends inside a command header")
                    self._fail(self._pos, "stream ends without an end command")
                total = CMD_HEADER_SIZE + self._cmd_len
                self._fail(self._pos, f"stream ends inside a command "
                                      f"({total - self._body_left} of {total} bytes)")
            except _Fail:
                pass
        assert self._failed is not None
        raise StreamError(self._failed[1], self._failed[0])

    # -- the state machine ----------------------------------------------------------------------

    def _fail(self, offset: int, reason: str) -> None:
        self._failed = (offset, reason)
        raise _Fail

    def _problem(self, offset: int, reason: str) -> None:
        if self._perr is None:
            self._perr = (offset, reason)
        self._tstate = T_SKIP

    def _consume(self, p: memoryview, events: list[Event]) -> None:
        n = len(p)
        i = 0
        while i < n:
            state = self._state
            if state == S_MAGIC:
                while i < n and self._hdr_have < STREAM_HEADER_SIZE:
                    b = p[i]
                    i += 1
                    self._pos += 1
                    if self._hdr_have < len(MAGIC) and b != MAGIC[self._hdr_have]:
                        self._fail(0, "not a btrfs send stream (bad magic)")
                    self._hdr[self._hdr_have] = b
                    self._hdr_have += 1
                if self._hdr_have == STREAM_HEADER_SIZE:
                    v = int.from_bytes(self._hdr[len(MAGIC):], "little")
                    if not 1 <= v <= MAX_VERSION:
                        self._fail(len(MAGIC), f"unsupported send stream version {v}")
                    self.version = v
                    self._state = S_CMDHDR
                    self._hdr_have = 0
            elif state == S_CMDHDR:
                have = self._hdr_have
                if have == 0:
                    if n - i >= CMD_HEADER_SIZE:
                        done = self._whole_command(p, i, n, events)
                        if done:
                            i = done
                            continue
                    self._cmd_off = self._pos
                k = min(CMD_HEADER_SIZE - have, n - i)
                self._hdr[have:have + k] = p[i:i + k]
                self._hdr_have = have + k
                i += k
                self._pos += k
                if self._hdr_have == CMD_HEADER_SIZE:
                    self._begin_command(events)
            elif state == S_BODY:
                m = min(n - i, self._body_left)
                span = p[i:i + m]
                self._crc = crc32c(span, self._crc)
                if self._tstate != T_SKIP:
                    self._walk(span, self._pos, self._body_left)
                i += m
                self._pos += m
                self._body_left -= m
                if self._body_left == 0:
                    self._end_command(events)
            else:
                self._fail(self._pos, "data after the end command")

    def _whole_command(self, p: memoryview, i: int, n: int, events: list[Event]) -> int:
        """Fast path: a command lying whole in the chunk, and valid, is reported at once; the
        index after it is returned. Anything else returns 0 and goes the general way, which
        finds the error (so errors come from one place only)."""
        length, cmd, crc_stored = _HEADER.unpack_from(p, i)
        end = i + CMD_HEADER_SIZE + length
        version = self.version
        if end > n or length > max_body(version) or not 0 < cmd <= MAX_CMD or _C_VERSION[cmd] > version:
            return 0
        if length < 4096:  # one call over a small copy beats two calls
            crc = crc32c(b"".join((p[i:i + 6], _ZERO_CRC, p[i + CMD_HEADER_SIZE:end])))
        else:
            crc = crc32c(p[i + CMD_HEADER_SIZE:end], crc32c(bytes(p[i:i + 6]) + _ZERO_CRC))
        if crc != crc_stored:
            return 0
        found: dict[int, tuple[int, int]] = {}
        j = i + CMD_HEADER_SIZE
        while j < end:
            if end - j < 2:
                return 0
            t = p[j] | p[j + 1] << 8
            if not 0 < t <= MAX_ATTR or _A_VERSION[t] > version or t in found:
                return 0
            if t == A_DATA and version >= 2:
                found[t] = (j + 2, end - j - 2)
                break
            if end - j < 4:
                return 0
            tlen = p[j + 2] | p[j + 3] << 8
            j += 4
            size = _A_SIZE[t]
            if tlen > end - j or (size and tlen != size):
                return 0
            found[t] = (j, tlen)
            j += tlen
        for a in REQUIRED[cmd]:
            if a not in found:
                return 0
        if self.commands == 0 and cmd != CMD_SUBVOL and cmd != CMD_SNAPSHOT:
            return 0
        attrs: dict[str, Any] = {}
        path = None
        base = self._pos - i
        for t in sorted(found):
            start, tlen = found[t]
            if t == A_DATA:
                attrs["data_offset"] = base + start
                attrs["data_len"] = tlen
            elif t == A_PATH:
                path = _string(p[start:start + tlen])
            else:
                attrs[_A_NAME[t]] = _A_DECODE[t](p[start:start + tlen])
        events.append(Event(_C_NAME[cmd], path, attrs, self._pos, CMD_HEADER_SIZE + length))
        self._pos += CMD_HEADER_SIZE + length
        self._cmd_off = self._pos - CMD_HEADER_SIZE - length
        self._cmd_len = length
        self.commands += 1
        if cmd == CMD_END:
            self._state = S_END
        return end

    def _begin_command(self, events: list[Event]) -> None:
        hdr = self._hdr
        length = int.from_bytes(hdr[0:4], "little")
        cmd = int.from_bytes(hdr[4:6], "little")
        limit = max_body(self.version)
        if length > limit:
            self._fail(self._cmd_off, f"command length {length} exceeds the limit of {limit} bytes")
        self._cmd = cmd
        self._cmd_len = self._body_left = length
        self._crc_stored = int.from_bytes(hdr[6:10], "little")
        hdr[6:10] = b"\0\0\0\0"
        self._crc = crc32c(hdr[:CMD_HEADER_SIZE], 0)
        self._perr = None
        self._present = set()
        self._values = {}
        self._tstate = T_TYPE
        self._th_have = 0
        if cmd == 0 or cmd > MAX_CMD:
            self._problem(self._cmd_off, f"unknown command type {cmd}")
        elif COMMANDS[cmd][1] > self.version:
            self._problem(self._cmd_off,
                          f"command {COMMANDS[cmd][0]} is not defined in version {self.version}")
        if length == 0:
            self._end_command(events)
        else:
            self._state = S_BODY

    def _begin_value(self, tlen: int, value_pos: int) -> None:
        t = self._ttype
        name, kind, _ = ATTRIBUTES[t]
        if kind == "data":
            self._data = (value_pos, tlen)
        else:
            size = FIXED_SIZE.get(kind)
            if size is not None and tlen != size:
                self._problem(self._tlv_off, f"attribute {name} has {tlen} bytes, expected {size}")
                return
            self._values[t] = bytearray()
        self._tleft = tlen
        self._th_have = 0
        if tlen == 0:
            self._present.add(t)
            self._tstate = T_TYPE
        else:
            self._tstate = T_VALUE

    def _walk(self, p: memoryview, base: int, rem: int) -> None:
        """The attributes in the next ``len(p)`` body bytes; ``rem`` body bytes remain from
        ``p[0]``, at stream offset ``base``. Problems are recorded: the CRC is checked first."""
        m = len(p)
        j = 0
        th = self._th
        while j < m:
            ts = self._tstate
            if ts == T_SKIP:
                return
            if ts == T_VALUE:
                k = min(m - j, self._tleft)
                t = self._ttype
                if t != A_DATA:
                    self._values[t] += p[j:j + k]
                j += k
                self._tleft -= k
                if self._tleft == 0:
                    self._present.add(t)
                    self._tstate = T_TYPE
                    self._th_have = 0
            elif ts == T_TYPE:
                if self._th_have == 0:
                    self._tlv_off = base + j
                    if rem - j < 2:
                        self._problem(self._tlv_off, "attribute header cut by the end of the command")
                        return
                th[self._th_have] = p[j]
                self._th_have += 1
                j += 1
                if self._th_have < 2:
                    continue
                t = th[0] | th[1] << 8
                after = rem - j
                if t == 0 or t > MAX_ATTR:
                    self._problem(self._tlv_off, f"unknown attribute type {t}")
                    return
                name, _kind, version = ATTRIBUTES[t]
                if version > self.version:
                    self._problem(self._tlv_off,
                                  f"attribute {name} is not defined in version {self.version}")
                    return
                if t in self._present:
                    self._problem(self._tlv_off, f"duplicate attribute {name}")
                    return
                self._ttype = t
                if t == A_DATA and self.version >= 2:
                    self._begin_value(after, base + j)
                elif after < 2:
                    self._problem(self._tlv_off, "attribute header cut by the end of the command")
                    return
                else:
                    self._tstate = T_LEN
            else:  # T_LEN
                th[self._th_have] = p[j]
                self._th_have += 1
                j += 1
                if self._th_have < 4:
                    continue
                tlen = th[2] | th[3] << 8
                after = rem - j
                if tlen > after:
                    self._problem(self._tlv_off, f"attribute {ATTRIBUTES[self._ttype][0]} of {tlen} "
                                                 f"bytes overruns the command ({after} bytes left)")
                    return
                self._begin_value(tlen, base + j)

    def _end_command(self, events: list[Event]) -> None:
        if self._crc != self._crc_stored:
            self._fail(self._cmd_off, f"CRC32C mismatch (stored 0x{self._crc_stored:08x}, "
                                      f"computed 0x{self._crc:08x})")
        if self._perr is not None:
            self._fail(*self._perr)
        cmd = self._cmd
        name = COMMANDS[cmd][0]
        present = self._present
        for a in REQUIRED[cmd]:
            if a not in present:
                self._fail(self._cmd_off, f"{name} command lacks the {ATTRIBUTES[a][0]} attribute")
        if self.commands == 0 and cmd != CMD_SUBVOL and cmd != CMD_SNAPSHOT:
            self._fail(self._cmd_off, f"stream starts with {name}, not subvol or snapshot")
        attrs: dict[str, Any] = {}
        path = None
        values = self._values
        for t in sorted(present):
            if t == A_DATA:
                attrs["data_offset"], attrs["data_len"] = self._data
                continue
            aname, kind, _ = ATTRIBUTES[t]
            value = _decode(kind, bytes(values[t]))
            if t == A_PATH:
                path = value
            else:
                attrs[aname] = value
        events.append(Event(name, path, attrs, self._cmd_off, CMD_HEADER_SIZE + self._cmd_len))
        self.commands += 1
        self._state = S_END if cmd == CMD_END else S_CMDHDR
        self._hdr_have = 0
