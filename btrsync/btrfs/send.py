"""``btrfs send`` as a supervised in-process source of fixed-size chunks.

The process's stdout is read directly (no shell, no pipeline); its stderr is drained by a thread so
it can never block, and kept for the error message.  ``SendProcess`` fails the backup if btrfs send
exits non-zero or writes an error, and kills the process if the consumer stops early.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from btrsync.btrfs.runner import btrfs_binary, progs_version
from btrsync.errors import SendFailedError
from btrsync.signals import deferred

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Stream flags; ``proto=2`` + ``compressed_data`` pass compressed extents through unchanged."""

    proto: int = 1
    compressed_data: bool = False

    def argv(self) -> list[str]:
        args = []
        if self.proto >= 2:
            args += ["--proto", str(self.proto)]
            if self.compressed_data:
                args.append("--compressed-data")
        return args

    def as_dict(self) -> dict[str, object]:
        return {"proto": self.proto, "compressed_data": self.compressed_data}


@functools.cache
def best_send_options() -> SendOptions:
    """Protocol 2 with compressed data when both the kernel and btrfs-progs (>= 5.19) support it."""
    try:
        kernel = Path("/sys/fs/btrfs/features/send_stream_version").read_text().strip()
    except OSError:
        kernel = "1"
    try:
        major, minor = (int(x) for x in progs_version().lstrip("v").split(".")[:2])
    except (ValueError, SendFailedError, OSError):
        major, minor = 0, 0
    if kernel.isdigit() and int(kernel) >= 2 and (major, minor) >= (5, 19):
        return SendOptions(proto=2, compressed_data=True)
    return SendOptions()


class StderrDrain(threading.Thread):
    """Collects a process's stderr (last 64 KiB) so it can neither block the process nor be lost."""

    def __init__(self, stream: object) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.tail = b""

    def run(self) -> None:
        for line in self.stream:  # type: ignore[attr-defined]
            self.tail = (self.tail + line)[-65536:]

    def text(self) -> str:
        return self.tail.decode(errors="replace").strip()

    def errors(self) -> list[str]:
        """btrfs-progs' error lines: ``ERROR: …`` (its ``error()`` helper), case-sensitive.  Not any
        line that mentions "error": ``At subvol /mnt/error-logs…`` is how send and receive name the
        subvolume they work on."""
        return [ln for ln in self.text().splitlines() if is_error_line(ln)]


def is_error_line(line: str) -> bool:
    """A line btrfs-progs prints for an error: it starts with ``ERROR:`` or ``ERROR ``."""
    return line.lstrip().startswith(("ERROR:", "ERROR "))


def start_supervised(argv: list[str], **pipes: object) -> tuple[subprocess.Popen[bytes], StderrDrain]:
    """Start a child and the thread draining its stderr.  A signal meanwhile (``btrsync.signals``)
    takes effect once both are set up, and then the child is killed: it never runs unsupervised."""
    proc: subprocess.Popen[bytes] | None = None
    try:
        with deferred():
            proc = subprocess.Popen(argv, stderr=subprocess.PIPE, bufsize=0, **pipes)  # type: ignore[call-overload]
            drain = StderrDrain(proc.stderr)
            drain.start()
    except BaseException:
        if proc is not None:
            proc.kill()
            proc.wait()
        raise
    return proc, drain


class SendProcess:
    """``with SendProcess(snapshot, parent) as send: for chunk in send.chunks(size): ...``"""

    def __init__(self, snapshot: Path, parent: Path | None, options: SendOptions) -> None:
        self.snapshot = snapshot
        self.parent = parent
        self.options = options
        self.bytes_read = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._drain: StderrDrain | None = None

    def argv(self) -> list[str]:
        argv = [btrfs_binary(), "send", *self.options.argv()]
        if self.parent is not None:
            argv += ["-p", str(self.parent)]
        return [*argv, str(self.snapshot)]

    def __enter__(self) -> SendProcess:
        log.debug("start %s", " ".join(self.argv()))
        self._proc, self._drain = start_supervised(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        return self

    def chunks(self, size: int) -> Iterator[bytes]:
        """Yield the stream in pieces of exactly ``size`` bytes (the last may be shorter)."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = bytearray(size)
        view = memoryview(buf)
        while True:
            filled = 0
            while filled < size:
                n = os.readv(fd, [view[filled:]])
                if n == 0:
                    break
                filled += n
            if filled:
                self.bytes_read += filled
                yield bytes(view[:filled])
            if filled < size:
                return

    def stop(self) -> None:
        """End ``btrfs send`` now, from any thread (its reader then sees the stream end)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def ended(self) -> None:
        """Once the stream was read to its end: wait for ``btrfs send`` to exit and raise its own
        error (exit status, ``ERROR:`` lines) if it failed, before anyone judges the stream: a
        send that failed half-way leaves a stream without END, and what btrfs said is the
        diagnosis.  ``__exit__`` checks again, to the same result."""
        assert self._proc is not None and self._drain is not None
        rc = self._proc.wait()
        self._drain.join(timeout=10)  # its stderr, to the end
        self.check(rc)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._proc is not None and self._drain is not None
        if exc_type is not None and self._proc.poll() is None:
            self._proc.kill()
        try:
            rc = self._proc.wait()
        except BaseException:  # a signal (btrsync.signals) while waiting: never leave it running
            self._proc.kill()
            self._proc.wait()
            raise
        finally:
            self._drain.join(timeout=10)
            if self._proc.stdout:
                self._proc.stdout.close()
        if exc_type is None:
            self.check(rc)

    def check(self, rc: int) -> None:
        what = f"btrfs send of {self.snapshot}" + (f" (parent {self.parent})" if self.parent else "")
        assert self._drain is not None
        errors = self._drain.errors()
        if rc != 0 or errors:
            detail = (errors or self._drain.text().splitlines() or [f"exit status {rc}"])[-1]
            raise SendFailedError(f"{what} failed: {detail}; nothing was committed for this backup")
