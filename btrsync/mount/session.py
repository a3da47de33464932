"""One foreground mount: the mount point checked, the filesystem served, and unmounted at the end.

libfuse runs in a thread of its own, so the main thread keeps Python's signal handling: the
first SIGINT, SIGTERM or SIGHUP raises ``Terminated`` there (``btrsync.signals``), and on the way
out the mount is unmounted (``fusermount3 -u``; a busy mount, a shell whose working directory is
in it, is detached lazily and its connection aborted, so nothing is left mounted), the server
thread joined and the private cache directory removed.  libfuse installs no signal handlers of
its own (it only does where a signal is at its default), and mfusepy's SIGINT juggling is a
no-op outside the main thread.  A mount the operator unmounts (``fusermount3 -u MOUNTPOINT``)
ends the command with status 0.

A killed server (SIGKILL, OOM) leaves a mount point whose every access fails with ENOTCONN
until ``fusermount3 -u MOUNTPOINT``; the next ``btrsync mount`` there says so, and removes the
cache directory the killed one left.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from btrsync.catalog.repository import Repository
from btrsync.errors import BtrsyncError, UsageError
from btrsync.mount.content import WINDOW, ContentCache, FetchStats
from btrsync.mount.fs import fuse_class, load_binding, operations
from btrsync.mount.namespace import KEEP_TREES, LoadTree, Namespace
from btrsync.mountinfo import mount_points
from btrsync.procs import boot_id, pid_alive
from btrsync.restore import place
from btrsync.restore.paths import DIR_FLAGS

log = logging.getLogger(__name__)

SESSION_PREFIX = "session-"
MAX_THREADS = 16  # threads libfuse answers the kernel with (a read waiting for its chunks holds one)
UNMOUNT_WAIT = 10.0  # seconds for the server thread to end after an unmount, before its connection is aborted


class MountError(BtrsyncError):
    """libfuse could not mount, or the server failed."""


@dataclass
class MountOptions:
    cache_root: Path  # sessions' private cache directories are made in it
    cache_size: int
    allow_non_empty: bool = False
    allow_other: bool = False
    workers: int = 2
    keep_trees: int = KEEP_TREES
    window: int = WINDOW  # files larger than this (without clones) are rebuilt a window at a time


@dataclass
class Mounted:
    """What ``on_ready`` is told, and ``serve`` returns."""

    mountpoint: Path
    backups: int
    skipped: list[str]
    fetched: FetchStats
    index_bytes: int = 0  # stored bytes of file indexes read


def check_mountpoint(path: Path, *, allow_non_empty: bool) -> Path:
    """The mount point as an absolute path, or ``UsageError`` saying what is wrong with it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"mount point {path} does not exist: create it first (mkdir -p {path})") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UsageError(f"{path} is a FUSE mount whose server is gone (a killed 'btrsync mount'?): unmount "
                             f"it with 'fusermount3 -u {path}' (or 'umount {path}' as root), then mount again") from None
        raise UsageError(f"mount point {path}: {exc.strerror}") from None
    if not os.path.isdir(path) or not (st.st_mode & 0o170000 == 0o040000):
        raise UsageError(f"mount point {path} is not a directory")
    real = os.path.realpath(path)
    try:
        entries = os.listdir(path)
    except OSError as exc:  # its attributes may still be in the kernel's cache: listing asks the server
        if exc.errno == errno.ENOTCONN:
            raise UsageError(f"{path} is a FUSE mount whose server is gone (a killed 'btrsync mount'?): unmount "
                             f"it with 'fusermount3 -u {path}' (or 'umount {path}' as root), then mount again") from None
        raise UsageError(f"mount point {path}: {exc.strerror}") from None
    if real in mount_points():
        raise UsageError(f"something is mounted at {path} already ('findmnt {path}' says what); unmount it or "
                         "choose another directory")
    if entries and not allow_non_empty:
        raise UsageError(f"{path} is not empty ({len(entries)} entries): the mount would hide them; choose an empty "
                         "directory, or pass --allow-non-empty to mount over them anyway")
    return Path(real)


def fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def unmount(mountpoint: Path) -> str:
    """Unmount: ``"done"``, ``"detached"`` (it was busy: detached lazily, the server still has
    the processes that hold it) or ``"failed"``."""
    tool = fusermount()
    for lazy in (False, True):
        if tool is not None:
            argv = [tool, "-u", *(["-z"] if lazy else []), str(mountpoint)]
        else:
            argv = ["umount", *(["-l"] if lazy else []), str(mountpoint)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            if lazy:
                log.warning("%s was busy (a process has a file or its working directory in it): detached it; "
                            "those processes now get errors from it", mountpoint)
            return "detached" if lazy else "done"
        log.debug("%s: %s", " ".join(argv), done.stderr.strip())
    return "failed" if str(mountpoint) in mount_points() else "done"


def _abort_connection(dev: int) -> None:
    """End a FUSE connection whose server thread does not finish (fusectl, root only)."""
    path = f"/sys/fs/fuse/connections/{os.minor(dev)}/abort"
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError as exc:
        log.warning("cannot abort the FUSE connection (%s): %s", path, exc.strerror)


def _session_dir(root: Path) -> tuple[Path, int]:
    """A fresh private cache directory below ``root``; those of dead sessions are removed first."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_fd = os.open(root, DIR_FLAGS)
    me = _session_owner()
    try:
        for name in os.listdir(root_fd):
            if _session_dead(name, me):
                log.info("removing the cache a killed mount left: %s", root / name)
                place.remove_tree(root_fd, name)
    finally:
        os.close(root_fd)
    pid, here, boot = me
    path = Path(tempfile.mkdtemp(prefix=f"{SESSION_PREFIX}{pid}-{here}-{boot}-", dir=root))  # 0700
    return path, os.open(path, DIR_FLAGS)


def _session_owner() -> tuple[int, str, str]:
    """This process as a session directory names it: pid, place and boot.  A pid means something
    only in its own pid namespace on its own machine, during one boot: the place is a hash of the
    machine (``/etc/machine-id``, else the host name: a rename keeps it) and the pid namespace (a
    container sharing the cache directory and the host name is another place); the boot is
    ``noboot`` where it cannot be read (e.g. ``ProcSubset=pid``)."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    here = hashlib.sha256(f"{machine or socket.gethostname()}:{pidns}".encode()).hexdigest()[:8]
    return os.getpid(), here, (boot_id().replace("-", "") or "noboot")[:8]


def _session_dead(name: str, me: tuple[int, str, str]) -> bool:
    """Whether the session directory ``name`` belongs to a mount that has ended: one of this
    machine and pid namespace whose boot has ended, or whose process is gone.  Another place's
    sessions (a cache directory on a shared disk, another container) are never judged here; where
    either boot is unknown, the pid alone decides.  Names from before the place and boot were
    recorded (``session-PID-XXXXXXXX``) are judged by the pid alone."""
    if not name.startswith(SESSION_PREFIX):
        return False
    parts = name[len(SESSION_PREFIX):].split("-")
    try:
        pid = int(parts[0])
    except ValueError:
        return False
    if len(parts) >= 4:
        where, boot = parts[1], parts[2]
        if where != me[1]:
            return False
        if boot != me[2] and "noboot" not in (boot, me[2]):
            return True
    return pid != me[0] and not pid_alive(pid)


def _local_root(target: object) -> Path | None:
    """The directory of a directory target (through its wrappers), else None."""
    while hasattr(target, "unwrap"):
        inner = target.unwrap()
        if inner is target:
            break
        target = inner
    root = getattr(target, "root", None)
    return Path(os.path.realpath(root)) if isinstance(root, str | Path) else None


def serve(repo: Repository, mountpoint: Path, load_tree: LoadTree, options: MountOptions,
          on_ready: Callable[[Mounted], None] | None = None) -> Mounted:
    """Mount every backup of ``repo`` at ``mountpoint`` and serve it until it is unmounted (returns)
    or a signal arrives (``Terminated`` propagates, after the unmount)."""
    mountpoint = check_mountpoint(mountpoint, allow_non_empty=options.allow_non_empty)
    root = _local_root(repo.target)
    if root is not None and (mountpoint == root or root in mountpoint.parents):
        raise UsageError(f"{mountpoint} is inside the repository it would show ({root}): a listing of the "
                         "repository (clean, verify) would walk into the mount; choose a directory outside it")
    cache_root = Path(os.path.realpath(options.cache_root))
    if root is not None and (cache_root == root or root in cache_root.parents):
        raise UsageError(f"--cache-dir {options.cache_root} is inside the repository ({root}): the cache holds "
                         "plaintext of the backups, which must not go onto the repository's disk (and a killed "
                         "mount would leave it there); choose a directory outside it")
    try:
        binding = load_binding()
    except (ImportError, OSError) as exc:
        raise MountError(f"cannot load the FUSE binding: {exc}; install libfuse3 (Debian: fuse3) and the "
                         "'mount' extra of btrsync (pip install 'btrsync[mount]')") from None
    ns = Namespace(repo, repo.catalog(ahead=True), load_tree, keep_trees=options.keep_trees)
    for line in ns.skipped:
        log.warning("not shown: %s", line)
    cache_dir, cache_fd = _session_dir(options.cache_root)
    cache = ContentCache(repo, cache_fd, options.cache_size, workers=options.workers, window=options.window)
    result = Mounted(mountpoint, len(ns.backups), ns.skipped, cache.stats)
    ready = threading.Event()
    ended = threading.Event()  # not Thread.is_alive(): a join() cut short by a signal can leave it False
    failure: list[BaseException] = []
    ops = operations(binding, ns, cache)
    ops.init = lambda path: ready.set()  # the kernel has the mount: requests may come
    fuse_options: dict[str, object] = {"foreground": True, "ro": True, "default_permissions": True,
                                       "fsname": "btrsync", "subtype": "btrsync", "use_ino": True,
                                       "kernel_cache": True, "attr_timeout": 60, "entry_timeout": 60}
    if (binding.fuse_version_major, binding.fuse_version_minor) >= (3, 12):
        fuse_options["max_threads"] = MAX_THREADS  # unset, libfuse 3.14 warns about its own default
    if options.allow_other:
        fuse_options["allow_other"] = True
    if options.allow_non_empty and binding.fuse_version_major == 2:
        fuse_options["nonempty"] = True

    def run() -> None:
        try:
            fuse_class(binding)(ops, str(mountpoint), **fuse_options)
            log.debug("the FUSE server at %s ended", mountpoint)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            log.debug("the FUSE server at %s failed: %r", mountpoint, exc)
            failure.append(exc)
        finally:
            ended.set()
            ready.set()

    thread = threading.Thread(target=run, name="btrsync-fuse", daemon=True)
    dev: int | None = None
    try:
        thread.start()
        while not ready.wait(0.5):
            pass
        if failure or ended.is_set():
            raise MountError(f"cannot mount at {mountpoint}: {failure[0] if failure else 'libfuse gave up'} "
                             "(is the fuse module loaded and /dev/fuse there?)")
        dev = os.stat(mountpoint).st_dev
        if on_ready is not None:
            on_ready(result)
        while not ended.wait(0.5):
            pass
        if failure:
            raise MountError(f"the FUSE server at {mountpoint} failed: {failure[0]}")
        return result
    finally:
        result.index_bytes = ns.index_bytes
        log.info("read for contents: %d stored bytes in %d chunks for %d files; file indexes: %d stored bytes",
                 cache.stats.stored_bytes, cache.stats.chunks, cache.stats.files, ns.index_bytes)
        _close(thread, ended, mountpoint, dev, cache_fd, cache_dir)


def _close(thread: threading.Thread, ended: threading.Event, mountpoint: Path, dev: int | None, cache_fd: int,
           cache_dir: Path) -> None:
    """Unmount when still mounted, wait for the server thread, remove the cache."""
    try:
        if thread.ident is not None and not ended.is_set():
            log.debug("unmounting %s", mountpoint)
            how = unmount(mountpoint)
            if not ended.wait(UNMOUNT_WAIT if how == "done" else 1.0) and dev is not None:
                _abort_connection(dev)
                ended.wait(UNMOUNT_WAIT)
    finally:
        os.close(cache_fd)
        shutil.rmtree(cache_dir, ignore_errors=True)
