"""``btrfs receive`` as a supervised sink: bytes in, a received read-only subvolume out."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from types import TracebackType

from btrsync.btrfs.runner import btrfs_binary
from btrsync.btrfs.send import StderrDrain
from btrsync.btrfs.subvolume import delete_subvolume, is_subvolume, subvolume_info
from btrsync.errors import ReceiveFailedError

log = logging.getLogger(__name__)


class ReceiveProcess:
    """``with ReceiveProcess(into, name) as rx: rx.write(b)``: on any failure the partially
    received subvolume ``into/name`` is deleted and ``ReceiveFailedError`` raised."""

    def __init__(self, into: Path, name: str, what: str) -> None:
        self.into = into
        self.name = name
        self.what = what
        self._proc: subprocess.Popen[bytes] | None = None
        self._drain: StderrDrain | None = None

    @property
    def path(self) -> Path:
        return self.into / self.name

    def __enter__(self) -> ReceiveProcess:
        if self.path.exists():
            raise ReceiveFailedError(f"{self.path} already exists; move it away or receive elsewhere")
        argv = [btrfs_binary(), "receive", str(self.into)]
        log.debug("start %s", " ".join(argv))
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, bufsize=0)
        self._drain = StderrDrain(self._proc.stderr)
        self._drain.start()
        return self

    def write(self, data: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError:
            raise ReceiveFailedError(f"{self.what}: btrfs receive stopped early: {self._stderr()}") from None

    def _stderr(self) -> str:
        assert self._drain is not None
        self._drain.join(timeout=5)
        lines = self._drain.errors() or self._drain.text().splitlines()
        return lines[-1] if lines else "no message"

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._proc is not None
        if exc_type is not None:
            self._proc.kill()
            self._proc.wait()
            self._remove_partial()
            return
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self._proc.wait()
        if rc != 0:
            message = self._stderr()
            self._remove_partial()
            raise ReceiveFailedError(f"{self.what}: btrfs receive failed: {message}; "
                                     f"the partial subvolume was removed")
        info = subvolume_info(self.path)
        if not info.readonly or info.received_uuid is None:
            self._remove_partial()
            raise ReceiveFailedError(f"{self.what}: btrfs receive did not finish {self.path}")

    def _remove_partial(self) -> None:
        if is_subvolume(self.path):
            log.info("removing partially received subvolume %s", self.path)
            delete_subvolume(self.path)
