"""A ``btrfs send --no-data`` stream, read: the writes the real stream will carry, and its size.

``--no-data`` gives the very stream of the same send without file data: each write is an
UPDATE_EXTENT naming the file, the offset and the length the real stream carries there.  Two
readers walk it, through this one class: the progress estimate and the tree planner's prices
(``ops/estimate.py``: ``size``), and the push's read-ahead of the source (``ops/push/readahead.py``:
the writes, in order, each with the file data of the real stream before it).  It parses every
command with the send-stream parser: with the C parser (``native/``) about as fast as a walk of the
command headers alone; with the pure-Python fallback (no compiler at install time) ~15 times
slower, so there a large full's estimate may pass its time budget and fall back to the previous
backup's size (``ops/estimate.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from btrsync.sendstream.parser import StreamParser


class Write(NamedTuple):
    """One write of the real stream: ``length`` bytes of ``path`` at ``offset``, after ``at``
    bytes of file data (writes and clones, counted as ``ChangeStats.data_bytes`` counts them)."""

    path: str
    offset: int
    length: int
    at: int


class NoDataWalk:
    """Feed a ``--no-data`` stream in pieces of any size; ``feed`` returns the writes each piece
    completes.  ``size`` is the real stream's size as this one measures it: its own length plus the
    data of every write (within a fraction of a percent; high by the compression saved where
    ``--compressed-data`` sends extents compressed).  A damaged stream raises ``StreamError``
    (a ``ValueError``)."""

    def __init__(self) -> None:
        self._parser = StreamParser()
        self.stream_bytes = 0  # of the --no-data stream itself
        self.write_bytes = 0  # the data of its UPDATE_EXTENTs: what the real stream's writes carry
        self.data_bytes = 0  # file data written or cloned, so far

    @property
    def size(self) -> int:
        return self.stream_bytes + self.write_bytes

    def feed(self, chunk: Any) -> list[Write]:
        self.stream_bytes += len(chunk)
        writes = []
        for ev in self._parser.feed(chunk):
            if ev.cmd == "update_extent":
                length = ev.attrs["size"]
                writes.append(Write(ev.path, ev.attrs["file_offset"], length, self.data_bytes))
                self.data_bytes += length
                self.write_bytes += length
            elif ev.cmd == "clone":
                self.data_bytes += ev.attrs["clone_len"]
        return writes

    def finish(self) -> None:
        """The stream ended: ``StreamError`` if it ended early."""
        self._parser.finish()
