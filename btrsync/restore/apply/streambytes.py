"""The stream bytes a command's data may live in, while a link's chunks are applied one by one.

A WRITE or ENCODED_WRITE names its data by stream offset; the data is read straight from the chunk
just fed, or, where the command began in an earlier chunk, from a carry of the bytes since the end
of the last complete command. Nothing else is kept: the carry is at most one command long.
"""

from __future__ import annotations

from btrsync.errors import DamageError


class StreamBytes:
    """The stream bytes a command's data may live in: the chunk just fed, and a carry of the bytes
    since the end of the last complete command (a command's data may begin in an earlier chunk)."""

    def __init__(self) -> None:
        self.carry = bytearray()
        self.carry_start = 0  # stream offset of carry[0]
        self.chunk: memoryview = memoryview(b"")
        self.chunk_start = 0

    def add(self, chunk: bytes) -> None:
        self.chunk_start = self.carry_start + len(self.carry)
        self.chunk = memoryview(chunk)

    def get(self, offset: int, length: int) -> bytes | memoryview:
        end = offset + length
        if offset >= self.chunk_start:
            lo = offset - self.chunk_start
            if end - self.chunk_start > len(self.chunk):
                raise DamageError(f"send stream data at byte {offset}+{length} is past the bytes read")
            return self.chunk[lo:lo + length]
        if offset < self.carry_start:
            raise DamageError(f"send stream data at byte {offset} was already released")
        head = self.carry[offset - self.carry_start:]
        if end <= self.chunk_start:
            return memoryview(head)[:length]
        return bytes(head) + self.chunk[:end - self.chunk_start]

    def consumed(self, upto: int) -> None:
        """Everything before stream offset ``upto`` is no longer needed."""
        fed_end = self.chunk_start + len(self.chunk)
        if upto >= self.chunk_start:
            self.carry = bytearray(self.chunk[upto - self.chunk_start:])
        else:
            del self.carry[:max(0, upto - self.carry_start)]
            self.carry += self.chunk
        self.carry_start = fed_end - len(self.carry)
        self.chunk = memoryview(b"")
        self.chunk_start = fed_end
