"""``btrfs receive`` as a supervised sink: bytes in, a received read-only subvolume on disk out."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from types import TracebackType

from btrsync.btrfs.runner import btrfs_binary
from btrsync.btrfs.send import StderrDrain, start_supervised
from btrsync.btrfs.subvolume import child_subvolumes, delete_subvolume, is_subvolume, subvolume_info
from btrsync.errors import BtrfsError, ReceiveFailedError, ReceiveNotDurableError
from btrsync.fdio import syncfs, write_all
from btrsync.signals import deferred

log = logging.getLogger(__name__)


class ReceiveProcess:
    """``with ReceiveProcess(into, name) as rx: rx.write(b)``: on any failure (a signal included)
    btrfs receive is killed, the partially received subvolume ``into/name`` is deleted and
    ``ReceiveFailedError`` raised (or the signal's exception passed on).

    The subvolume counts as received only once it is on disk: ``btrfs receive`` exits 0 with what
    it wrote still in the page cache, so the exit ``syncfs``es ``into`` through a descriptor opened
    before btrfs receive started (errseq: it reports every writeback error since), and on an error
    deletes the subvolume and raises ``ReceiveNotDurableError`` (a rerun would otherwise skip it
    as received, and it could serve as a parent).

    ``parent_uuid`` is the received uuid of the stream's parent (None for a full stream): with it,
    a partial receive of this very stream that a killed run left at ``into/name`` is recognised
    and replaced; anything else there is refused.
    """

    def __init__(self, into: Path, name: str, what: str, *, parent_uuid: str | None = None) -> None:
        self.into = into
        self.name = name
        self.what = what
        self.parent_uuid = parent_uuid
        self._proc: subprocess.Popen[bytes] | None = None
        self._drain: StderrDrain | None = None
        self._delivered = False  # the whole stream was handed over (stdin closed)
        self._into_fd: int | None = None

    @property
    def path(self) -> Path:
        return self.into / self.name

    def __enter__(self) -> ReceiveProcess:
        if os.path.lexists(self.path):
            self._replace_own_leftover()
        # --chroot: btrfs receive works by path names and follows symlinks, and hands a directory to
        # its owner before filling it; a user whose uid owns one in the backup could swap part of it
        # for a symlink while it is received. Confined to `into`, root's writes cannot leave it.
        argv = [btrfs_binary(), "receive", "--chroot", str(self.into)]
        # opened before btrfs receive writes anything: syncfs reports the writeback errors since then
        self._into_fd = os.open(self.into, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        log.debug("start %s", " ".join(argv))
        try:
            self._proc, self._drain = start_supervised(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        except BaseException:
            self._close_into()
            raise
        return self

    def write(self, data: bytes) -> None:
        """Hand ``data`` to btrfs receive, all of it: a write to a pipe returns short when a stop
        (Ctrl-Z, ``kill -STOP``, a cgroup freeze, a debugger attaching) interrupts it part-way."""
        assert self._proc is not None and self._proc.stdin is not None
        try:
            write_all(self._proc.stdin.fileno(), data)
        except BrokenPipeError:
            raise ReceiveFailedError(f"{self.what}: btrfs receive stopped early: {self._stderr()}") from None

    def _stderr(self) -> str:
        assert self._drain is not None
        self._drain.join(timeout=5)
        lines = self._drain.errors() or self._drain.text().splitlines()
        return lines[-1] if lines else "no message"

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._finish(exc_type)
        finally:
            self._close_into()

    def _close_into(self) -> None:
        if self._into_fd is not None:
            os.close(self._into_fd)
            self._into_fd = None

    def _finish(self, exc_type: type[BaseException] | None) -> None:
        assert self._proc is not None
        if exc_type is not None:
            self._abort()
            return
        try:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._delivered = True
            except BrokenPipeError:
                pass
            rc = self._proc.wait()
        except BaseException:  # a signal (btrsync.signals) while btrfs receive finishes
            self._abort()
            raise
        if rc != 0:
            message = self._stderr()
            raise ReceiveFailedError(f"{self.what}: btrfs receive failed: {message}; {self._remove_partial()}")
        # not cut in half by a signal: one landing in syncfs would skip its error check and leave a
        # subvolume that looks received but is not on disk (a rerun would skip it, use it as a parent)
        with deferred():
            info = subvolume_info(self.path)
            if not info.readonly or info.received_uuid is None:
                raise ReceiveFailedError(f"{self.what}: btrfs receive did not finish {self.path}; "
                                         f"{self._remove_partial()}")
            self._make_durable()

    def _make_durable(self) -> None:
        """Write out what btrfs receive left in the page cache; if the filesystem cannot, the
        subvolume is deleted and ``ReceiveNotDurableError`` raised."""
        assert self._into_fd is not None
        try:
            syncfs(self._into_fd)
        except OSError as exc:
            raise ReceiveNotDurableError(
                f"{self.what}: btrfs receive finished, but {self.into} could not write it to disk ({exc.strerror}); "
                f"{self._remove_partial()}; check the disk (and the filesystem holding it, for a loop device) and the kernel log, "
                "then receive again") from None

    def _abort(self) -> None:
        """Stop btrfs receive and wait for it; delete what it created unless it had finished the
        whole stream on its own and that is on disk (then the subvolume is complete and a rerun
        skips it).  A signal can land right after btrfs receive exited 0, before the check that
        its data reached the disk: a subvolume kept then without it would look received."""
        assert self._proc is not None
        finished = self._delivered and self._proc.poll() == 0
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        if finished and self._complete():
            try:
                if self._into_fd is not None:
                    syncfs(self._into_fd)
                return
            except OSError as exc:
                log.warning("%s: btrfs receive finished, but %s could not write it to disk (%s)",
                            self.what, self.into, exc.strerror)
        self._remove_partial()

    def _complete(self) -> bool:
        try:
            info = subvolume_info(self.path)
        except BtrfsError:
            return False
        return info.readonly and info.received_uuid is not None

    def _remove_partial(self) -> str:
        """Delete what btrfs receive created; says what became of it.  Never raises: the failure
        that led here (often the same full or failing disk) is the one to report, and a partial
        subvolume left behind is named with what to do (it must never serve as a parent)."""
        if not is_subvolume(self.path):
            return "no partial subvolume was left"
        log.info("removing partially received subvolume %s", self.path)
        try:
            delete_subvolume(self.path)
        except BtrfsError as exc:
            left = (f"the partial subvolume could not be removed ({exc}): delete {self.path} yourself "
                    "before receiving again, it must not serve as a parent")
            log.warning("%s: %s", self.what, left)
            return left
        return "the partial subvolume was removed"

    def _replace_own_leftover(self) -> None:
        """``into/name`` exists.  A partial receive of this stream that a killed run left there
        (writable, no received uuid, created as this stream creates it: a new subvolume for a
        full, a snapshot of the parent link for an incremental) is removed; anything else is
        refused, untouched."""
        path = self.path
        move = "move it away or receive elsewhere"
        if path.is_symlink() or not is_subvolume(path):
            raise ReceiveFailedError(f"{path} already exists and is not a subvolume; {move}")
        info = subvolume_info(path)
        if info.readonly:
            origin = (f"received from another stream (received uuid {info.received_uuid})"
                      if info.received_uuid else "not received")
            raise ReceiveFailedError(f"{path} already exists as a read-only subvolume {origin}; {move}")
        if info.received_uuid is not None:
            raise ReceiveFailedError(f"{path} already exists as a writable subvolume with received uuid "
                                     f"{info.received_uuid} (a received subvolume made writable?); {move}")
        if self.parent_uuid is None:
            expected, wanted = None, "a new subvolume"
        else:
            parents = [sub.uuid for sub in child_subvolumes(self.into) if sub.received_uuid == self.parent_uuid]
            expected = parents[0] if parents else None
            wanted = (f"a snapshot of the parent link {expected}" if expected else
                      f"a snapshot of the subvolume received as {self.parent_uuid}, which is not in {self.into}")
        if info.parent_uuid != expected or (self.parent_uuid is not None and expected is None):
            actual = f"a snapshot of {info.parent_uuid}" if info.parent_uuid else "a new subvolume"
            raise ReceiveFailedError(f"{path} already exists as a writable subvolume, {actual}, not a partial "
                                     f"receive of this backup (that would be {wanted}); {move}")
        log.warning("removing %s: a partial receive of %s left by an interrupted run; receiving it again",
                    path, self.name)
        delete_subvolume(path)
