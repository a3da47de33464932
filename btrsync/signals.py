"""SIGTERM, SIGHUP and SIGINT become an exception in the main thread, so every ``with`` and
``finally`` of the command runs: ``btrfs send``/``btrfs receive`` are killed and waited for,
unfinished uploads fail through their parts iterator (temporary file, spool file or multipart
upload removed), a partially received subvolume is deleted, the upload lease is released.

Only the first signal starts that cleanup.  Any signal of these three that arrives while it runs
is noted on stderr once and otherwise ignored, so a second Ctrl-C or a repeated ``kill`` cannot
cut the cleanup short halfway (leaving, say, a killed ``btrfs receive`` whose partial subvolume
is never removed).  SIGKILL still stops the process at once; what it leaves is what a crash
leaves (temporaries, a stale lease, a partial subvolume), which the next run of the same command
or ``btrsync clean`` removes.  A signal ignored when btrsync starts (``nohup``, a background job)
stays ignored.

The exit status is 128 + the signal number, as a shell reports a process killed by it: 129 for
SIGHUP, 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
WORKER_GRACE = 30.0  # seconds threads get after the cleanup before the process exits without them

_WORDS = {signal.SIGHUP: "hung up", signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class Terminated(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error of btrsync
    """Raised in the main thread by the first SIGTERM, SIGHUP or SIGINT.

    A ``BaseException``: ``except Exception`` (or ``except BtrsyncError``) never swallows it, and
    every cleanup that runs for ``KeyboardInterrupt`` runs for it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        """``terminated (SIGTERM)``, ``hung up (SIGHUP)``, ``interrupted (SIGINT)``."""
        return f"{_WORDS.get(signal.Signals(self.signum), 'stopped')} ({self.name})"


class _Handler:
    def __init__(self) -> None:
        self.first: int | None = None
        self.noted = False
        self.deferring = 0
        self.pending: int | None = None
        self.keep_installed = False  # see end_after_cleanup

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.first is None:
            self.first = signum
            if self.deferring:
                self.pending = signum  # raised when the step that must not be cut in half is done
                return
            raise Terminated(signum)
        if not self.noted:
            self.noted = True
            first, now = signal.Signals(self.first).name, signal.Signals(signum).name
            _say(f"btrsync: still cleaning up after {first}; {now} ignored until that is done "
                 "(SIGKILL stops at once and leaves temporaries for the next run or 'btrsync clean')")


def _say(line: str) -> None:
    # os.write, not sys.stderr: a handler may run while the main thread is inside a stderr write
    try:
        os.write(2, line.encode(errors="replace") + b"\n")
    except OSError:
        pass


_active: _Handler | None = None


@contextmanager
def deferred() -> Iterator[None]:
    """A step that must not be cut in half (starting a child process and keeping its handle):
    a signal that arrives within the block raises ``Terminated`` when the block ends."""
    handler = _active
    if handler is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    handler.deferring += 1
    try:
        yield
    finally:
        handler.deferring -= 1
        if not handler.deferring and handler.pending is not None:
            signum, handler.pending = handler.pending, None
            raise Terminated(signum)


def end_after_cleanup(code: int, timeout: float = WORKER_GRACE) -> None:
    """For the ``btrsync`` process itself, after a signal's cleanup: keep ignoring further signals
    while the interpreter exits (it still joins worker threads: a put removing its temporary, a
    worker finishing its item), and if it has not exited ``timeout`` seconds later, end it with
    ``code`` without them, so no worker thread keeps btrsync alive."""
    if _active is not None:
        _active.keep_installed = True

    def watchdog() -> None:
        time.sleep(timeout)
        busy = [t.name for t in threading.enumerate() if not t.daemon and t.is_alive()
                and t is not threading.main_thread()]
        _say(f"btrsync: still not finished {timeout:.0f} s after the cleanup (busy: "
             f"{', '.join(busy) or 'interpreter exit'}); exiting without waiting any longer")
        os._exit(code)

    threading.Thread(target=watchdog, name="btrsync-exit-watchdog", daemon=True).start()


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, the first SIGTERM/SIGHUP/SIGINT raises ``Terminated`` in the main thread;
    later ones are noted and ignored.  Outside the main thread this does nothing (Python runs
    signal handlers only there).  The previous handlers come back at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _active
    handler = _Handler()
    previous: dict[int, object] = {}
    outer, _active = _active, handler
    try:
        for sig in HANDLED:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # nohup, or a background job of a script: the user asked to ignore it
            previous[sig] = signal.signal(sig, handler)
        yield
    finally:
        _active = outer
        if not handler.keep_installed:
            for sig, old in previous.items():
                signal.signal(sig, signal.SIG_DFL if old is None else old)  # type: ignore[arg-type]
