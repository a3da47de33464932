"""The send stream as a push sees it: every chunk through the parser on its way to be sealed.

Part of the push (``ops/push/``), its only user: it joins the parser (``sendstream/``) and the tree summary
(``fileindex/summary.py``), which ``sendstream/`` itself does not import.

``WatchThread`` runs a ``StreamWatch`` on a thread of its own, so that the thread reading
``btrfs send`` only hands it buffers: parsing, the statistics, the tree summary and the file
index's records never hold up the read (a pipe left unread stalls the kernel's send).

A stream that fails the parser (a bad CRC, a malformed command, no END, bytes after END) fails
the backup before anything is committed.  On the way, the parser's events give the change
statistics of every backup (``stats.py``) and, for a full, the summary of the tree it builds
(``fileindex/summary.py``).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from btrsync.errors import SendFailedError
from btrsync.fileindex.summary import StreamSummary
from btrsync.sendstream.parser import StreamError, StreamParser
from btrsync.sendstream.stats import ChangeStats

log = logging.getLogger(__name__)


class StreamWatch:
    """``feed`` each chunk in order, ``finish`` at the end; raises ``SendFailedError`` on a bad stream."""

    def __init__(self, what: str, *, full: bool, sink: Any = None) -> None:
        self.what = what
        # e.g. the file index writer: ``sink.add_many(events)`` per chunk if it has it, else ``sink.add(event)``
        self.sink = sink
        self.parser = StreamParser()
        self.stats = ChangeStats()
        self.tree: StreamSummary | None = StreamSummary() if full else None
        # from SUBVOL/SNAPSHOT, the first command: the snapshot's ctransid, and the one its parent
        # had when this was sent (an incremental's clone_ctransid); the manifest records both
        self.ctransid: int | None = None
        self.parent_ctransid: int | None = None
        self._summary: dict[str, Any] | None = None
        self._summarised = False

    def feed(self, chunk: Any) -> None:
        try:
            events = self.parser.feed(chunk)
        except StreamError as exc:
            raise SendFailedError(f"{self.what} produced a bad stream ({exc}); nothing was committed") from None
        if events and self.ctransid is None:  # the parser makes sure it is SUBVOL or SNAPSHOT, with a ctransid
            first = events[0].attrs
            self.ctransid, self.parent_ctransid = first.get("ctransid"), first.get("clone_ctransid")
        stats = self.stats.add
        for ev in events:
            stats(ev)
        if self.tree is not None:
            for ev in events:
                self.tree.add(ev)  # looked up each time: the summary swaps its ``add`` as it goes
        if self.sink is not None and events:
            many = getattr(self.sink, "add_many", None)
            if many is not None:
                many(events)
            else:
                for ev in events:
                    self.sink.add(ev)

    def finish(self) -> None:
        """The stream must have ended with END; the tree summary is made here (by the thread that
        watched the stream, not after it)."""
        try:
            self.parser.finish()
        except StreamError as exc:
            raise SendFailedError(f"{self.what} ended early ({exc}); nothing was committed") from None
        self._summary = self.tree.result() if self.tree is not None else None
        self._summarised, self.tree = True, None  # the tree's memory goes now

    @property
    def version(self) -> int:
        return int(self.parser.version)

    @property
    def commands(self) -> int:
        return int(self.parser.commands)

    def tree_summary(self) -> dict[str, Any] | None:
        if self._summarised:
            return self._summary
        return self.tree.result() if self.tree is not None else None


_END = object()
_POLL = 0.2  # seconds: how soon an idle watch thread sees ``close``
_CLOSE_WAIT = 10.0


class WatchThread:
    """A ``StreamWatch`` fed through a bounded queue on a thread of its own.

    ``feed`` only queues the chunk (it blocks while ``depth`` chunks wait, so memory stays
    bounded); an error the watch raised is raised by the next ``feed`` and by ``finish``, which
    waits for the watch to see every chunk.  ``close`` (always, e.g. in a ``finally``) stops the
    thread without waiting for the chunks still queued.  The watch's ``sink`` is called on the
    thread only; after ``finish`` or ``close`` the watch is the caller's again.
    """

    def __init__(self, watch: StreamWatch, *, depth: int = 4) -> None:
        self.watch = watch
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="btrsync-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                try:
                    # never an unbounded wait: ``close`` must not depend on a wake-up through the
                    # queue (a signal raised in the feeding thread inside ``Queue.put`` can lose it)
                    chunk = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                if chunk is _END:
                    break
                if self._stop.is_set():
                    return
                self.watch.feed(chunk)
            if not self._stop.is_set():
                self.watch.finish()
        except BaseException as exc:  # noqa: BLE001 - handed to the feeding thread
            self._error = exc
            self._stop.set()
            self._drain()

    def _drain(self) -> None:
        """Empty the queue so a feeder blocked on it wakes up (and then sees the error)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def feed(self, chunk: Any) -> None:
        self._raise()
        while True:
            try:
                self._queue.put(chunk, timeout=0.2)
                return
            except queue.Full:
                self._raise()
                if not self._thread.is_alive():
                    raise RuntimeError("the stream watch thread ended early") from None

    def finish(self) -> StreamWatch:
        """Wait until the watch has seen every chunk and the end; raise what it raised."""
        self.feed(_END)
        self._thread.join()
        self._raise()
        return self.watch

    def close(self) -> None:
        """Stop the thread (the cleanup path, e.g. after SIGTERM): it sees the stop within
        ``_POLL`` seconds whatever state the queue was left in, and the queue is not touched
        here (the feeding thread may have been interrupted inside it).  A watch still busy after
        ``_CLOSE_WAIT`` is left behind (a daemon thread holding no resource), never waited for."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=_CLOSE_WAIT)
            if self._thread.is_alive():
                log.warning("the stream watch did not stop within %.0f s; leaving it", _CLOSE_WAIT)
