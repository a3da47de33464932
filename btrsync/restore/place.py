"""Putting a restored tree in its place, and removing trees, without ever following a symlink.

Everything works on directory descriptors (``*at`` calls, ``O_NOFOLLOW``), iteratively (no
recursion limit on deep trees). Directories without write or search permission for the caller
are opened up (``0700``) before they are emptied, so a non-root user can remove what a restore
made (read-only directories included).

Nothing here ever reaches into another mounted filesystem or a btrfs subvolume: replacing a tree
that holds a mount point or a subvolume is refused before anything moves, and removing a tree
stops at either (EBUSY), leaving it untouched.  ``rm -rf`` of the old tree would otherwise empty
whatever an operator had mounted inside it, or the snapshots kept in it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from btrsync.mountinfo import mount_points
from btrsync.restore import fsutil
from btrsync.restore.paths import DIR_FLAGS
from btrsync.signals import deferred

EXAMPLES = 5

log = logging.getLogger(__name__)


def _open_dir(parent_fd: int, name: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=parent_fd)
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def open_own_dir(parent_fd: int, name: str) -> int:
    """A descriptor of the private directory ``parent/name`` this process just made (``0700``).

    Where someone else can write to ``parent`` (another user owns it, or it is group- or
    world-writable), they could have renamed it and put their own in its place before it was
    opened: then it must be owned by whoever this process's files belong to here and closed to
    others, else it is refused.  That owner is learnt from a file made and removed in ``parent``
    (root's files belong to nobody on an NFS export with root_squash, to the mount's uid on a
    FAT disk).  Everything after works through the descriptor."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    st, parent = os.fstat(fd), os.fstat(parent_fd)
    creator = _creator_uid(parent_fd)
    if parent.st_uid == creator and not parent.st_mode & 0o022:
        return fd  # nobody else can write here: nobody can have swapped it
    if st.st_uid != creator or st.st_mode & 0o077:
        os.close(fd)
        raise OSError(errno.EPERM, f"the work directory {name} was replaced while in use (owner uid "
                                   f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): another user can write to "
                                   "where it is; restore into a directory only root can write to", name)
    return fd


def _creator_uid(parent_fd: int) -> int:
    """The owner a file this process makes in ``parent`` gets (the effective uid where it cannot tell)."""
    probe = f".btrsync-probe.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent_fd)
    except OSError:
        return os.geteuid()
    try:
        return os.fstat(fd).st_uid
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe, dir_fd=parent_fd)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def mounts_within(parent_fd: int, name: str) -> list[str]:
    """The mount points at or below ``parent/name`` (a directory; not followed if a symlink)."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except FileNotFoundError:
        return []
    try:
        root = _fd_path(fd)
    finally:
        os.close(fd)
    prefix = root.rstrip("/") + "/"
    return sorted(m for m in mount_points() if m == root or m.startswith(prefix))


def subvolumes_within(parent_fd: int, name: str) -> list[str]:
    """Directories at or below ``parent/name`` on another device than ``parent``: btrfs
    subvolumes (snapshots, a container's storage) and mount points.  A walk of the directories
    that stats each one, never enters such a directory (nor follows a symlink), holds one
    descriptor per level, and skips what it may not read; at most ``EXAMPLES`` are returned."""
    base = os.fstat(parent_fd).st_dev
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode):
        return []
    if st.st_dev != base:
        return [os.path.join(_fd_path(parent_fd), name)]
    found: list[str] = []
    stack: list[tuple[int, list[str]]] = []

    def enter(fd: int, entry: str) -> None:
        try:
            child = os.open(entry, DIR_FLAGS, dir_fd=fd)
        except (PermissionError, FileNotFoundError):
            return
        subdirs = []
        try:
            with os.scandir(child) as entries:
                for e in entries:
                    if not e.is_dir(follow_symlinks=False):
                        continue
                    if e.stat(follow_symlinks=False).st_dev != base:
                        found.append(os.path.join(_fd_path(child), e.name))
                    else:
                        subdirs.append(e.name)
        except BaseException:
            os.close(child)
            raise
        stack.append((child, subdirs))

    try:
        enter(parent_fd, name)
        while stack and len(found) < EXAMPLES:
            fd, todo = stack[-1]
            if todo:
                enter(fd, todo.pop())
            else:
                stack.pop()
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return sorted(found)[:EXAMPLES]


def foreign_within(parent_fd: int, name: str) -> str | None:
    """Why ``parent/name`` must not be replaced (and then removed): a filesystem mounted in it, or
    btrfs subvolumes in it (snapshots kept there, a container's storage), none of which a backup
    holds; ``None`` when it holds neither."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode) and st.st_dev != os.fstat(parent_fd).st_dev:
        path = os.path.join(_fd_path(parent_fd), name)
        if path in mount_points():
            return "it is itself a mount point; unmount it, or restore elsewhere"
        return ("it is itself a btrfs subvolume (a backup put there by 'btrsync receive'?), which a restore "
                "never replaces; restore elsewhere, or delete it yourself first")
    if mounted := mounts_within(parent_fd, name):
        return f"a filesystem is mounted in it, at {', '.join(mounted[:3])}; unmount it, or restore elsewhere"
    if nested := subvolumes_within(parent_fd, name):
        return (f"it holds btrfs subvolumes, at {', '.join(nested[:3])} (snapshots, a container's storage: "
                "a restore never deletes them); move them out, or restore elsewhere")
    return None


def _refuse_mount(parent_fd: int, name: str, st: os.stat_result) -> None:
    """Before ``parent/name`` (a directory, ``st``) is opened up or entered: on another device than
    its parent it is a mount point or a btrfs subvolume, and both are left untouched (not even
    their permissions): a subvolume in a tree being replaced is a snapshot or a container's
    storage that no restore put there."""
    if st.st_dev == os.fstat(parent_fd).st_dev:
        return
    path = os.path.join(_fd_path(parent_fd), name)
    if path in mount_points():
        raise OSError(errno.EBUSY, f"a filesystem is mounted at {path}; it was left untouched", path)
    raise OSError(errno.EBUSY, f"{path} is a btrfs subvolume; it was left untouched", path)


def remove_tree(parent_fd: int, name: str) -> None:
    """``rm -rf parent/name`` by descriptors; a missing ``name`` is fine; never enters another
    mounted filesystem (``OSError(EBUSY)`` at a mount point, which is left as it is)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    _refuse_mount(parent_fd, name, st)
    if os.geteuid() != 0 and st.st_mode & 0o700 != 0o700:
        os.chmod(name, 0o700, dir_fd=parent_fd)
    top = _open_dir(parent_fd, name)
    stack: list[tuple[int, str, list[str]]] = [(top, name, [])]
    try:
        stack[0][2].extend(os.listdir(top))
    except BaseException:
        os.close(top)
        raise
    try:
        _remove_below(stack, parent_fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _remove_below(stack: list[tuple[int, str, list[str]]], parent_fd: int) -> None:
    while stack:
        fd, dname, todo = stack[-1]
        descended = False
        while todo:
            entry = todo.pop()
            try:
                est = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(est.st_mode):
                _refuse_mount(fd, entry, est)
                if os.geteuid() != 0 and est.st_mode & 0o700 != 0o700:
                    os.chmod(entry, 0o700, dir_fd=fd)
                child = _open_dir(fd, entry)
                try:
                    listing = os.listdir(child)
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, entry, listing))
                descended = True
                break
            os.unlink(entry, dir_fd=fd)
        if descended:
            continue
        stack.pop()
        os.close(fd)
        os.rmdir(dname, dir_fd=stack[-1][0] if stack else parent_fd)


def discard(parent_fd: int, name: str, where: object) -> None:
    """``remove_tree`` of a work directory in a ``finally``: a failure is logged with what to do,
    never raised, so it cannot replace the outcome it follows (a finished restore, or the error
    or signal that ended it)."""
    try:
        remove_tree(parent_fd, name)
    except OSError as exc:
        log.warning("could not remove the work directory %s/%s (%s); remove it yourself",
                    where, name, exc.strerror or exc)


def move_into_place(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """Rename ``src`` to ``dst``, refusing (``FileExistsError``) if ``dst`` appeared meanwhile."""
    try:
        fsutil.renameat2(src_fd, src, dst_fd, dst, fsutil.RENAME_NOREPLACE)
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    try:
        os.stat(dst, dir_fd=dst_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    raise FileExistsError(errno.EEXIST, "exists", dst)


def aside_name(src: str) -> str:
    """Where ``swap_into_place``'s fallback keeps the old tree between its renames (beside ``src``)."""
    return src + ".old"


def swap_into_place(src_fd: int, src: str, dst_fd: int, dst: str, *,
                    noting: Callable[[str | None], None] | None = None) -> None:
    """Put ``src`` at ``dst`` and what was at ``dst`` at ``src`` (atomically where the filesystem
    can exchange names, else in two renames).  Refused (``OSError(EBUSY)``, nothing moved) when a
    filesystem is mounted in ``dst``: the old tree is removed next, and must hold only its own.
    ``noting(aside)`` is called before the fallback moves the old one aside (beside ``src``), and
    ``noting(None)`` once it is back in ``src``: a journal, so that a SIGKILL between the renames
    can be undone by whoever finds the aside (the next restore)."""
    why = foreign_within(dst_fd, dst)
    if why:
        raise OSError(errno.EBUSY, f"{why} (nothing was replaced)")
    try:
        fsutil.renameat2(src_fd, src, dst_fd, dst, fsutil.RENAME_EXCHANGE)
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    # three renames that a signal must not split, and a failed second one puts the old tree back:
    # otherwise both trees would sit in the work directory that is removed next
    aside = aside_name(src)
    for n in range(1, 1000):  # beside a selected path, a name of the backup may be just that
        if not _exists_nofollow(src_fd, aside):
            break
        aside = f"{aside_name(src)}.{n}"
    else:
        raise FileExistsError(errno.EEXIST, "no free name to move the old one aside", aside)
    with deferred():
        if noting is not None:
            noting(aside)
        os.rename(dst, aside, src_dir_fd=dst_fd, dst_dir_fd=src_fd)
        try:
            os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except BaseException:
            os.rename(aside, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            raise
        os.rename(aside, src, src_dir_fd=src_fd, dst_dir_fd=src_fd)
        if noting is not None:
            noting(None)


@dataclass
class MergeResult:
    added: int = 0  # entries moved in (a directory counts once, with all it holds)
    kept: int = 0  # entries of the backup left out because the path exists
    kept_examples: list[str] = field(default_factory=list)


def merge_tree(src_fd: int, src: str, dst_fd: int, dst: str) -> MergeResult:
    """Move every entry of ``src`` whose path does not exist under ``dst`` into it; where both
    hold a directory (not a symlink to one), merge their contents the same way; leave every
    other existing path alone. Existing directories keep their times."""
    result = MergeResult()
    stack: list[tuple[int, int, str]] = [(_open_dir(src_fd, src), os.open(dst, DIR_FLAGS, dir_fd=dst_fd), "")]
    try:
        while stack:
            sfd, dfd, rel = stack.pop()
            try:
                before = os.fstat(dfd)
                moved = False
                for name in sorted(os.listdir(sfd)):
                    path = f"{rel}/{name}" if rel else name
                    try:
                        existing = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        move_into_place(sfd, name, dfd, name)
                        result.added += 1
                        moved = True
                        continue
                    ours = os.stat(name, dir_fd=sfd, follow_symlinks=False)
                    if stat.S_ISDIR(existing.st_mode) and stat.S_ISDIR(ours.st_mode):
                        stack.append((_open_dir(sfd, name), os.open(name, DIR_FLAGS, dir_fd=dfd), path))
                        continue
                    result.kept += 1
                    if len(result.kept_examples) < EXAMPLES:
                        result.kept_examples.append(path)
                if moved:
                    os.utime(dfd, ns=(before.st_atime_ns, before.st_mtime_ns))
            finally:
                os.close(sfd)
                os.close(dfd)
    finally:
        for sfd, dfd, _rel in stack:
            os.close(sfd)
            os.close(dfd)
    return result


@dataclass
class ReplaceResult:
    replaced: list[str] = field(default_factory=list)  # selected paths that existed and were exchanged
    added: list[str] = field(default_factory=list)  # selected paths (or their first missing ancestor) moved in


def outermost(paths: list[str]) -> list[str]:
    """``paths`` (relative, normalised) without those below another one of them: replacing
    ``a`` already replaces ``a/b``.  ``""`` (the root) covers everything."""
    if "" in paths:
        return [""]
    chosen: list[str] = []
    for p in sorted(set(paths)):
        if not any(p.startswith(c + "/") for c in chosen):
            chosen.append(p)
    return chosen


def walk_existing(dst_fd: int, parts: list[str]) -> tuple[int, int]:
    """Descend ``parts`` below ``dst_fd`` while each component is a real directory; returns an
    owned descriptor of the deepest one reached and how many components that was.  A component
    that exists but is no directory (a file, a symlink: never followed) is ``NotADirectoryError``."""
    fd = os.dup(dst_fd)
    depth = 0
    try:
        for part in parts:
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                break
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", "/".join(parts[:depth + 1]))
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
            depth += 1
    except BaseException:
        os.close(fd)
        raise
    return fd, depth


def check_replace_paths(dst_fd: int, paths: list[str]) -> str | None:
    """Why ``replace_paths`` must not start (before anything moves): a path whose ancestor in
    the destination is not a directory, a directory on the way that is another subvolume or
    filesystem (nothing can be renamed into it from the work directory), or a selected path that
    holds a mount or subvolumes."""
    dev = os.fstat(dst_fd).st_dev
    up = os.open("..", DIR_FLAGS, dir_fd=dst_fd)
    try:
        if os.fstat(up).st_dev != dev:  # the selected paths are built beside it, in its parent
            return ("it is itself a btrfs subvolume or a mount point (a backup put there by 'btrsync "
                    "receive'?), which nothing can be moved into; restore elsewhere")
    finally:
        os.close(up)
    for p in outermost(paths):
        parts = p.split("/") if p else []
        try:
            fd, depth = walk_existing(dst_fd, parts[:-1])
        except NotADirectoryError as exc:
            return (f"{exc.filename} is not a directory there (a file or a symlink, never followed), "
                    f"but the backup has one; move it away to restore {p}")
        try:
            if os.fstat(fd).st_dev != dev:
                return (f"{'/'.join(parts[:depth])} is another btrfs subvolume or a mount point there, which "
                        f"nothing can be moved into; restore {p} elsewhere")
            if depth == len(parts) - 1 and parts and (why := foreign_within(fd, parts[-1])):
                return f"{p}: {why}"
        finally:
            os.close(fd)
    return None


def replace_paths(src_fd: int, dst_fd: int, paths: list[str], *,
                  journal: Callable[[str, str | None], None] | None = None) -> ReplaceResult:
    """Put each of ``paths`` of the tree at ``src_fd`` at the same place below ``dst_fd`` and
    touch nothing else there: an existing path is exchanged (what it held goes to the source
    tree, to be removed with it); a missing one, or its first missing ancestor (with the
    snapshot's metadata), is moved in.  Existing directories on the way keep their times.
    Paths already moved in with an ancestor are skipped.  ``check_replace_paths`` first.
    ``journal(path, aside)`` hears where an exchange without atomic support keeps the old
    ``path`` meanwhile (relative to ``src_fd``), and ``journal(path, None)`` when it is done."""
    result = ReplaceResult()
    for p in outermost(paths):
        parts = p.split("/")
        sfd, sdepth = walk_existing(src_fd, parts[:-1])
        try:
            if sdepth < len(parts) - 1 or not _exists_nofollow(sfd, parts[-1]):
                continue  # moved in already, with an ancestor that another path brought along
            dfd, depth = walk_existing(dst_fd, parts[:-1])
            try:
                before = os.fstat(dfd)
                if depth < len(parts) - 1:  # an ancestor is missing: bring it, with what it holds
                    src_parent, _ = walk_existing(src_fd, parts[:depth])
                    try:
                        move_into_place(src_parent, parts[depth], dfd, parts[depth])
                    finally:
                        os.close(src_parent)
                    result.added.append("/".join(parts[:depth + 1]))
                elif _exists_nofollow(dfd, parts[-1]):
                    def noting(aside: str | None, p: str = p, parent: list[str] = parts[:-1]) -> None:
                        if journal is not None:
                            journal(p, None if aside is None else "/".join([*parent, aside]))
                    swap_into_place(sfd, parts[-1], dfd, parts[-1], noting=noting)
                    result.replaced.append(p)
                else:
                    move_into_place(sfd, parts[-1], dfd, parts[-1])
                    result.added.append(p)
                os.utime(dfd, ns=(before.st_atime_ns, before.st_mtime_ns))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
    return result


def _exists_nofollow(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
