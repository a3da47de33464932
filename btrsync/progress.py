"""Progress of a transfer, for people.

Library code reports to a ``Progress`` and never prints::

    progress.start(name, estimate, index=1, count=1)  # one backup, or one link of a restore
    progress.phase("sending")      # preparing, resuming, sending, committing, receiving, verifying
    progress.update(raw, stored)   # running totals: stream bytes done, stored bytes done
    progress.finish(ok)

``Reporter`` renders it on stderr.  On a terminal it redraws one status line four times a second
(``\\r`` and erase-line, cut to the terminal's width so it never wraps) and erases it before
anything else is printed: when it is closed, and before every log record while it runs.  Anywhere
else (a journal, a file, a pipe) it writes plain lines, never a control character: one when a
transfer starts, one every ``interval`` seconds, one when it ends.

Totals that are estimates are marked ``~``, and so are percentages derived from them; an ETA is
always marked ``~``.  The rate is measured over the last ``window`` seconds between the moments
bytes were counted (for a push: when the token bucket let them through to the target), and only
once at least ``MIN_SPAN`` seconds of a phase have passed, so it is never the rate of a first few
milliseconds, and it restarts with each phase.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO, runtime_checkable

from btrsync.units import format_bytes

MIN_SPAN = 1.5  # seconds of a phase before a rate (and an ETA) is shown
ERASE = "\r\x1b[K"
_CALLBACK_PHASES = {"push": "sending", "receive": "receiving", "verify": "verifying"}


@dataclass(frozen=True, slots=True)
class Estimate:
    """The expected size of a transfer in stream bytes, and how it was obtained."""

    bytes: int
    basis: str  # e.g. "btrfs send --no-data", "previous full", "manifest"
    exact: bool = False


@runtime_checkable
class Progress(Protocol):
    def start(self, name: str, estimate: Estimate | None = None, *, index: int = 1, count: int = 1) -> None: ...
    def phase(self, name: str) -> None: ...
    def update(self, raw: int, stored: int) -> None: ...
    def finish(self, ok: bool = True) -> None: ...


ProgressFn = Callable[[str, int, int], None]  # the older form: (name, raw bytes, stored bytes)


class CallbackProgress:
    """A ``Progress`` that calls a ``(name, raw, stored)`` function on every update."""

    def __init__(self, fn: ProgressFn) -> None:
        self.fn = fn
        self.name = ""

    def start(self, name: str, estimate: Estimate | None = None, *, index: int = 1, count: int = 1) -> None:
        self.name = name

    def phase(self, name: str) -> None:
        pass

    def update(self, raw: int, stored: int) -> None:
        self.fn(self.name, raw, stored)

    def finish(self, ok: bool = True) -> None:
        pass


def as_progress(progress: Progress | ProgressFn | None) -> Progress | None:
    """Accept a ``Progress``, an older ``(name, raw, stored)`` callback, or None."""
    if progress is None or isinstance(progress, Progress):
        return progress
    return CallbackProgress(progress)


class Reporter:
    """Renders a ``Progress`` on ``stream``; use as a context manager around the transfer.

    ``tty``: redraw a status line every ``tick`` seconds; otherwise a plain line every
    ``interval`` seconds (0: none at all).  ``kind`` names the command in plain lines ("push");
    ``rate_of`` is the counter whose rate is shown: ``stored`` for a push (what the bandwidth
    limit applies to), ``raw`` for a restore.  Thread-safe: updates may come from any thread.

    ``clock`` (monotonic seconds) times everything shown; ``wait(stop, seconds)`` is the redrawing
    thread's timer (True as soon as ``stop`` is set, False after ``seconds``).  Both default to the
    real ones; a test passes a fake clock whose ``wait`` advances it.
    """

    def __init__(self, stream: TextIO, *, tty: bool, kind: str, interval: float = 30.0,
                 rate_of: str = "stored", tick: float = 0.25, window: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[threading.Event, float], bool] = threading.Event.wait) -> None:
        self.stream, self.tty, self.kind, self.interval = stream, tty, kind, interval
        self.rate_of, self.tick, self.clock, self.wait = rate_of, tick, clock, wait
        # a plain line reports the rate since about the previous line
        self.window = window if tty else max(window, min(interval, 60.0))
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hooked: list[logging.StreamHandler[TextIO]] = []
        self._drawn = False
        self._broken = False
        self._name: str | None = None
        self._estimate: Estimate | None = None
        self._index = self._count = 1
        self._phase = ""
        self._t_start = self._t_phase = self._t_line = 0.0
        self._raw = self._stored = 0
        self._samples: deque[tuple[float, int, int]] = deque()

    # --- lifetime -------------------------------------------------------------------------------

    def __enter__(self) -> Reporter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self.tty:
            self._hook_logging()
        self._thread = threading.Thread(target=self._run, name="btrsync-progress", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop redrawing and leave the cursor at the start of an empty line."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            self._erase()
            self._flush()
        self._unhook_logging()

    # --- Progress -------------------------------------------------------------------------------

    def start(self, name: str, estimate: Estimate | None = None, *, index: int = 1, count: int = 1) -> None:
        with self._lock:
            now = self.clock()
            self._name, self._estimate, self._index, self._count = name, estimate, index, count
            self._raw = self._stored = 0
            self._t_start = self._t_line = now
            self._set_phase("preparing", now)
            if not self.tty and self.interval > 0:
                total = f"; {self._total(estimate)} to {'receive' if self.kind == 'receive' else 'send'}" \
                    if estimate else ""
                basis = f" ({'' if estimate.exact else 'estimate: '}{estimate.basis})" if estimate else ""
                self._write_line(f"{self._who()}: starting{total}{basis}")
            elif self.tty:
                self._draw(now)

    def phase(self, name: str) -> None:
        with self._lock:
            now = self.clock()
            self._set_phase(name, now)
            if self.tty and self._name is not None:
                self._draw(now)

    def update(self, raw: int, stored: int) -> None:
        with self._lock:
            if raw == self._raw and stored == self._stored:
                return
            now = self.clock()
            self._raw, self._stored = raw, stored
            self._samples.append((now, raw, stored))
            self._trim(now)

    def finish(self, ok: bool = True) -> None:
        with self._lock:
            if self._name is None:
                return
            now = self.clock()
            if self.tty:
                self._erase()
            elif self.interval > 0:
                took = now - self._t_start
                if ok:
                    avg = self._stored if self.rate_of == "stored" else self._raw
                    self._write_line(f"{self._who()}: done in {_duration(took)}: {format_bytes(self._raw)}"
                                     + (f", {format_bytes(self._stored)} stored" if self.kind == "push" else "")
                                     + f", average {format_bytes(avg / max(took, 1e-6))}/s")
                else:
                    self._write_line(f"{self._who()}: failed after {_duration(took)} "
                                     f"({format_bytes(self._raw)} done)")
            self._flush()
            self._name = None

    def __call__(self, name: str, raw: int, stored: int) -> None:
        """The older callback form ``(name, raw, stored)``, for callers that only count bytes: a
        new name starts a new transfer (no total) in the phase named after ``kind``."""
        with self._lock:
            if name != self._name:
                self.finish()
                self.start(name)
                self.phase(_CALLBACK_PHASES.get(self.kind, self.kind))
            self.update(raw, stored)

    # --- rendering ------------------------------------------------------------------------------

    def status(self, now: float | None = None, sep: str = "  ") -> str:
        """The current status: phase, share of the total, bytes, rate, ETA, elapsed time."""
        with self._lock:
            now = self.clock() if now is None else now
            est, raw = self._estimate, self._raw
            parts = [self._phase]
            flowing = self._phase not in ("preparing", "committing")
            if est is not None and est.bytes > 0 and flowing:
                pct = min(raw / est.bytes, 1.0 if est.exact else 0.99)  # an estimate may be short
                parts.append(f"{'' if est.exact else '~'}{pct:.0%}")
                parts.append(f"{format_bytes(raw)} of {self._total(est)}")
            elif est is not None and self._phase == "preparing":
                parts.append(f"{self._total(est)} to go")
            else:
                parts.append(format_bytes(raw))
            rates = self._rates(now) if flowing else None
            if rates is not None:
                raw_rate, stored_rate = rates
                shown = stored_rate if self.rate_of == "stored" else raw_rate
                parts.append(f"{format_bytes(shown)}/s" + (" stored" if self.rate_of == "stored" else ""))
                if est is not None and raw_rate > 0 and raw < est.bytes:
                    parts.append(f"ETA ~{_duration((est.bytes - raw) / raw_rate)}")
            parts.append(_clock(now - self._t_start))
            return sep.join(parts)

    def _who(self) -> str:
        where = f" ({self._index}/{self._count})" if self._count > 1 else ""
        return f"btrsync: {self.kind} {self._name}{where}"

    def _total(self, est: Estimate | None) -> str:
        assert est is not None
        return ("" if est.exact else "~") + format_bytes(est.bytes)

    def _set_phase(self, name: str, now: float) -> None:
        self._phase, self._t_phase = name, now
        self._samples.clear()
        self._samples.append((now, self._raw, self._stored))

    def _trim(self, now: float) -> None:
        # keep the newest sample at or before the window's start as the reference
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def _rates(self, now: float) -> tuple[float, float] | None:
        if now - self._t_phase < MIN_SPAN or not self._samples:
            return None
        self._trim(now)
        t0, raw0, stored0 = self._samples[0]
        _, raw1, stored1 = self._samples[-1]
        span = now - t0
        return (raw1 - raw0) / span, (stored1 - stored0) / span

    def _draw(self, now: float) -> None:
        if self._name is None or self._broken:
            return
        where = f" ({self._index}/{self._count})" if self._count > 1 else ""
        line = f"{self.status(now)}  {self._name}{where}"
        width = self._width()
        if len(line) > width - 1:
            line = line[: max(width - 2, 1)] + "…"
        self._write(ERASE + line)
        self._drawn = True

    def _erase(self) -> None:
        if self._drawn:
            self._write(ERASE)
            self._drawn = False

    def _write_line(self, text: str) -> None:
        self._write(text + "\n")
        self._flush()
        self._t_line = self.clock()

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self.stream.write(text)
        except (OSError, ValueError):  # a closed or broken stderr: stop drawing, never fail the transfer
            self._broken = True

    def _flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self._broken = True

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            return 80

    def _run(self) -> None:
        while not self.wait(self._stop, self.tick):
            with self._lock:
                if self._name is None:
                    continue
                now = self.clock()
                if self.tty:
                    self._draw(now)
                    self._flush()
                elif self.interval > 0 and now - self._t_line >= self.interval:
                    self._write_line(f"{self._who()}: {self.status(now, ', ')}")

    # --- log records while a line is drawn ------------------------------------------------------

    def _hook_logging(self) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                handler.setStream(_ErasingStream(self))  # type: ignore[arg-type]
                self._hooked.append(handler)

    def _unhook_logging(self) -> None:
        for handler in self._hooked:
            handler.setStream(self.stream)
        self._hooked.clear()


class _ErasingStream:
    """What a log handler writes to while a status line is drawn: erase it first (the next tick
    redraws it below the record)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def write(self, text: str) -> int:
        with self.reporter._lock:
            self.reporter._erase()
            return self.reporter.stream.write(text)

    def flush(self) -> None:
        self.reporter.stream.flush()


def reporter(kind: str, *, interval: float = 30.0, stream: TextIO | None = None,
             rate_of: str = "stored") -> Reporter | None:
    """A reporter on stderr: a status line on a terminal, a plain line every ``interval`` seconds
    elsewhere; None when there is nothing to show (not a terminal and ``interval`` 0)."""
    stream = stream or sys.stderr
    try:
        tty = stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        tty = False
    if not tty and interval <= 0:
        return None
    return Reporter(stream, tty=tty, kind=kind, interval=interval, rate_of=rate_of)


def terminal_progress(verb: str = "sent") -> Reporter | None:
    """The former entry point, for callers that do not manage a reporter's lifetime: a status line
    on a terminal (redrawn as phases change, erased when a transfer ends), nothing elsewhere.
    Prefer ``reporter`` used as a context manager."""
    kind = "receive" if verb == "received" else "push"
    return reporter(kind, interval=0, rate_of="raw" if kind == "receive" else "stored")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
