"""Progress on a terminal: bytes, rate, elapsed; silent when stderr is not a TTY."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from btrsync.units import format_bytes


class TerminalProgress:
    """A callback ``(label, raw_bytes, stored_bytes)`` that redraws one status line at most 5x/s."""

    def __init__(self, stream: TextIO | None = None, verb: str = "sent") -> None:
        self.stream = stream or sys.stderr
        self.verb = verb
        self._label = ""
        self._t0 = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def __call__(self, label: str, raw: int, stored: int) -> None:
        now = time.monotonic()
        if label != self._label:
            self.finish()
            self._label, self._t0 = label, now
        if now - self._last < 0.2:
            return
        self._last = now
        elapsed = max(now - self._t0, 1e-6)
        line = (f"{label}: {format_bytes(raw)} {self.verb}, {format_bytes(stored)} stored, "
                f"{format_bytes(raw / elapsed)}/s, {elapsed:.0f}s")
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def terminal_progress(verb: str = "sent") -> TerminalProgress | None:
    return TerminalProgress(verb=verb) if sys.stderr.isatty() else None
