"""Walk the command framing of a btrfs send stream as it passes, without copying it.

A stream is ``"btrfs-stream\\0"`` + u32 version, then commands of ``u32 length, u16 type, u32 crc``
+ ``length`` bytes of attributes, ending with the END command (type 21).  A stream that stops
anywhere but right after END was cut short, whatever exit status the sender reported.
"""

from __future__ import annotations

import struct

from btrsync.errors import SendFailedError

MAGIC = b"btrfs-stream\0"
STREAM_HEADER = len(MAGIC) + 4
CMD_HEADER = struct.Struct("<IHI")
CMD_END = 21
MAX_VERSION = 3


class StreamFraming:
    """Feed chunks in order with ``feed``; ``finish`` raises unless the stream ended cleanly."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.version = 0
        self.commands = 0
        self._pending = b""  # an incomplete header carried across chunk boundaries
        self._skip = 0  # attribute bytes of the current command still to pass
        self._started = False
        self._ended = False

    def feed(self, chunk: bytes) -> None:
        pos = 0
        if self._pending:  # complete a header split across chunks
            need = self._header_size() - len(self._pending)
            self._pending += chunk[:need]
            pos = min(need, len(chunk))
            if len(self._pending) < self._header_size():
                return
            head, self._pending = self._pending, b""
            self._header(head, 0)
        elif not self._started:
            if len(chunk) < STREAM_HEADER:
                self._pending = chunk
                return
            self._header(chunk, 0)
            pos = STREAM_HEADER
        self._walk(chunk, pos)

    def _header_size(self) -> int:
        return CMD_HEADER.size if self._started else STREAM_HEADER

    def _walk(self, chunk: bytes, pos: int) -> None:
        n = len(chunk)
        size = CMD_HEADER.size
        unpack = CMD_HEADER.unpack_from
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                pos += step
                self._skip -= step
                continue
            if n - pos < size:
                self._pending = chunk[pos:]
                return
            length, cmd, _crc = unpack(chunk, pos)
            self._command(cmd)
            pos += size
            self._skip = length

    def _header(self, buf: bytes, pos: int) -> None:
        if not self._started:
            if buf[pos : pos + len(MAGIC)] != MAGIC:
                raise SendFailedError(f"{self.what}: not a btrfs send stream (bad magic)")
            (self.version,) = struct.unpack_from("<I", buf, pos + len(MAGIC))
            if not 1 <= self.version <= MAX_VERSION:
                raise SendFailedError(f"{self.what}: unsupported send stream version {self.version}")
            self._started = True
            return
        length, cmd, _crc = CMD_HEADER.unpack_from(buf, pos)
        self._command(cmd)
        self._skip = length

    def _command(self, cmd: int) -> None:
        if self._ended:
            raise SendFailedError(f"{self.what}: data after the end of the send stream")
        self.commands += 1
        if cmd == CMD_END:
            self._ended = True

    def finish(self) -> None:
        if not self._started:
            raise SendFailedError(f"{self.what}: the send stream is empty")
        if not self._ended or self._skip or self._pending:
            raise SendFailedError(f"{self.what}: the send stream was cut short (no end marker)")
