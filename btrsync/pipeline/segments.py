"""Pack sealed chunks into segment objects and record where each chunk landed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from btrsync.catalog.layout import segment_key
from btrsync.catalog.manifest import ChunkRecord
from btrsync.pipeline.seal import SealedChunk
from btrsync.pipeline.throttle import TokenBucket, throttle
from btrsync.targets.base import Target


class _Peekable:
    def __init__(self, items: Iterable[SealedChunk]) -> None:
        self._it = iter(items)
        self._head: SealedChunk | None = None
        self._done = False

    def peek(self) -> SealedChunk | None:
        if self._head is None and not self._done:
            self._head = next(self._it, None)
            self._done = self._head is None
        return self._head

    def pop(self) -> SealedChunk:
        head = self.peek()
        assert head is not None
        self._head = None
        return head


def write_segments(
    target: Target,
    backup_id: str,
    sealed: Iterable[SealedChunk],
    *,
    segment_size: int,
    bucket: TokenBucket | None = None,
    on_stored: Callable[[int], None] | None = None,
    first_segment: int = 0,
    on_segment: Callable[[int, list[ChunkRecord]], None] | None = None,
) -> tuple[list[ChunkRecord], int]:
    """Store chunks in order as ``data/<id>/<NNNNNN>`` objects of about ``segment_size`` bytes.

    Each segment is one atomic ``put``; a chunk never spans segments.  ``on_segment(n, records)``
    runs after segment ``n`` is durable.  Returns the new chunk records and the number of the next
    segment.
    """
    source = _Peekable(sealed)
    records: list[ChunkRecord] = []
    segment = first_segment
    while source.peek() is not None:
        before = len(records)
        frames = _segment_frames(source, segment, segment_size, records, on_stored)
        target.put(segment_key(backup_id, segment), throttle(frames, bucket))
        if on_segment is not None:
            on_segment(segment, records[before:])
        segment += 1
    return records, segment


def _segment_frames(
    source: _Peekable,
    segment: int,
    segment_size: int,
    records: list[ChunkRecord],
    on_stored: Callable[[int], None] | None,
) -> Iterator[bytes]:
    offset = 0
    while (head := source.peek()) is not None and (offset == 0 or offset + len(head.frame) <= segment_size):
        chunk = source.pop()
        size = len(chunk.frame)
        records.append(ChunkRecord(segment, offset, size, chunk.raw_size, chunk.stored_xxh3, chunk.raw_xxh3))
        offset += size
        yield chunk.frame
        if on_stored is not None:
            on_stored(size)
