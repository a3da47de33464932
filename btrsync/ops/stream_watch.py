"""The send stream as a push sees it: every chunk through the parser on its way to be sealed.

Beside ``push.py``, its only user: it joins the parser (``sendstream/``) and the tree summary
(``fileindex/summary.py``), which ``sendstream/`` itself does not import.

A stream that fails the parser (a bad CRC, a malformed command, no END, bytes after END) fails
the backup before anything is committed.  On the way, the parser's events give the change
statistics of every backup (``stats.py``) and, for a full, the summary of the tree it builds
(``fileindex/summary.py``).
"""

from __future__ import annotations

from typing import Any

from btrsync.errors import SendFailedError
from btrsync.fileindex.summary import StreamSummary
from btrsync.sendstream.parser import StreamError, StreamParser
from btrsync.sendstream.stats import ChangeStats


class StreamWatch:
    """``feed`` each chunk in order, ``finish`` at the end; raises ``SendFailedError`` on a bad stream."""

    def __init__(self, what: str, *, full: bool, sink: Any = None) -> None:
        self.what = what
        self.sink = sink  # e.g. the file index writer: ``sink.add(event)`` for every command
        self.parser = StreamParser()
        self.stats = ChangeStats()
        self.tree: StreamSummary | None = StreamSummary() if full else None
        # from SUBVOL/SNAPSHOT, the first command: the snapshot's ctransid, and the one its parent
        # had when this was sent (an incremental's clone_ctransid); the manifest records both
        self.ctransid: int | None = None
        self.parent_ctransid: int | None = None

    def feed(self, chunk: Any) -> None:
        try:
            events = self.parser.feed(chunk)
        except StreamError as exc:
            raise SendFailedError(f"{self.what} produced a bad stream ({exc}); nothing was committed") from None
        if events and self.ctransid is None:  # the parser makes sure it is SUBVOL or SNAPSHOT, with a ctransid
            first = events[0].attrs
            self.ctransid, self.parent_ctransid = first.get("ctransid"), first.get("clone_ctransid")
        for ev in events:
            self.stats.add(ev)
            if self.tree is not None:
                self.tree.add(ev)
            if self.sink is not None:
                self.sink.add(ev)

    def finish(self) -> None:
        try:
            self.parser.finish()
        except StreamError as exc:
            raise SendFailedError(f"{self.what} ended early ({exc}); nothing was committed") from None

    @property
    def version(self) -> int:
        return int(self.parser.version)

    @property
    def commands(self) -> int:
        return int(self.parser.commands)

    def tree_summary(self) -> dict[str, Any] | None:
        return self.tree.result() if self.tree is not None else None
