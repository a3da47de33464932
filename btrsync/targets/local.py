"""The directory target, ``file:///path``: an external disk, an NFS mount, a test directory.

Objects are files under the root; a key's ``/`` separators are directories.  ``put`` writes
``<key>.tmp-<random>``, fsyncs it, renames it into place and fsyncs the directory, so an object is
either absent or complete and durable, even across a power cut.
"""

from __future__ import annotations

import builtins
import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from btrsync.errors import TargetMissingError
from btrsync.targets.base import (
    TEMP_MARKER,
    Capabilities,
    Leftover,
    ObjectInfo,
    Target,
    check_range,
    validate_key,
    validate_prefix,
)
from btrsync.targets.errors import NotFound, PermissionDenied, QuotaExceeded, TargetError

READ_BLOCK = 1 << 20


class LocalTarget(Target):
    capabilities = Capabilities(max_part_size=64 * 1024 * 1024, connections=4)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.display_url = f"file://{self.root}"

    # -- helpers ---------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _translate(self, exc: OSError, key: str) -> TargetError:
        where = f"{key} on {self.display_url}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return QuotaExceeded(f"target full while writing {where}: free space there and run again")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermissionDenied(f"cannot write {where}: {exc.strerror}")
        if exc.errno == errno.ENOENT:
            return NotFound(f"{where} not found")
        return TargetError(f"I/O error on {where}: {exc.strerror or exc}")

    def _makedirs(self, directory: Path) -> None:
        """Create missing directories up to the root, fsyncing each new entry's parent."""
        missing: list[Path] = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(d.parent)

    # -- the interface ---------------------------------------------------------------------
    def probe(self) -> None:
        if not self.root.is_dir():
            raise TargetMissingError(
                f"target directory {self.root} does not exist (is the disk mounted?); "
                f"create it with 'mkdir -p {self.root}' if this is a new target"
            )

    def free_space(self) -> int | None:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        final = self._path(key)
        tmp = final.with_name(f"{final.name}{TEMP_MARKER}{secrets.token_hex(6)}")
        size = 0
        try:
            self._makedirs(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                        size += n
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise self._translate(exc, key) from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return ObjectInfo(key, size)

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed in finally of the generator
        except OSError as exc:
            raise self._translate(exc, key) from None
        with f:
            end = check_range(key, os.fstat(f.fileno()).st_size, offset, length)
            f.seek(offset)
            remaining = end - offset
            while remaining:
                block = f.read(min(READ_BLOCK, remaining))
                if not block:
                    raise TargetError(f"{key} on {self.display_url} shrank while being read")
                remaining -= len(block)
                yield block

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except OSError as exc:
            raise self._translate(exc, key) from None
        return ObjectInfo(key, st.st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix names completely.
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / base_rel if base_rel else self.root
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            dirnames[:] = [d for d in dirnames if (rel_dir + d + "/").startswith(prefix)
                           or prefix.startswith(rel_dir + d + "/")]
            for name in filenames:
                key = rel_dir + name
                if TEMP_MARKER in name or not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
                found.append(ObjectInfo(key, size))
        found.sort(key=lambda o: o.key)
        yield from found

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except OSError as exc:
            raise self._translate(exc, key) from None
        _fsync_dir(path.parent)
        self._remove_empty_dirs(path.parent)

    def leftovers(self) -> builtins.list[Leftover]:
        """Temporary files of interrupted writes (``<key>.tmp-<random>``)."""
        found = []
        for dirpath, _dirs, filenames in os.walk(self.root):
            for name in filenames:
                if TEMP_MARKER in name:
                    path = Path(dirpath) / name
                    key = str(path.relative_to(self.root)).split(TEMP_MARKER)[0]
                    found.append(Leftover("temporary file", key, _size(path), path))
        return sorted(found, key=lambda lo: str(lo.handle))

    def remove_leftover(self, leftover: Leftover) -> None:
        assert isinstance(leftover.handle, Path)
        _unlink_quietly(leftover.handle)

    def _remove_empty_dirs(self, directory: Path) -> None:
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
