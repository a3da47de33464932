"""A FUSE passthrough filesystem that fails chosen operations on chosen paths, for real.

Tests need a directory whose ``readdir`` answers ``EIO``, whose ``opendir`` answers ``EACCES``,
whose ``stat`` answers ``ESTALE``: the failures of a dying USB disk or an NFS server that restarted.
Mocking ``os.walk`` would test the mock; this module makes the kernel return those errors to every
process (the test itself, an sshd session, rsync), so the code under test sees exactly what it
would see on a sick disk.

:class:`FaultFS` mounts a mirror of a backing directory (``fusepy`` over ``libfuse2``; the
mount runs in a child process, ``python -m tests.support.faultfs``, because libfuse's main loop
wants the main thread and its own signal handling).  The test controls it through a rules file
that the child re-reads whenever it changes::

    with FaultFS(backing, mountpoint) as fs:
        fs.fail("readdir", "data/*", errno.EIO)      # every readdir below data/ fails
        ...
        fs.clear()
        assert fs.hits()                              # the faults that were actually injected

Paths in rules are relative to the mount root, matched with :func:`fnmatch.fnmatchcase` (``""``
is the root itself).  Operations: ``getattr``, ``access`` (the kernel asks it for ``chdir`` and
``access(2)``), ``opendir``, ``readdir``, ``open``, ``create``, ``read``, ``write``, ``unlink``,
``rename``, ``mkdir``, ``rmdir``, ``fsync``, ``readlink``.
The kernel's attribute and entry caches are off (timeouts 0), so a new rule applies to the very
next system call.

Teardown always unmounts (``fusermount -u``, else ``umount``, then a lazy ``umount -l`` if the
mount is busy) and ends the child, also when the test failed or was interrupted; an ``atexit``
hook catches anything a test forgot.
"""

from __future__ import annotations

import atexit
import contextlib
import errno as errno_mod
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

MOUNT_TIMEOUT = 10.0
OPERATIONS = ("getattr", "access", "opendir", "readdir", "open", "create", "read", "write",
              "unlink", "rename", "mkdir", "rmdir", "fsync", "readlink")


def fuse_available() -> str | None:
    """Why a FUSE mount cannot work here (``None`` when it can): device, library, binding."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError) as exc:  # fusepy raises EnvironmentError without libfuse
        return f"fusepy or libfuse2 is not usable ({exc}); run scripts/bootstrap"
    if os.geteuid() != 0:
        return "mounting FUSE filesystems in tests needs root"
    return None


@contextlib.contextmanager
def mounted_for_test(tmp_path: Path) -> Iterator[FaultFS]:
    """A :class:`FaultFS` mirroring ``tmp_path/backing`` at ``tmp_path/mnt`` for one test, always
    unmounted afterwards.  Skips where FUSE cannot work, except under CI (env ``CI`` set), where it
    fails: CI installs FUSE (scripts/bootstrap), so a skip there would hide a broken machine."""
    import pytest

    reason = fuse_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to run the FUSE fault tests, but: {reason}", pytrace=False)
        pytest.skip(reason)
    fs = FaultFS(tmp_path / "backing", tmp_path / "mnt")
    try:
        yield fs.start()
    finally:
        fs.stop()


class FaultFS:
    """A mounted fault-injecting mirror of ``backing`` at ``mountpoint`` (see the module doc)."""

    def __init__(self, backing: str | os.PathLike[str], mountpoint: str | os.PathLike[str]) -> None:
        self.backing = Path(backing)
        # resolved now: once mounted (or broken), the mount point itself may answer EIO/ENOTCONN
        self.mountpoint = Path(os.path.realpath(Path(mountpoint).parent)) / Path(mountpoint).name
        self.control_dir = Path(tempfile.mkdtemp(prefix="faultfs-"))
        self.rules_file = self.control_dir / "rules.json"
        self.hits_file = self.control_dir / "hits.log"
        self.log_file = self.control_dir / "faultfs.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._rules: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Self:
        """Mount and wait until the mount is live (raises with the child's log otherwise)."""
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._write_rules()
        repo_root = Path(__file__).resolve().parents[2]
        # fusepy over libfuse2: never the libfuse3 another FUSE user of this process chose
        env = {k: v for k, v in os.environ.items() if k not in ("FUSE_LIBRARY_PATH", "FUSE_LIBRARY_NAME")}
        env["PYTHONPATH"] = str(repo_root)
        argv = [sys.executable, "-m", "tests.support.faultfs", str(self.backing),
                str(self.mountpoint), str(self.rules_file), str(self.hits_file)]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          env=env, cwd=repo_root)
        atexit.register(self.stop)
        self._wait_mounted()
        return self

    def stop(self) -> None:
        """Unmount (lazily if busy) and end the child; idempotent, never raises."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            self.clear()  # a fault on the root could make the unmount itself fail
        _unmount(self.mountpoint)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if _is_mounted(self.mountpoint):  # the child died without unmounting
            _unmount(self.mountpoint, lazy=True)
        shutil.rmtree(self.control_dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control ------------------------------------------------------------------------------
    def fail(self, op: str | tuple[str, ...], pattern: str, error: int = errno_mod.EIO) -> None:
        """Make ``op`` (one name or several) fail with ``error`` on paths matching ``pattern``."""
        ops = (op,) if isinstance(op, str) else tuple(op)
        unknown = [o for o in ops if o not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operation(s) {unknown}; use {OPERATIONS}")
        self._rules.append({"ops": list(ops), "pattern": pattern, "errno": int(error)})
        self._write_rules()

    def clear(self) -> None:
        """Remove every rule: the mount behaves like its backing directory again."""
        self._rules = []
        self._write_rules()

    def hits(self) -> list[tuple[str, str, int]]:
        """``(op, path, errno)`` of every fault injected so far."""
        try:
            lines = self.hits_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [(op, path, int(err)) for op, path, err in (line.split("\t") for line in lines)]

    def _write_rules(self) -> None:
        """Atomically replace the rules file (the child notices the new inode and re-reads it)."""
        tmp = self.rules_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._rules))
        os.replace(tmp, self.rules_file)

    def _wait_mounted(self) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                rc, self._proc = self._proc.returncode, None
                log = self.log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"faultfs exited with status {rc} before mounting: {log}")
            if _is_mounted(self.mountpoint):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"faultfs did not mount {self.mountpoint} within {MOUNT_TIMEOUT}s")


def _is_mounted(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is in the mount table (``os.path.ismount`` stats it, which a fault
    on the root or a dead FUSE daemon makes fail, and then says False)."""
    wanted = str(mountpoint)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and _unescape(fields[1]) == wanted:
                return True
    return False


def _unescape(field: str) -> str:
    """/proc/mounts writes blanks, tabs, newlines and backslashes as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def _unmount(mountpoint: Path, *, lazy: bool = False) -> None:
    """``fusermount -u`` (or ``umount``) the mount; fall back to a lazy unmount when busy."""
    if not _is_mounted(mountpoint):
        return
    commands = []
    if not lazy:
        for tool in ("fusermount", "fusermount3"):
            if shutil.which(tool):
                commands.append([tool, "-u", str(mountpoint)])
        commands.append(["umount", str(mountpoint)])
    commands.append(["umount", "-l", str(mountpoint)])
    for argv in commands:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=15, check=False)
        if not _is_mounted(mountpoint):
            return


# -- the filesystem (runs in the child process) --------------------------------------------------
def _operations_class() -> type:
    """Built lazily so that importing this module does not need fusepy."""
    from fuse import FuseOSError, Operations

    class Passthrough(Operations):  # type: ignore[misc]
        """Mirror ``backing``; fail what the rules file says.  Never follows a symlink itself:
        the kernel sees links as links and resolves them the way it would on a real disk."""

        use_ns = True

        def __init__(self, backing: str, rules_file: str, hits_file: str) -> None:
            self.backing = backing
            self.rules_file = rules_file
            self.hits_file = hits_file
            self._rules: list[dict[str, Any]] = []
            self._stamp: tuple[int, int] | None = None
            self._lock = threading.Lock()

        # rules
        def _check(self, op: str, path: str) -> None:
            rel = path.lstrip("/")
            for rule in self._current_rules():
                if op in rule["ops"] and fnmatch.fnmatchcase(rel, rule["pattern"]):
                    with self._lock, open(self.hits_file, "a") as hits:
                        hits.write(f"{op}\t{rel}\t{rule['errno']}\n")
                    raise FuseOSError(rule["errno"])

        def _current_rules(self) -> list[dict[str, Any]]:
            try:
                st = os.stat(self.rules_file)
            except FileNotFoundError:
                return []
            stamp = (st.st_ino, st.st_mtime_ns)
            with self._lock:
                if stamp != self._stamp:
                    with open(self.rules_file) as f:
                        self._rules = json.load(f)
                    self._stamp = stamp
                return self._rules

        def _full(self, path: str) -> str:
            return os.path.join(self.backing, path.lstrip("/"))

        # metadata
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            self._check("getattr", path)
            st = os.lstat(self._full(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_blocks")
            attrs = {k: getattr(st, k) for k in keys}
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return attrs

        def access(self, path: str, amode: int) -> None:
            self._check("access", path)
            if not os.access(self._full(path), amode, follow_symlinks=False):
                raise FuseOSError(errno_mod.EACCES)

        def readlink(self, path: str) -> str:
            self._check("readlink", path)
            return os.readlink(self._full(path))

        def statfs(self, path: str) -> dict[str, Any]:
            sv = os.statvfs(self._full(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                    "f_flag", "f_frsize", "f_namemax")
            return {k: getattr(sv, k) for k in keys}

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(self._full(path), mode)

        def chown(self, path: str, uid: int, gid: int) -> None:
            os.lchown(self._full(path), uid, gid)

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
            if times is None:
                os.utime(self._full(path), follow_symlinks=False)
            else:
                os.utime(self._full(path), ns=times, follow_symlinks=False)

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._full(path), length)

        # directories
        def opendir(self, path: str) -> int:
            self._check("opendir", path)
            if not os.path.isdir(self._full(path)):
                raise FuseOSError(errno_mod.ENOTDIR)
            return 0

        def readdir(self, path: str, fh: int) -> list[str]:
            self._check("readdir", path)
            return [".", "..", *os.listdir(self._full(path))]

        def mkdir(self, path: str, mode: int) -> None:
            self._check("mkdir", path)
            os.mkdir(self._full(path), mode)

        def rmdir(self, path: str) -> None:
            self._check("rmdir", path)
            os.rmdir(self._full(path))

        def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
            self._check("fsync", path)

        # names
        def unlink(self, path: str) -> None:
            self._check("unlink", path)
            os.unlink(self._full(path))

        def rename(self, old: str, new: str) -> None:
            self._check("rename", old)
            self._check("rename", new)
            os.rename(self._full(old), self._full(new))

        def symlink(self, target: str, source: str) -> None:
            os.symlink(source, self._full(target))

        def link(self, target: str, source: str) -> None:
            os.link(self._full(source), self._full(target))

        # files
        def open(self, path: str, flags: int) -> int:
            self._check("open", path)
            return os.open(self._full(path), flags | os.O_NOFOLLOW)

        def create(self, path: str, mode: int, fi: object = None) -> int:
            self._check("create", path)
            return os.open(self._full(path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            self._check("read", path)
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            self._check("write", path)
            return os.pwrite(fh, data, offset)

        def flush(self, path: str, fh: int) -> None:
            return None

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            self._check("fsync", path)
            os.fsync(fh)

        def release(self, path: str, fh: int) -> None:
            os.close(fh)

    return Passthrough


def main(argv: list[str]) -> int:
    """``python -m tests.support.faultfs BACKING MOUNTPOINT RULES_FILE HITS_FILE`` (foreground)."""
    from fuse import FUSE

    backing, mountpoint, rules_file, hits_file = argv
    ops = _operations_class()(os.path.realpath(backing), rules_file, hits_file)
    FUSE(ops, mountpoint, foreground=True, nothreads=False, allow_other=True, use_ino=True,
         attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname="faultfs", subtype="faultfs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
