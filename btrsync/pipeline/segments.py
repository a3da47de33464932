"""Pack sealed chunks into segment objects and record where each chunk landed.

Each segment is one atomic ``target.put`` running on a thread of its own and fed frame by frame
through a small bounded queue, so that the slow end of one segment (an fsync, a multipart
completion, an rsync) overlaps with sealing and sending the next one.  At most
``max_inflight`` segment puts run at once; segments are acknowledged (``on_segment``) strictly in
order, each on its put's thread as soon as its ``put`` has returned (it is durable) and the
previous segment's acknowledgement has run: a segment's index never waits for the next segment.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from btrsync.catalog.layout import segment_key
from btrsync.catalog.manifest import ChunkRecord
from btrsync.pipeline.seal import SealedChunk
from btrsync.pipeline.throttle import TokenBucket, throttle
from btrsync.targets.base import ObjectInfo, Target

QUEUE_FRAMES = 4  # frames waiting per segment put: bounds memory to QUEUE_FRAMES x chunk size each
_END = object()
_POLL = 0.2  # seconds: how soon a put waiting for its next frame sees an abort


class _ProducerFailed(Exception):
    """Raised inside a segment's parts iterator so the put discards the half-written segment."""


@dataclass
class _SegmentPut:
    """One segment's ``put`` on a pool thread, fed through a bounded queue."""

    segment: int
    records: list[ChunkRecord] = field(default_factory=list)
    size: int = 0
    ended: bool = False
    queue: queue.Queue[object] = field(default_factory=lambda: queue.Queue(maxsize=QUEUE_FRAMES))
    future: Future[ObjectInfo] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)  # wakes a throttled wait on abort

    def start(self, pool: ThreadPoolExecutor, target: Target, backup_id: str, bucket: TokenBucket | None,
              previous: _SegmentPut | None,
              on_segment: Callable[[int, list[ChunkRecord]], None] | None) -> None:
        self.future = pool.submit(self._put, target, segment_key(backup_id, self.segment),
                                  throttle(self._frames(), bucket, self.cancel), previous, on_segment)

    def _put(self, target: Target, key: str, parts: Iterator[bytes], previous: _SegmentPut | None,
             on_segment: Callable[[int, list[ChunkRecord]], None] | None) -> ObjectInfo:
        """The put, then ``on_segment`` as soon as it is durable and the previous segment's has run
        (in order; not if the previous one failed): a segment's index never waits for the next
        segment to be written, so a kill loses only what was not durable yet."""
        info = target.put(key, parts)
        if previous is not None:
            assert previous.future is not None
            previous.future.result()  # started before us on the pool: no deadlock
        if on_segment is not None:
            on_segment(self.segment, self.records)  # complete: the producer ended us before put returned
        return info

    def _frames(self) -> Iterator[bytes]:
        while True:
            try:
                # never an unbounded wait: an abort must not depend on a wake-up through the queue
                # (a signal raised in the producer inside ``Queue.put`` can lose one)
                item = self.queue.get(timeout=_POLL)
            except queue.Empty:
                if self.cancel.is_set():
                    raise _ProducerFailed("the segment's producer failed") from None
                continue
            if item is _END:
                return
            if isinstance(item, _ProducerFailed):
                raise item
            yield item  # type: ignore[misc]

    def feed(self, item: object) -> None:
        """Hand one frame (or the end marker) to the put; if the put already failed, raise its error."""
        assert self.future is not None
        while True:
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if self.future.done():
                    self.future.result()  # raises the put's error
                    raise RuntimeError("a segment put returned before its last frame") from None

    def end(self) -> None:
        self.feed(_END)
        self.ended = True

    def abort(self) -> None:
        """Make an unfinished put fail (and clean up) without waiting for it to drain its queue;
        a segment whose every frame was handed over is complete and may finish.  Also when
        ``start`` was cut short by a signal before it could record the future: the put may
        still run, and then it finds the failure in its queue instead of waiting forever."""
        if not self.ended and not (self.future is not None and self.future.done()):
            self.cancel.set()
            try:
                self.queue.put_nowait(_ProducerFailed("the segment's producer failed"))
            except queue.Full:
                self._drain_then_abort()

    def _drain_then_abort(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.queue.put_nowait(_ProducerFailed("the segment's producer failed"))


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
    max_inflight: int = 2,
    may_start: Callable[[int], None] | None = None,
    all_handed: Callable[[], None] | None = None,
) -> int:
    """Store chunks in order as ``data/<id>/<NNNNNN>`` objects of about ``segment_size`` bytes.

    A chunk never spans segments.  ``on_segment(n, records)`` runs, in order, as soon as segment
    ``n`` is durable, on the thread of its put (never two at once); records are not kept beyond that, so memory does not grow with the stream.
    ``all_handed()`` runs on this thread once every chunk is handed to a put, while the last puts
    (and their ``on_segment``) are still under way: what the caller has left to write (a push's
    file index) goes beside them instead of after them.
    ``may_start(n)`` is asked before segment ``n`` is started and refuses it by raising (the run's
    ``window_end = "stop"``): nothing of that segment is stored, and the error ends the writing
    like any other.  Returns the number of the next segment.  On any error no partial segment
    remains: unfinished puts are failed through their parts iterator.
    """
    inflight: deque[_SegmentPut] = deque()
    current: _SegmentPut | None = None
    number = first_segment
    limit = max(1, min(max_inflight, target.capabilities.connections))
    with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="btrsync-put") as pool:
        try:
            for chunk in sealed:
                frame = chunk.frame
                if current is None or (current.size and current.size + len(frame) > segment_size):
                    if current is not None:
                        current.end()
                    while len(inflight) >= limit:
                        _finish(inflight.popleft())
                    if may_start is not None:
                        may_start(number)
                    previous = inflight[-1] if inflight else None
                    current = _SegmentPut(number)
                    number += 1
                    inflight.append(current)  # before start: an abort must reach every started put
                    current.start(pool, target, backup_id, bucket, previous, on_segment)
                current.records.append(ChunkRecord(current.segment, current.size, len(frame), chunk.raw_size,
                                                   chunk.stored_xxh3, chunk.raw_xxh3))
                current.feed(frame)
                current.size += len(frame)
                if on_stored is not None:
                    on_stored(len(frame))
            if current is not None:
                current.end()
            if all_handed is not None:
                all_handed()
            while inflight:
                _finish(inflight.popleft())
        except BaseException:
            for put in inflight:
                put.abort()
            raise
    return number


def _finish(put: _SegmentPut) -> None:
    assert put.future is not None
    put.future.result()  # durable, and its on_segment has run
