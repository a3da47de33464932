"""``window_end = "stop"``: a push stops at a segment boundary once the job's window closed."""

from __future__ import annotations

from collections.abc import Callable

from btrsync.errors import BtrsyncError


class WindowClosedError(BtrsyncError):
    """The backup window closed during a push (window_end = "stop"): stopped at a segment boundary."""


class WindowStop:
    """``may_start_segment`` for ``window_end = "stop"``: refuses the next segment once
    ``is_open()`` is false, so the push stops at a segment boundary (the durable, indexed segments
    are resumed by the next run)."""

    def __init__(self, is_open: Callable[[], bool], describe: str) -> None:
        self._is_open = is_open
        self._describe = describe
        self.stopped = False

    def __call__(self, segment: int) -> None:
        if not self._is_open():
            self.stopped = True
            raise WindowClosedError(f"the backup window {self._describe} closed: stopped before segment "
                                    f"{segment:06d}; the next run resumes from there")
