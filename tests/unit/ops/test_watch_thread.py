"""The stream watch on its own thread (ops/push/watch.py): the same verdicts as inline, delivered
to the thread that reads ``btrfs send``."""

from __future__ import annotations

import threading
import time

import pytest

from btrsync.errors import SendFailedError
from btrsync.ops.push.watch import StreamWatch, WatchThread
from tests.unit.sendstream import streams


class Sink:
    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.cmds: list[str] = []

    def add(self, ev: object) -> None:
        self.threads.add(threading.current_thread().name)
        self.cmds.append(ev.cmd)  # type: ignore[attr-defined]


def test_a_good_stream_is_watched_off_the_feeding_thread() -> None:
    data = streams.minimal(2)
    sink = Sink()
    watch = WatchThread(StreamWatch("test", full=True, sink=sink), depth=1)
    for piece in streams.every(data, 7):
        watch.feed(piece)
    done = watch.finish()
    assert sink.cmds[0] == "subvol" and sink.cmds[-1] == "end"
    assert sink.threads == {"btrsync-watch"}
    assert done.commands == len(sink.cmds) and done.ctransid is not None


def test_a_stream_cut_short_fails_at_finish() -> None:
    data = streams.minimal(2)
    watch = WatchThread(StreamWatch("test", full=False), depth=2)
    watch.feed(data[:-10])
    with pytest.raises(SendFailedError, match="ended early"):
        watch.finish()
    watch.close()


def test_a_bad_stream_fails_the_feeding_thread_and_never_blocks_it() -> None:
    bad = bytearray(streams.minimal(2))
    bad[30] ^= 0xFF  # inside the first command: its CRC fails
    watch = WatchThread(StreamWatch("test", full=False), depth=1)
    with pytest.raises(SendFailedError, match="bad stream"):
        for _ in range(1000):  # the queue holds one chunk: feeding on must meet the error
            watch.feed(bytes(bad))
    watch.close()


def test_close_stops_the_thread_with_chunks_still_queued() -> None:
    watch = WatchThread(StreamWatch("test", full=True), depth=4)
    watch.feed(streams.minimal(2)[:20])
    watch.close()
    assert not watch._thread.is_alive()


def test_close_returns_when_a_wake_up_through_the_queue_is_lost() -> None:
    """SIGTERM during a push raises in the thread feeding the watch, possibly inside
    ``Queue.put``; a push once hung for good in ``close`` after that, its watch thread waiting on
    an empty queue for a wake-up that never came.  ``close`` no longer depends on one."""
    watch = WatchThread(StreamWatch("test", full=True), depth=4)
    time.sleep(0.05)  # the thread waits on the empty queue
    watch._queue.not_empty.notify = lambda n=1: None  # type: ignore[method-assign]  # no wake-up comes
    closer = threading.Thread(target=watch.close, daemon=True)
    closer.start()
    closer.join(timeout=5)
    assert not closer.is_alive(), "close hung"
    assert not watch._thread.is_alive()
