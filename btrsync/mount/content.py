"""File contents of the mount: rebuilt on first read into a bounded on-disk cache.

A file is rebuilt by the selective restore (``restore/selective.py``): its data commands and those
of its clone sources, replayed from only the chunks that hold them, each chunk fetched,
authenticated and hash-checked through the one read path (``read/chunks.RangeReader``).  So
reading one file through the mount fetches what ``btrsync restore BACKUP PATH`` fetches for it.
The result is a plain sparse file in the cache directory (holes stay holes, so ``SEEK_HOLE``
answers from it), read with ``pread``.

The cache holds at most ``limit`` bytes (allocated blocks) of files nobody has open; the least
recently used go first.  An open file stays until closed, so one file larger than the limit is
still readable (and goes when closed).  Two readers of one file wait for one rebuild.  A file
whose data is damaged (a chunk fails its tag or hash, its segment is missing) is remembered as
damaged: every read of it fails with EIO, and the rest of the mount reads on.  A target failure
is not remembered (the next read tries again).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from btrsync.catalog.repository import Repository
from btrsync.errors import BtrsyncError, DamageError
from btrsync.fdio import pwrite_all
from btrsync.fileindex.tree import FileTree, Inode
from btrsync.mount.namespace import Backup
from btrsync.catalog.reach import away, removed
from btrsync.restore import place
from btrsync.restore.meta import Notes
from btrsync.restore.paths import DIR_FLAGS
from btrsync.restore.selective import SelectiveRestore

log = logging.getLogger(__name__)

WINDOW = 16 * 1024 * 1024  # a file larger than this, without clones, is rebuilt by windows as it is read
SEQUENTIAL = 4  # windows rebuilt at once when a read goes on from the window before


def windowed(inode: Inode, window: int) -> bool:
    """Whether ``inode`` is rebuilt window by window: larger than one, and no clone (whose source
    ranges would need their own rebuild) among its data commands."""
    return inode.size > window and not any(op[2] == "c" for op in inode.ops or ())


def _by_window(ops: list[tuple], window: int, size: int) -> dict[int, list[int]]:
    """For each window of a file, the positions (in stream order) of the data commands that may
    change its bytes: those whose range meets it, and every truncate."""
    last = max(0, (size - 1) // window)
    out: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        kind = op[2]
        if kind == "w":
            start, end = op[7], op[7] + op[6]
        elif kind == "e":
            start, end = op[7], op[7] + op[11]
        elif kind == "a":
            start, end = op[4], op[4] + op[5]
        else:  # a truncate (no clones here): every window
            start, end = 0, (last + 1) * window
        if end <= start:
            continue
        for k in range(start // window, min((end - 1) // window, last) + 1):
            out.setdefault(k, []).append(i)
    return out


@dataclass
class FetchStats:
    """What the mount has read from the target for file contents."""

    files: int = 0  # files rebuilt
    chunks: int = 0
    stored_bytes: int = 0  # stored (frame) bytes of the chunks fetched
    damaged: int = 0  # files found damaged


@dataclass
class _Cached:
    name: str
    blocks: int  # allocated bytes
    users: int = 0
    windows: set[int] | None = None  # a file rebuilt window by window: those done (None: whole)
    by_window: dict[int, list[int]] | None = None  # window -> positions of the commands touching it
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Build:
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class ContentCache:
    """Rebuilt files in ``cache_fd`` (a private directory), at most ``limit`` bytes unused."""

    def __init__(self, repo: Repository, cache_fd: int, limit: int, *, workers: int = 2,
                 window: int = WINDOW) -> None:
        self.repo, self.cache_fd, self.limit, self.workers, self.window = repo, cache_fd, limit, workers, window
        self.stats = FetchStats()
        self._lock = threading.Lock()
        self._files: OrderedDict[int, _Cached] = OrderedDict()
        self._building: dict[int, _Build] = {}
        self._damaged: dict[int, str] = {}
        self._seq = itertools.count()

    @property
    def used(self) -> int:
        with self._lock:
            return sum(c.blocks for c in self._files.values())

    def acquire(self, ino: int, backup: Backup, tree: FileTree, inode: Inode) -> int:
        """A read-only descriptor of the file's content, rebuilt first when not cached; the file
        stays cached until ``release``.  ``OSError(EIO)`` when its data is damaged or unreadable."""
        while True:
            with self._lock:
                if ino in self._damaged:
                    raise OSError(errno.EIO, self._damaged[ino])
                cached = self._files.get(ino)
                if cached is not None:
                    cached.users += 1
                    self._files.move_to_end(ino)
                    break
                build = self._building.get(ino)
                mine = build is None
                if mine:
                    build = self._building[ino] = _Build()
            assert build is not None
            if not mine:
                build.done.wait()
                if build.error is not None:
                    raise OSError(errno.EIO, str(build.error))
                continue
            try:
                cached = self._build(ino, backup, tree, inode)
            except BaseException as exc:
                build.error = exc
                raise
            finally:
                with self._lock:
                    del self._building[ino]
                    if build.error is None:
                        self._files[ino] = cached
                        cached.users += 1
                build.done.set()
            self._evict()
            break
        try:
            return os.open(cached.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.cache_fd)
        except BaseException:
            self.release(ino)
            raise

    def fill(self, ino: int, backup: Backup, tree: FileTree, inode: Inode, offset: int, length: int) -> None:
        """Make bytes ``offset .. offset + length - 1`` of an acquired file present (a file rebuilt
        by windows gets the windows under them; a whole one has them all)."""
        with self._lock:
            cached = self._files.get(ino)
            damage = self._damaged.get(ino)
        if damage is not None:
            raise OSError(errno.EIO, damage)
        if cached is None or cached.windows is None or length <= 0:
            return
        end = min(offset + length, inode.size)
        last = (inode.size - 1) // self.window
        for k in range(offset // self.window, -(-end // self.window) if end > offset else offset // self.window):
            with cached.lock:
                if k in cached.windows:
                    continue
                # read on from the window before: the next ones too, in one rebuild (adjacent windows
                # share the chunks at their edges, which one rebuild fetches once)
                upto = k + 1
                if k - 1 in cached.windows:
                    while upto < min(k + SEQUENTIAL, last + 1) and upto not in cached.windows:
                        upto += 1
                lo, hi = k * self.window, min(upto * self.window, inode.size)
                if cached.by_window is None:
                    cached.by_window = _by_window(inode.ops or [], self.window, inode.size)
                ops = inode.ops or []
                chosen = sorted({i for w in range(k, upto) for i in cached.by_window.get(w, ())})
                view = Inode("f", inode.ino, size=inode.size, ops=[ops[i] for i in chosen])
                self._rebuilt(ino, backup, tree, view, lambda data_fd, name, lo=lo, hi=hi: self._copy_in(
                    data_fd, name, cached.name, lo, hi))
                if not cached.windows:
                    with self._lock:
                        self.stats.files += 1
                cached.windows.update(range(k, upto))
                blocks = os.stat(cached.name, dir_fd=self.cache_fd).st_blocks * 512
            with self._lock:
                cached.blocks = blocks
        self._evict()

    def _copy_in(self, data_fd: int, scratch: str, name: str, lo: int, hi: int) -> None:
        """The data of ``[lo, hi)`` of a scratch file into the cached file; holes stay holes."""
        src = os.open(scratch, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=data_fd)
        dst = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.cache_fd)
        try:
            at = lo
            hi = min(hi, os.fstat(src).st_size)
            while at < hi:
                try:
                    start = os.lseek(src, at, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break
                    raise
                if start >= hi:
                    break
                stop = min(os.lseek(src, start, os.SEEK_HOLE), hi)
                while start < stop:
                    piece = os.pread(src, min(stop - start, 1 << 20), start)
                    if not piece:
                        raise OSError(errno.EIO, "the rebuilt file ended early")
                    pwrite_all(dst, piece, start)
                    start += len(piece)
                at = stop
        finally:
            os.close(src)
            os.close(dst)

    def is_windowed(self, ino: int) -> bool:
        with self._lock:
            cached = self._files.get(ino)
        return cached is not None and cached.windows is not None

    def release(self, ino: int) -> None:
        with self._lock:
            cached = self._files.get(ino)
            if cached is not None:
                cached.users -= 1
        self._evict()

    def _evict(self) -> None:
        gone: list[str] = []
        with self._lock:
            total = sum(c.blocks for c in self._files.values())
            for ino in list(self._files):
                if total <= self.limit:
                    break
                cached = self._files[ino]
                if cached.users > 0:
                    continue
                del self._files[ino]
                total -= cached.blocks
                gone.append(cached.name)
        for name in gone:
            try:
                os.unlink(name, dir_fd=self.cache_fd)
            except FileNotFoundError:
                pass

    def _build(self, ino: int, backup: Backup, tree: FileTree, inode: Inode) -> _Cached:
        name = f"f{ino:x}"
        if windowed(inode, self.window):  # an empty file of its size; windows are rebuilt as they are read
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.cache_fd)
            try:
                os.ftruncate(fd, inode.size)
            finally:
                os.close(fd)
            return _Cached(name, 0, windows=set())

        def keep(data_fd: int, scratch: str) -> None:  # the scratch file becomes the cached file
            os.rename(scratch, name, src_dir_fd=data_fd, dst_dir_fd=self.cache_fd)

        self._rebuilt(ino, backup, tree, inode, keep)
        with self._lock:
            self.stats.files += 1
        return _Cached(name, os.stat(name, dir_fd=self.cache_fd).st_blocks * 512)

    def _rebuilt(self, ino: int, backup: Backup, tree: FileTree, inode: Inode,
                 use: Callable[[int, str], None]) -> None:
        """Rebuild ``inode`` (its data commands, and its clone sources') in a work directory by the
        selective restore, hand its scratch file to ``use``, remove the rest."""
        work = f".w{next(self._seq)}"
        os.mkdir(work, 0o700, dir_fd=self.cache_fd)
        try:
            wfd = os.open(work, DIR_FLAGS, dir_fd=self.cache_fd)
            # only rebuild() is used, which needs no destination tree
            sel = SelectiveRestore(self.repo, backup.chain, tree, None, wfd, Notes(),  # type: ignore[arg-type]
                                   workers=self.workers)
            try:
                try:
                    sel.rebuild([inode])
                finally:
                    with self._lock:
                        self.stats.chunks += sel.fetched.chunks
                        self.stats.stored_bytes += sel.fetched.stored_bytes
                use(*sel.rebuilt(inode))  # the scratch file the rebuild made for the inode
            finally:
                sel.close()
                os.close(wfd)
        except DamageError as exc:
            gone = away(self.repo)
            if gone is not None:  # a missing segment of a repository that is away is not damage
                log.error("backup %s: cannot read a file's data: %s", backup.manifest.backup_id, gone)
                raise OSError(errno.EIO, gone) from None
            gone = removed(self.repo, backup.manifest.backup_id)
            message = gone or f"backup {backup.manifest.backup_id}: a file's data is damaged: {exc}"
            with self._lock:
                self._damaged[ino] = message
                self.stats.damaged += 1
            log.error("%s (reads of it fail with EIO; %s)", message,
                      "unmount and mount again to see the repository as it is now" if gone else
                      "'btrsync verify' tells what else is affected")
            raise OSError(errno.EIO, message) from None
        except BtrsyncError as exc:
            log.error("backup %s: cannot read a file's data: %s", backup.manifest.backup_id, exc)
            raise OSError(errno.EIO, str(exc)) from None
        finally:
            place.remove_tree(self.cache_fd, work)
