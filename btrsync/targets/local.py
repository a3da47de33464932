"""The directory target, ``file:///path``: an external disk, an NFS mount, a test directory.

Objects are files under the root; a key's ``/`` separators are directories.  ``put`` writes
``<key>.tmp-<random>``, fsyncs it, renames it into place and fsyncs the directory, so an object is
either absent or complete and durable, even across a power cut.

Three rules keep a sick or tampered disk from costing a backup:

* **Listings fail closed.**  ``list`` and ``leftovers`` either see every entry or raise
  ``TargetError`` naming the directory and the error (``EIO``, ``EACCES``, ``ESTALE``, ...): a
  directory that cannot be opened or read, or an entry whose ``stat`` fails, is never skipped,
  because a listing with holes makes committed data look orphaned to ``clean``.  Only a missing
  prefix (or root: ``probe`` tells that one) lists as empty, and an entry that vanishes while
  being listed (a concurrent delete) is simply gone.
* **Symlinks are never followed inside the root.**  Every path is walked from a descriptor of
  the root, one component at a time, with ``O_NOFOLLOW`` (``openat``/``mkdirat``/``unlinkat``/
  ``renameat`` relative to the parent's descriptor), so no open, unlink, mkdir or rename can
  reach outside the root, even if a link is planted while btrsync runs.  Listings skip symlinks
  (files and directories) with a warning naming them; ``get``, ``stat``, ``put`` and ``delete``
  of a key with a symlink anywhere on its path raise ``PermissionDenied`` ("symlink in target ...
  not followed").  The root itself may be a symlink (the operator chose it).
* **The root is a dedicated directory.**  System directories (``/``, ``/etc``, ``/var/lib``, ...:
  :mod:`btrsync.targets.safety`) are refused (``UsageError``, exit 2), and the root is never
  created: a missing root (an unmounted disk) is ``TargetMissingError``, exit 10, and so is a
  root that is not a directory.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from btrsync.errors import TargetMissingError
from btrsync.fdio import write_all
from btrsync.targets.base import (
    TEMP_MARKER,
    Capabilities,
    Leftover,
    ObjectInfo,
    Target,
    check_range,
    from_timestamp,
    is_valid_key,
    validate_key,
    validate_prefix,
)
from btrsync.targets.errors import NotFound, PermissionDenied, QuotaExceeded, TargetError
from btrsync.targets.safety import SymlinkInTarget, refuse_system_dir

log = logging.getLogger(__name__)

READ_BLOCK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENOTDIR)  # the path (or a directory on the way) does not exist


class _Missing(Exception):
    """A directory on a key's path does not exist (internal: becomes NotFound or an empty list)."""


class LocalTarget(Target):
    capabilities = Capabilities(max_part_size=64 * 1024 * 1024, connections=4)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        refuse_system_dir(os.fspath(root), "target directory")
        self.root = Path(root)
        self.display_url = f"file://{self.root}"

    # -- errors ----------------------------------------------------------------------------
    def _translate(self, exc: OSError, key: str) -> TargetError:
        where = f"{key} on {self.display_url}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return QuotaExceeded(f"target full while writing {where}: free space there and run again")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionDenied(f"access to {where} refused: {exc.strerror}")
        if exc.errno in _GONE:
            return NotFound(f"{where} not found")
        return TargetError(f"I/O error on {where}: {_describe(exc)}")

    def _listing_error(self, exc: OSError, rel: str) -> TargetError:
        """A listing that cannot be complete: never empty, never NotFound (see the module doc)."""
        kind = PermissionDenied if exc.errno in (errno.EACCES, errno.EPERM) else TargetError
        return kind(
            f"cannot list {rel.rstrip('/') or '.'} in {self.display_url}: {_describe(exc)}; a listing "
            "with holes would make stored data look orphaned: check the disk or share (dmesg, "
            "mount) and run again"
        )

    def _symlink_error(self, rel: str) -> SymlinkInTarget:
        return SymlinkInTarget(self.display_url, rel)

    def _warn_symlink(self, rel: str) -> None:
        log.warning("symlink in target %s not followed, skipped: %s (btrsync never follows links "
                    "inside a target; replace it with the real file or directory, or remove it)",
                    self.display_url, rel)

    # -- confined paths --------------------------------------------------------------------
    def _open_root(self) -> int:
        """A descriptor of the root (the root itself may be a symlink); never creates it."""
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise TargetMissingError(self._missing_message()) from None
            if exc.errno == errno.ENOTDIR:
                raise TargetMissingError(self._not_a_directory_message()) from None
            raise self._translate(exc, ".") from None

    @contextmanager
    def _dirs(self, names: builtins.list[str], *, create: bool = False) -> Iterator[builtins.list[int]]:
        """Descriptors of the root and of each directory ``names`` walks down to, root first.

        Each step is an ``openat`` with ``O_NOFOLLOW`` relative to the previous directory, so the
        walk cannot leave the root.  ``create`` makes missing directories (``mkdirat``, fsynced
        into their parents).  Raises ``_Missing`` for a missing directory, ``SymlinkInTarget``
        for a symlink, and ``OSError`` for anything else; every descriptor is closed on exit.
        """
        fds = [self._open_root()]
        try:
            for depth, name in enumerate(names):
                rel = "/".join(names[: depth + 1])
                fds.append(self._open_child(fds[-1], name, rel, create=create))
            yield fds
        finally:
            for fd in reversed(fds):
                os.close(fd)

    def _open_child(self, parent: int, name: str, rel: str, *, create: bool) -> int:
        """``openat(parent, name, O_NOFOLLOW | O_DIRECTORY)``, making it first if ``create``."""
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(parent, name):
                raise self._symlink_error(rel) from None
            if exc.errno not in _GONE:
                raise
            if exc.errno == errno.ENOTDIR or not create:
                raise _Missing(rel) from None
        try:
            os.mkdir(name, dir_fd=parent)
        except FileExistsError:
            pass  # made meanwhile by a concurrent put: fine, opened below (never through a link)
        else:
            os.fsync(parent)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(parent, name):
                raise self._symlink_error(rel) from None
            raise

    def _lstat(self, parent: int, name: str, rel: str) -> os.stat_result:
        """``lstat`` of a key's final component: a symlink is refused, a directory is no object."""
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise self._symlink_error(rel)
        if stat.S_ISDIR(st.st_mode):
            raise NotFound(f"{rel} on {self.display_url} is a directory, not an object")
        if not stat.S_ISREG(st.st_mode):
            raise TargetError(f"{rel} on {self.display_url} is not a regular file")
        return st

    def _missing_message(self) -> str:
        return (f"target directory {self.root} does not exist (is the disk mounted?); "
                f"create it with 'mkdir -p {self.root}' if this is a new target")

    def _not_a_directory_message(self) -> str:
        return (f"target path {self.root} is not a directory (it, or a part of it, is a file); "
                "use a directory (on the backup disk) as the target")

    # -- the interface ---------------------------------------------------------------------
    def probe(self) -> None:
        """Raise ``TargetMissingError`` unless the root is an existing directory."""
        try:
            st = os.stat(self.root)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise TargetMissingError(self._missing_message()) from None
            if exc.errno == errno.ENOTDIR:
                raise TargetMissingError(self._not_a_directory_message()) from None
            raise self._translate(exc, ".") from None
        if not stat.S_ISDIR(st.st_mode):
            raise TargetMissingError(self._not_a_directory_message())

    def free_space(self) -> int | None:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def first_files(self, limit: int = 3) -> builtins.list[str]:
        """Up to ``limit`` regular files below the root, whatever their names."""
        found: builtins.list[str] = []

        class _Enough(Exception):
            pass

        def on_file(rel: str, st: os.stat_result) -> None:
            found.append(rel)
            if len(found) >= limit:
                raise _Enough

        with contextlib.suppress(_Enough):
            self._walk_from("", lambda rel: True, on_file)
        return found

    def clock(self) -> datetime | None:
        """The mtime a file made now gets: this kernel's clock on a local disk, the server's on
        NFS, SMB or sshfs (where writers on other hosts meet).  A temporary file in the root is
        made, read and removed; ``None`` where the root cannot be written (a read-only mount)."""
        name = f"clock{TEMP_MARKER}{secrets.token_hex(6)}"
        try:
            root = self._open_root()
        except (TargetError, TargetMissingError):
            return None
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=root)
            try:
                return from_timestamp(os.fstat(fd).st_mtime)
            finally:
                os.close(fd)
                _unlink_quietly(root, name)
        except OSError as exc:
            log.debug("cannot read the clock of %s: %s", self.display_url, exc)
            return None
        finally:
            os.close(root)

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        names = validate_key(key).split("/")
        name, tmp = names[-1], f"{names[-1]}{TEMP_MARKER}{secrets.token_hex(6)}"
        try:
            with self._dirs(names[:-1], create=True) as fds:
                return self._write(fds[-1], name, tmp, key, parts)
        except _Missing:  # a file where a directory belongs
            raise TargetError(f"cannot write {key} on {self.display_url}: a part of its path is a file") \
                from None
        except OSError as exc:
            raise self._translate(exc, key) from None

    def _write(self, dirfd: int, name: str, tmp: str, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        """Write ``tmp`` in ``dirfd``, fsync, rename over ``name``, fsync the directory."""
        try:
            self._lstat(dirfd, name, key)  # refuses a symlink at the final name
        except FileNotFoundError:
            pass
        except NotFound:
            raise TargetError(f"cannot write {key} on {self.display_url}: a directory has its name") \
                from None
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dirfd)
            try:
                for part in parts:
                    size += write_all(fd, part)
                os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            os.fsync(dirfd)
        except BaseException:
            _unlink_quietly(dirfd, tmp)
            raise
        return ObjectInfo(key, size, _version(st))

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        fd = self._open_object(key)
        with open(fd, "rb", closefd=True) as f:
            end = check_range(key, os.fstat(fd).st_size, offset, length)
            f.seek(offset)
            remaining = end - offset
            while remaining:
                try:
                    block = f.read(min(READ_BLOCK, remaining))
                except OSError as exc:
                    raise self._translate(exc, key) from None
                if not block:
                    raise TargetError(f"{key} on {self.display_url} shrank while being read")
                remaining -= len(block)
                yield block

    def _open_object(self, key: str) -> int:
        """A read descriptor of the object file (never through a symlink; not a FIFO's reader)."""
        names = validate_key(key).split("/")
        try:
            with self._dirs(names[:-1]) as fds:
                fd = os.open(names[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=fds[-1])
                try:
                    mode = os.fstat(fd).st_mode
                    if not stat.S_ISREG(mode):
                        self._lstat(fds[-1], names[-1], key)  # raises the right error
                    os.set_blocking(fd, True)
                except BaseException:
                    os.close(fd)
                    raise
                return fd
        except _Missing:
            raise NotFound(f"{key} on {self.display_url} not found") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink as the final component
                raise self._symlink_error(key) from None
            raise self._translate(exc, key) from None

    def stat(self, key: str) -> ObjectInfo:
        names = validate_key(key).split("/")
        try:
            with self._dirs(names[:-1]) as fds:
                st = self._lstat(fds[-1], names[-1], key)
                return ObjectInfo(key, st.st_size, modified=from_timestamp(st.st_mtime))
        except _Missing:
            raise NotFound(f"{key} on {self.display_url} not found") from None
        except OSError as exc:
            raise self._translate(exc, key) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted; complete or an error (see the
        module doc: a missing prefix is empty, an unreadable directory raises)."""
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix names completely.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found: builtins.list[ObjectInfo] = []

        def descend(rel: str) -> bool:
            return rel.startswith(prefix) or prefix.startswith(rel)

        def on_file(rel: str, st: os.stat_result) -> None:
            if TEMP_MARKER not in rel.rsplit("/", 1)[-1] and rel.startswith(prefix):
                if not is_valid_key(rel):
                    log.warning("file %r in %s is not an object btrsync writes: skipped", rel[:200], self.display_url)
                    return
                # a put renames a new file into place: a replaced object has a new inode and mtime
                found.append(ObjectInfo(rel, st.st_size, _version(st), from_timestamp(st.st_mtime)))

        self._walk_from(base, descend, on_file)
        found.sort(key=lambda o: o.key)
        yield from found

    def delete(self, key: str) -> None:
        names = validate_key(key).split("/")
        try:
            with self._dirs(names[:-1]) as fds:
                self._lstat(fds[-1], names[-1], key)
                os.unlink(names[-1], dir_fd=fds[-1])
                os.fsync(fds[-1])
                _remove_empty_dirs(fds, names[:-1])
        except _Missing:
            raise NotFound(f"{key} on {self.display_url} not found") from None
        except OSError as exc:
            raise self._translate(exc, key) from None

    def leftovers(self) -> builtins.list[Leftover]:
        """Temporary files of interrupted writes (``<key>.tmp-<random>``); fails closed like
        ``list``.  The handle is the file's path relative to the root."""
        found: builtins.list[Leftover] = []

        def on_file(rel: str, st: os.stat_result) -> None:
            if TEMP_MARKER in rel.rsplit("/", 1)[-1]:
                found.append(Leftover("temporary file", rel.split(TEMP_MARKER)[0], st.st_size, rel))

        self._walk_from("", lambda rel: True, on_file)
        return sorted(found, key=lambda lo: str(lo.handle))

    def remove_leftover(self, leftover: Leftover) -> None:
        """Unlink one temporary file ``leftovers`` reported (already gone is fine)."""
        rel = leftover.handle
        if not isinstance(rel, str) or TEMP_MARKER not in rel.rsplit("/", 1)[-1]:
            raise TypeError(f"not a leftover of {self.display_url}: {leftover!r}")
        names = rel.split("/")
        try:
            with self._dirs(names[:-1]) as fds:
                self._lstat(fds[-1], names[-1], rel)
                os.unlink(names[-1], dir_fd=fds[-1])
        except (_Missing, NotFound, FileNotFoundError):
            return
        except OSError as exc:
            raise self._translate(exc, rel) from None

    # -- listing ---------------------------------------------------------------------------
    def _walk_from(self, base: str, descend: Callable[[str], bool],
                   on_file: Callable[[str, os.stat_result], None]) -> None:
        """Walk below ``base`` (a directory path relative to the root, ``""`` for the root)."""
        names = base.split("/") if base else []
        try:
            with self._dirs(names) as fds:
                self._walk(fds[-1], base + "/" if base else "", descend, on_file)
        except _Missing:
            return  # a missing prefix: nothing is stored under it
        except SymlinkInTarget as exc:
            self._warn_symlink(exc.path)
        except TargetMissingError:
            return  # no root, no objects: probe() and put() report it; there is nothing to delete
        except OSError as exc:
            raise self._listing_error(exc, base) from None

    def _walk(self, dirfd: int, rel: str, descend: Callable[[str], bool],
              on_file: Callable[[str, os.stat_result], None]) -> None:
        """Depth first, holding one descriptor per level; every error raises (fail closed)."""
        try:
            with os.scandir(dirfd) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError as exc:
            raise self._listing_error(exc, rel) from None
        for name in names:
            path = rel + name
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we listed: it is simply gone
            except OSError as exc:
                raise self._listing_error(exc, path) from None
            if stat.S_ISLNK(st.st_mode):
                self._warn_symlink(path)
            elif stat.S_ISDIR(st.st_mode):
                if descend(path + "/"):
                    self._walk_dir(dirfd, name, path, descend, on_file)
            elif stat.S_ISREG(st.st_mode):
                on_file(path, st)

    def _walk_dir(self, parent: int, name: str, path: str, descend: Callable[[str], bool],
                  on_file: Callable[[str, os.stat_result], None]) -> None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return  # removed while we listed (a concurrent delete of its last object)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(parent, name):
                self._warn_symlink(path)  # replaced by a link while we listed
                return
            raise self._listing_error(exc, path) from None
        try:
            self._walk(fd, path + "/", descend, on_file)
        finally:
            os.close(fd)


def _describe(exc: OSError) -> str:
    """``Input/output error (EIO)``: the text for people, the name for searching."""
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def _is_symlink(dirfd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _remove_empty_dirs(fds: builtins.list[int], names: builtins.list[str]) -> None:
    """Remove the key's directories that are now empty, deepest first (``unlinkat`` in the
    parent's descriptor: a directory replaced by a link is never followed, only refused)."""
    for depth in range(len(names) - 1, -1, -1):
        try:
            os.rmdir(names[depth], dir_fd=fds[depth])
        except OSError:
            return


def _version(st: os.stat_result) -> str:
    """An object's version as listings and puts report it: a put renames a new file into place,
    so a replaced object has a new inode and mtime."""
    return f"{st.st_ino}:{st.st_mtime_ns}"


def _unlink_quietly(dirfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass
