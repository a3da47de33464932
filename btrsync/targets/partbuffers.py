"""Reused part buffers for uploads in parts (the S3 target).

A part is filled into a ``bytearray`` of the part size (16 MiB by default) and handed to the HTTP
client as it is.  A fresh buffer for every part costs more than filling it: since the ``btrsync``
process maps every buffer of 8 MiB or more on its own (``btrsync/memory.py``), each part was
mapped, zeroed page by page (4,096 page faults per 16 MiB) and unmapped again, about as much CPU as
copying the data into it (benchmarks/README.md, issue 14).  Here a part's buffer comes back when
its upload has ended (answered, failed for good, or cancelled before it started) and the next part
of that size is filled into it.

Bound: a buffer is created only when none of the wanted size is free, and free buffers of another
size are dropped then, so the buffers that exist never outnumber the most that were in use at once
(:attr:`PartBuffers.max_in_use`), which the target's budget bounds (``max_inflight_parts`` parts
uploading plus one being filled per running put).  A reused buffer still holds an earlier part's
bytes: whoever takes one overwrites all of it before use (``rechunk`` fills a part completely, and
cuts the last one to the bytes it filled).
"""

from __future__ import annotations

import threading


class PartBuffers:
    """A thread-safe free list of ``bytearray`` part buffers, by size."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[int, list[bytearray]] = {}
        self._lent: dict[int, int] = {}  # id() -> size of the buffers handed out, not yet back
        self.created = 0  # buffers allocated so far
        self.in_use = 0
        self.max_in_use = 0

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes (a free one if any; its content is stale)."""
        with self._lock:
            free = self._free.get(size)
            if free:
                buf = free.pop()
            else:
                self._free.clear()  # buffers of an earlier part size are not wanted any more
                buf = bytearray(size)
                self.created += 1
            self._lent[id(buf)] = size
            self.in_use += 1
            self.max_in_use = max(self.max_in_use, self.in_use)
            return buf

    def give(self, buf: bytearray) -> None:
        """Return a buffer from :meth:`take` whose user is done with it; anything else (a buffer
        given twice, or not from here) is ignored.  A buffer cut shorter (the last part of an
        upload) is not kept; only its count is released."""
        with self._lock:
            size = self._lent.pop(id(buf), None)
            if size is None:
                return
            self.in_use -= 1
            if len(buf) == size:
                self._free.setdefault(size, []).append(buf)
