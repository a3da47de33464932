"""Real btrfs filesystems on loop devices for tests, with cleanup that never leaks.

The central piece is :func:`loop_btrfs`, a context manager that creates an image file, formats it,
attaches it to a loop device, mounts the loop device and yields the mount point. On the way out,
whether the body returned or raised, it unmounts (retrying on EBUSY, then lazily), detaches the loop
device and removes the image.

A crashed test process (SIGKILL, a thread-method timeout, ``os._exit``) runs no ``finally`` block, so
:func:`detach_loops_under` and :func:`sweep_orphaned_pytest_loops` give the test session a safety net:
they find loop devices whose backing file lives under a given directory (pytest's temporary
directories) and unmount and detach them.

Small helpers drive the btrfs command line: :func:`create_subvolume`, :func:`snapshot`,
:func:`delete_subvolume` and :func:`send_receive` (a ``btrfs send | btrfs receive`` pipe built from
two processes, without a shell).

Images in RAM: the image of a filesystem made under pytest's temporary directories lives at the
same path below :data:`IMAGE_MIRROR` (``/dev/shm/btrsync-test-images``) when /dev/shm is a tmpfs
with room (:func:`image_dir_for`; ``TESTS_LOOP_IMAGES_ON_DISK=1`` keeps images on disk); its mount
point stays where the test asked. The filesystem is
the same real btrfs on a real loop device; only its flushes cost nothing, and tests stop waiting
on the disk that the machine's other work shares. The safety nets look at images by their logical
path (:func:`logical_path`), and the mirror of a dead run is removed with its loop devices.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from btrsync.procs import pid_alive

REQUIRED_TOOLS = ("mkfs.btrfs", "btrfs", "losetup", "mount", "umount", "truncate")

UMOUNT_ATTEMPTS = 10
UMOUNT_RETRY_DELAY = 0.2


class LoopFsError(RuntimeError):
    """A command needed to build or tear down a loop filesystem failed."""


def _run(args: Sequence[str | os.PathLike[str]], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; raise :class:`LoopFsError` with stderr on failure."""
    proc = subprocess.run(
        [os.fspath(a) for a in args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        cmd = " ".join(os.fspath(a) for a in args)
        raise LoopFsError(f"{cmd!r} failed with {proc.returncode}: {proc.stderr.strip()}")
    return proc


# --------------------------------------------------------------------------------------------------
# Environment probe


def btrfs_unavailable_reason() -> str | None:
    """Why loop btrfs filesystems cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "btrfs loop tests need root (mount, losetup)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"btrfs loop tests need these tools on PATH: {', '.join(missing)}"
    if not Path("/dev/loop-control").exists():
        return "btrfs loop tests need loop devices (/dev/loop-control is missing)"
    if not _kernel_has_btrfs():
        return "btrfs loop tests need a kernel with btrfs (not in /proc/filesystems, modprobe failed)"
    return None


def _kernel_has_btrfs() -> bool:
    """True if the running kernel knows btrfs, loading the module if needed."""

    def listed() -> bool:
        try:
            return any(
                line.split()[-1] == "btrfs"
                for line in Path("/proc/filesystems").read_text().splitlines()
                if line.strip()
            )
        except OSError:
            return False

    if listed():
        return True
    if shutil.which("modprobe"):
        _run(["modprobe", "btrfs"], check=False)
    return listed()


def require_loop_btrfs() -> None:
    """Skip the calling test if loop btrfs filesystems cannot be made here; under CI, fail.

    CI (env ``CI`` set) runs as root with btrfs, so a skip there would hide a broken environment.
    """
    import pytest

    reason = btrfs_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to run btrfs tests, but: {reason}", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------------
# Mount and loop device teardown


def _is_mountpoint(path: Path) -> bool:
    return _run(["findmnt", "--noheadings", "--mountpoint", path], check=False).returncode == 0


def _mount_targets_of(device: str) -> list[str]:
    """Mount points (as the kernel lists them) of every mount whose source is ``device``."""
    proc = _run(["findmnt", "--noheadings", "--raw", "--output", "TARGET", "--source", device],
                check=False)
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _syncfs(path: Path) -> None:
    """``syncfs`` of the filesystem ``path`` is on; best effort (unmount flushes it anyway)."""
    import ctypes

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        ctypes.CDLL(None, use_errno=True).syncfs(fd)
    finally:
        os.close(fd)


def unmount(mountpoint: Path, *, attempts: int = UMOUNT_ATTEMPTS) -> None:
    """Unmount ``mountpoint``: ``sync``, retry while the target is busy, then detach lazily.

    A busy mount (EBUSY: an open file, a cwd inside it, udev probing the device) usually frees up
    within moments, so a short retry loop handles most cases cleanly; if it never does, ``umount -l``
    detaches it from the tree so the test can go on (the kernel finishes once the last user leaves).

    Only this filesystem is flushed first (``syncfs``), never all of them: a global ``sync`` in one
    test process would write back what a parallel test deliberately keeps in the page cache.
    """
    _syncfs(mountpoint)
    for attempt in range(attempts):
        if not _is_mountpoint(mountpoint):
            return
        proc = _run(["umount", mountpoint], check=False)
        if proc.returncode == 0:
            return
        if attempt + 1 < attempts:
            time.sleep(UMOUNT_RETRY_DELAY)
    if _is_mountpoint(mountpoint):
        _run(["umount", "--lazy", mountpoint])


def detach_loop(device: str) -> None:
    """Forget ``device`` in the kernel's btrfs device list and detach it from its backing file.

    ``losetup -d`` on a device still held (a lazy unmount in progress) sets autoclear and succeeds,
    so the device goes away when its last user does.
    """
    _run(["btrfs", "device", "scan", "--forget", device], check=False)
    for attempt in range(UMOUNT_ATTEMPTS):
        proc = _run(["losetup", "--detach", device], check=False)
        if proc.returncode == 0 or "No such device" in proc.stderr:
            return
        time.sleep(UMOUNT_RETRY_DELAY)
    raise LoopFsError(f"losetup --detach {device} failed: {proc.stderr.strip()}")


def release_device(device: str) -> None:
    """Unmount every mount of ``device`` (lazily, its mount points may be gone) and detach it."""
    for _ in range(UMOUNT_ATTEMPTS):
        targets = _mount_targets_of(device)
        if not targets:
            break
        for target in targets:
            # A deleted mount point shows as "<path>//deleted" and cannot be named; the device can.
            name = target if Path(target).is_dir() else device
            _run(["umount", "--lazy", name], check=False)
    detach_loop(device)


# --------------------------------------------------------------------------------------------------
# Images in RAM

IMAGE_MIRROR = Path("/dev/shm/btrsync-test-images")
IMAGE_MIRROR_MIN_FREE = 6 << 30  # below this much free RAM in /dev/shm, images stay on disk


def _shm_usable() -> bool:
    if os.environ.get("TESTS_LOOP_IMAGES_ON_DISK"):  # to compare, or where RAM is short
        return False
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        st = os.statvfs("/dev/shm")
    except OSError:
        return False
    tmpfs = any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts if len(line.split()) > 2)
    return tmpfs and st.f_bavail * st.f_frsize >= IMAGE_MIRROR_MIN_FREE


def image_dir_for(directory: Path) -> Path:
    """Where the image of a filesystem made in ``directory`` goes: the same path below
    :data:`IMAGE_MIRROR` when ``directory`` is under pytest's temporary directories and /dev/shm
    has room, else ``directory`` itself."""
    real = Path(os.path.realpath(directory))
    if not _is_under(str(real), Path(os.path.realpath(default_pytest_root()))) or not _shm_usable():
        return directory
    return IMAGE_MIRROR / real.relative_to("/")


def logical_path(path: str) -> str:
    """A backing file's path as the test named its directory: without the :data:`IMAGE_MIRROR` prefix."""
    if _is_under(path, IMAGE_MIRROR):
        return "/" + str(Path(path).relative_to(IMAGE_MIRROR))
    return path


def remove_image_mirror(directory: Path) -> None:
    """Delete what is left of the images mirrored for ``directory`` (after its loops are released)."""
    mirror = IMAGE_MIRROR / Path(os.path.realpath(directory)).relative_to("/")
    shutil.rmtree(mirror, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The loop filesystem itself

LOSETUP_ATTEMPTS = 20


def attach_loop(image: Path, *extra: str) -> str:
    """``losetup --find --show [EXTRA] IMAGE``: the loop device now backed by ``image``.

    Several test processes (pytest-xdist workers, concurrent runs) attach devices at once; two of
    them may pick the same free device, and the loser gets EBUSY. losetup retries that itself in
    most versions; this retries it too, for a bounded number of attempts, and never sleeps otherwise.
    """
    for attempt in range(LOSETUP_ATTEMPTS):
        proc = _run(["losetup", "--find", "--show", *extra, image], check=False)
        device = proc.stdout.strip()
        if proc.returncode == 0 and device:
            return device
        busy = "busy" in proc.stderr.lower() or "could not find any free loop device" in proc.stderr.lower()
        if not busy or attempt + 1 == LOSETUP_ATTEMPTS:
            raise LoopFsError(f"losetup --find --show {image} failed with {proc.returncode}: {proc.stderr.strip()}")
        time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass(eq=False)
class LoopBtrfs:
    """One image file, its loop device and its mount point; :meth:`close` undoes all three."""

    image: Path
    mountpoint: Path
    device: str | None = None
    mounted: bool = False
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Unmount, detach and delete, as far as each step got; safe to call more than once.

        Every step runs even if an earlier one failed; the first failure is raised at the end.
        """
        if self.closed:
            return
        self.closed = True
        _LIVE.discard(self)
        errors: list[BaseException] = []
        if self.mounted:
            try:
                unmount(self.mountpoint)
                self.mounted = False
            except Exception as exc:  # noqa: BLE001 - keep tearing down, report afterwards
                errors.append(exc)
        if self.device is not None:
            try:
                detach_loop(self.device)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        dirs = [] if self.mounted else list(dict.fromkeys(
            [self.mountpoint, self.image.parent, self.mountpoint.parent]))  # the image's may be in RAM
        for path in [self.image, *dirs]:
            try:
                if path == self.image:
                    path.unlink(missing_ok=True)
                else:
                    path.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                    errors.append(exc)
        if errors:
            raise errors[0]


_LIVE: set[LoopBtrfs] = set()


@atexit.register
def _close_live_filesystems() -> None:
    """Last resort for filesystems whose context manager never exited (e.g. an abandoned generator)."""
    for fs in list(_LIVE):
        try:
            fs.close()
        except Exception:  # noqa: BLE001 - at exit, nothing can be done beyond trying
            pass


def open_loop_btrfs(
    workdir: Path,
    size: str = "512M",
    label: str = "btrsync-test",
    *,
    mount_options: Sequence[str] = (),
    mkfs_options: Sequence[str] = (),
) -> LoopBtrfs:
    """Create, format, attach and mount a btrfs image under ``workdir``; the caller must close it.

    Prefer :func:`loop_btrfs`. Each call uses a fresh directory under ``workdir``, so several
    filesystems can share one ``workdir``. On failure everything made so far is undone.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=workdir))
    images = image_dir_for(base)
    if images != base:
        images.mkdir(parents=True, exist_ok=True, mode=0o700)
    fs = LoopBtrfs(image=images / "fs.img", mountpoint=base / "mnt")
    _LIVE.add(fs)
    try:
        fs.mountpoint.mkdir()
        _run(["truncate", "-s", size, fs.image])
        _run(["mkfs.btrfs", "-q", "-f", "-L", label, *mkfs_options, fs.image])
        fs.device = attach_loop(fs.image)
        options = ["-o", ",".join(mount_options)] if mount_options else []
        _run(["mount", "-t", "btrfs", *options, fs.device, fs.mountpoint])
        fs.mounted = True
    except BaseException:
        fs.close()
        raise
    return fs


@contextmanager
def loop_btrfs(
    workdir: Path,
    size: str = "512M",
    label: str = "btrsync-test",
    *,
    mount_options: Sequence[str] = (),
    mkfs_options: Sequence[str] = (),
) -> Iterator[Path]:
    """Yield the mount point of a fresh btrfs on a loop device; always unmount, detach and delete.

    ``size`` is anything ``truncate -s`` accepts. ``mount_options`` are joined into one ``-o``
    (e.g. ``["compress=zstd"]``); ``mkfs_options`` go to ``mkfs.btrfs``.
    """
    fs = open_loop_btrfs(
        workdir, size, label, mount_options=mount_options, mkfs_options=mkfs_options
    )
    try:
        yield fs.mountpoint
    finally:
        fs.close()


# --------------------------------------------------------------------------------------------------
# Safety net for loop devices leaked by crashed runs


def attached_loops() -> list[tuple[str, str]]:
    """``(device, backing file)`` for every attached loop device, as ``losetup`` reports them.

    A backing file that was deleted is reported with a ``" (deleted)"`` suffix, which is stripped;
    an image kept in RAM is named by its logical path (:func:`logical_path`).
    """
    proc = _run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    loops = []
    for entry in json.loads(proc.stdout).get("loopdevices", []):
        back = (entry.get("back-file") or "").strip()
        back = logical_path(back.removesuffix(" (deleted)"))
        loops.append((entry["name"], back))
    return loops


def _is_under(path: str, root: Path) -> bool:
    try:
        Path(path).relative_to(root)
    except ValueError:
        return False
    return True


def detach_loops_under(roots: Iterable[Path]) -> list[str]:
    """Unmount and detach every loop device whose backing file lives under one of ``roots``.

    Returns the devices released. Best effort: failures are swallowed, this is a safety net.
    """
    resolved = [Path(os.path.realpath(r)) for r in roots]
    released = []
    for device, back in attached_loops():
        if back and any(_is_under(back, root) for root in resolved):
            try:
                release_device(device)
                released.append(device)
            except Exception:  # noqa: BLE001
                pass
    return released


def _run_is_live(numbered_dir: Path) -> bool:
    """Whether the pytest run owning ``numbered_dir`` (``pytest-N``) is still running.

    pytest writes its pid into ``pytest-N/.lock`` and removes the lock when it exits.
    """
    try:
        pid = int((numbered_dir / ".lock").read_text().strip())
    except (OSError, ValueError):
        return False
    return pid_alive(pid)


def sweep_orphaned_pytest_loops(pytest_root: Path) -> list[str]:
    """Release loop devices left behind under ``pytest_root`` (``/tmp/pytest-of-USER``) by dead runs.

    A loop device belongs to the run whose ``pytest-N`` directory holds its backing file; devices of
    runs that are still alive (their ``.lock`` names a live pid) are left alone, so concurrent pytest
    sessions on one machine do not pull filesystems from under each other.
    """
    root = Path(os.path.realpath(pytest_root))
    orphaned_roots: set[Path] = set()
    for _device, back in attached_loops():
        if not back or not _is_under(back, root):
            continue
        parts = Path(back).relative_to(root).parts
        if not parts:
            continue
        run_dir = root / parts[0]
        if not _run_is_live(run_dir):
            orphaned_roots.add(run_dir)
    released = detach_loops_under(orphaned_roots) if orphaned_roots else []
    mirror = IMAGE_MIRROR / root.relative_to("/")
    if mirror.is_dir():  # the images of dead runs, whether a loop still held them or not
        for run_mirror in mirror.iterdir():
            if not _run_is_live(root / run_mirror.name):
                remove_image_mirror(root / run_mirror.name)
    return released


def default_pytest_root() -> Path:
    """The directory pytest puts its numbered ``pytest-N`` run directories in (without --basetemp)."""
    import getpass

    temproot = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()).resolve()
    try:
        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"
    return temproot / f"pytest-of-{user}"


# --------------------------------------------------------------------------------------------------
# btrfs command helpers


def create_subvolume(path: Path) -> Path:
    """``btrfs subvolume create PATH``; returns ``path``."""
    _run(["btrfs", "subvolume", "create", path])
    return path


def snapshot(source: Path, dest: Path, *, readonly: bool = True) -> Path:
    """``btrfs subvolume snapshot [-r] SOURCE DEST``; returns ``dest``."""
    _run(["btrfs", "subvolume", "snapshot", *(["-r"] if readonly else []), source, dest])
    return dest


def delete_subvolume(path: Path) -> None:
    """``btrfs subvolume delete PATH``."""
    _run(["btrfs", "subvolume", "delete", path])


def send_receive(
    snapshot_path: Path,
    dest_dir: Path,
    *,
    parent: Path | None = None,
    send_args: Sequence[str] = (),
    receive_args: Sequence[str] = (),
) -> Path:
    """Pipe ``btrfs send [-p PARENT] SNAPSHOT`` into ``btrfs receive DEST_DIR``, no shell involved.

    Returns the received subvolume (``dest_dir / snapshot_path.name``). Raises
    :class:`LoopFsError` with both processes' stderr if either fails.
    """
    send_cmd = ["btrfs", "send", "-q", *send_args]
    if parent is not None:
        send_cmd += ["-p", os.fspath(parent)]
    send_cmd.append(os.fspath(snapshot_path))
    recv_cmd = ["btrfs", "receive", *receive_args, os.fspath(dest_dir)]
    with tempfile.TemporaryFile() as send_err, tempfile.TemporaryFile() as recv_err:
        sender = subprocess.Popen(send_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=send_err)
        assert sender.stdout is not None
        try:
            receiver = subprocess.Popen(recv_cmd, stdin=sender.stdout, stdout=subprocess.DEVNULL,
                                        stderr=recv_err)
        except BaseException:
            sender.kill()
            sender.wait()
            raise
        finally:
            sender.stdout.close()  # the receiver holds the only read end now
        recv_rc = receiver.wait()
        send_rc = sender.wait()
        if send_rc != 0 or recv_rc != 0:
            send_err.seek(0)
            recv_err.seek(0)
            raise LoopFsError(
                f"send/receive failed (send rc={send_rc}, receive rc={recv_rc}):\n"
                f"send: {send_err.read().decode(errors='replace').strip()}\n"
                f"receive: {recv_err.read().decode(errors='replace').strip()}"
            )
    return dest_dir / snapshot_path.name


# --------------------------------------------------------------------------------------------------
# Per-test areas in a shared filesystem

BTRFS_SUBVOLUME_ROOT_INO = 256  # the inode number of every subvolume's root directory


def _mountinfo_points() -> list[str]:
    """Every mount point of this process's mount namespace, octal escapes decoded."""
    import re

    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            field = line.split()[4]
            raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)
            points.append(os.fsdecode(raw))
    return points


def _subvolumes_under(root: Path) -> list[Path]:
    """Subvolumes strictly below ``root`` (on ``root``'s filesystem), parents before children.

    A directory on another device whose inode is not a subvolume root is a mount: not entered.
    """
    found: list[Path] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            path = Path(entry.path)
            if st.st_ino == BTRFS_SUBVOLUME_ROOT_INO:
                found.append(path)
            elif st.st_dev != os.lstat(directory).st_dev:
                continue  # a mount point that could not be unmounted: never walk into it
            stack.append(path)
    return found


def discard_area(area: Path, trash: Path) -> None:
    """Remove ``area`` (a directory in a shared btrfs) with every subvolume and mount in it.

    Mounts under it go first (lazily), then its subvolumes, deepest first, then the rest. Whatever
    resists (a subvolume nested in a read-only one, a busy mount) is moved into ``trash``, so that
    nothing of one test is visible to the next one; the shared filesystem goes at session end.
    """
    prefix = str(area) + "/"
    for point in sorted((p for p in _mountinfo_points() if p.startswith(prefix)), key=len, reverse=True):
        _run(["umount", "--lazy", point], check=False)
    subvolumes = _subvolumes_under(area)
    for path in sorted(subvolumes, key=lambda p: len(p.parts), reverse=True):
        if _run(["btrfs", "subvolume", "delete", path], check=False).returncode != 0:
            # a read-only parent forbids unlinking it: make the parent writable, then retry
            _run(["btrfs", "property", "set", "-f", "-t", "subvol", path.parent, "ro", "false"], check=False)
            _run(["btrfs", "subvolume", "delete", path], check=False)
    shutil.rmtree(area, ignore_errors=True)
    if area.exists():
        trash.mkdir(exist_ok=True)
        try:
            area.rename(trash / area.name)
        except OSError:
            pass


@contextmanager
def fresh_area(pool: Path, name: str, *, subvolume: bool = True) -> Iterator[Path]:
    """A new, empty ``name`` (a subvolume, or a plain directory) in a directory of its own under
    the shared filesystem ``pool``; on the way out it is removed with all it holds."""
    area = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=pool))
    try:
        path = area / name
        if subvolume:
            create_subvolume(path)
        else:
            path.mkdir()
        yield path
    finally:
        discard_area(area, pool / ".trash")
