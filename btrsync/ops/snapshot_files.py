"""Files out of a local snapshot (``snapshot restore``) and subvolume rollback (``snapshot rollback``).

snapshot restore SNAPSHOT [PATH...] --to DIR::

    each PATH (default: every top-level entry of the snapshot) is copied to DIR/PATH:
      source walked from the snapshot's root descriptor, nothing followed (restore/snapcopy.py)
      missing parents of DIR/PATH are created with the snapshot's metadata; an existing parent
      that is a symlink is refused (never followed)
      the copy is made in DIR/<parent>/.btrsync-restore.<name>.<pid> (0700), then put in place:
      new (rename, no replace) | --overwrite (exchange) | --skip-existing (merge: only missing paths)

snapshot rollback SUBVOL SNAPSHOT::

    checks: SUBVOL a subvolume, not a mount point, without nested subvolumes; SNAPSHOT a
    read-only subvolume of the same filesystem
    mv SUBVOL SUBVOL.rollback-<UTC stamp>          (put back if the next step fails)
    btrfs subvolume snapshot SNAPSHOT SUBVOL       (writable)
    → the undo commands, exactly
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from btrsync.btrfs import rollback as rb
from btrsync.btrfs import subvolume as sv
from btrsync.errors import SnapshotError, UsageError
from btrsync.fdio import syncfs
from btrsync.restore import RestoreError, place
from btrsync.restore.meta import Notes
from btrsync.restore.paths import DIR_FLAGS, PathRefused, Tree, split
from btrsync.restore.snapcopy import Copier
from btrsync.signals import deferred
from btrsync.snapshots.naming import format_stamp

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# snapshot restore


@dataclass
class RestoredPath:
    path: str
    to: str
    action: str  # restored | replaced | merged
    added: int | None = None
    kept: int | None = None
    kept_examples: list[str] = field(default_factory=list)


@dataclass
class SnapshotRestoreResult:
    snapshot: str
    to: str
    paths: list[RestoredPath] = field(default_factory=list)
    entries: int = 0
    files: int = 0
    bytes: int = 0
    reflinked_bytes: int = 0
    hardlinks: int = 0
    created_parents: list[str] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)


def _items(src: Tree, paths: list[str]) -> list[list[str]]:
    if not paths:
        return [[name] for name in sorted(os.listdir(src.root_fd))]
    items: list[list[str]] = []
    for raw in paths:
        if raw.startswith("/"):
            raise UsageError(f"PATH {raw!r} is absolute: paths are relative to the snapshot's root "
                             f"(e.g. {raw.lstrip('/')!r})")
        try:
            parts = split(raw.rstrip("/"))
        except PathRefused as exc:
            raise UsageError(f"PATH {raw!r}: {exc.reason}; paths are relative to the snapshot's root") from None
        items.append(parts)
    for a in items:
        for b in items:
            if a is not b and b[:len(a)] == a:
                raise UsageError(f"{'/'.join(b)!r} is inside {'/'.join(a)!r}: name each path once")
    return items


def snapshot_restore(snapshot: Path, paths: list[str], to: Path, *, existing: str = "refuse") -> SnapshotRestoreResult:
    info = sv.subvolume_info(snapshot)
    if not info.readonly:
        raise UsageError(f"{snapshot} is not a read-only snapshot (copy from a writable subvolume with cp -a)")
    if not to.is_dir():
        raise UsageError(f"{to} is not a directory; create it first")
    notes = Notes()
    copier = Copier(notes)
    result = SnapshotRestoreResult(str(snapshot), str(to))
    snap_fd = os.open(snapshot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    to_fd = os.open(to, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with Tree(snap_fd) as src:
            items = _items(src, paths)
            for parts in items:
                rel = "/".join(parts)
                try:
                    sdir, name = src.parent(rel)
                    os.stat(name, dir_fd=sdir, follow_symlinks=False)
                except PathRefused as exc:
                    raise UsageError(f"{rel!r} in {snapshot}: {exc.reason}") from None
                except (FileNotFoundError, NotADirectoryError):
                    raise UsageError(f"{snapshot} has no {rel!r}") from None
            for parts in items:
                result.paths.append(_restore_one(src, parts, to, to_fd, existing, copier, result))
    finally:
        copier.close()
        os.close(snap_fd)
        os.close(to_fd)
    st = copier.stats
    result.entries, result.files, result.bytes = st.entries, st.files, st.bytes
    result.reflinked_bytes, result.hardlinks = st.caps.reflinked, st.hardlinks
    result.notes = notes.as_list()
    return result


def _dest_parent(src: Tree, parts: list[str], to: Path, to_fd: int, copier: Copier,
                 result: SnapshotRestoreResult) -> tuple[int, list[tuple[int, os.stat_result, str]]]:
    """An owned descriptor of DIR/<parent of PATH>, creating missing directories as they are in
    the snapshot; returns it and the created ones (descriptor, snapshot stat, path) whose times
    are set once the restore below them is done."""
    fd = os.dup(to_fd)
    created: list[tuple[int, os.stat_result, str]] = []
    try:
        for i, part in enumerate(parts[:-1]):
            rel = "/".join(parts[:i + 1])
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                sst = src.lstat(rel)
                os.mkdir(part, 0o700, dir_fd=fd)
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
                created.append((os.dup(nxt), sst, rel))
                result.created_parents.append(str(to / rel))
            except OSError as exc:
                what = "a symlink (never followed)" if os.path.islink(to / rel) else exc.strerror
                raise RestoreError(f"cannot restore {'/'.join(parts)!r}: {to / rel} is {what}") from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        for cfd, _st, _rel in created:
            os.close(cfd)
        raise
    return fd, created


def _restore_one(src: Tree, parts: list[str], to: Path, to_fd: int, existing: str, copier: Copier,
                 result: SnapshotRestoreResult) -> RestoredPath:
    rel, name = "/".join(parts), parts[-1]
    dest = to / rel
    pfd, created = _dest_parent(src, parts, to, to_fd, copier, result)
    work = f".btrsync-restore.{os.getpid()}.{secrets.token_hex(4)}"  # short: any name fits beside it
    try:
        try:
            there = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is not None:
            if existing == "refuse":
                raise UsageError(f"{dest} already exists; pass --overwrite to replace it or --skip-existing "
                                 "to add only what is missing")
            if existing == "skip" and not stat.S_ISDIR(there.st_mode):
                return RestoredPath(rel, str(dest), "merged", 0, 1, [rel])
            if existing == "overwrite" and (why := place.foreign_within(pfd, name)):
                raise UsageError(f"{dest} cannot be replaced: {why}")
        os.mkdir(work, 0o700, dir_fd=pfd)
        try:
            wfd = place.open_own_dir(pfd, work)
            try:
                sdir, sname = src.parent(rel)
                sdir = os.dup(sdir)
                try:
                    copier.copy_entry(sdir, sname, wfd, name, rel)
                finally:
                    os.close(sdir)
                # durable before it replaces anything, and its placing durable before "restored":
                # a crash must not leave empty files where the old ones were
                syncfs(wfd)
                if there is None:
                    place.move_into_place(wfd, name, pfd, name)
                    copier.placed(wfd, name, pfd)
                    syncfs(pfd)
                    return RestoredPath(rel, str(dest), "restored")
                if existing == "overwrite":
                    place.swap_into_place(wfd, name, pfd, name)
                    copier.placed(wfd, name, pfd)
                    syncfs(pfd)
                    return RestoredPath(rel, str(dest), "replaced")
                merged = place.merge_tree(wfd, name, pfd, name)
                copier.placed(wfd, name, None)  # what stays in place may be the old file: never link to it
                syncfs(pfd)
                return RestoredPath(rel, str(dest), "merged", merged.added, merged.kept, merged.kept_examples)
            finally:
                os.close(wfd)
        finally:
            place.discard(pfd, work, dest.parent)
    finally:
        os.close(pfd)
        for cfd, sst, crel in reversed(created):  # parents made here: the snapshot's metadata, times last
            try:
                copier._meta(sst, copier._xattrs_of(src.xattr_path(crel)), fd=cfd, rel=crel)
            finally:
                os.close(cfd)


# --------------------------------------------------------------------------------------------------
# rollback


@dataclass
class RollbackResult:
    subvolume: str
    snapshot: str
    moved_aside: str
    undo: list[str]


def rollback(subvol: Path, snapshot: Path, *, now: datetime | None = None) -> RollbackResult:
    subvol = Path(os.path.abspath(subvol))
    snapshot = Path(os.path.abspath(snapshot))
    if os.path.islink(subvol) or os.path.islink(snapshot):
        raise UsageError("name SUBVOL and SNAPSHOT by their real paths, not through symlinks")
    cur = sv.subvolume_info(subvol)
    snap = sv.subvolume_info(snapshot)
    if subvol == snapshot or cur.uuid == snap.uuid:
        raise UsageError(f"{snapshot} is {subvol} itself")
    if not snap.readonly:
        raise UsageError(f"{snapshot} is not a read-only snapshot; roll back only to a read-only snapshot "
                         "(btrsync snapshot list shows them)")
    if rb.filesystem_uuid(subvol) != rb.filesystem_uuid(snapshot):
        raise UsageError(f"{snapshot} is on another btrfs filesystem than {subvol}; a rollback snapshots "
                         f"within one filesystem (to bring a backup over, btrsync receive it there first)")
    if rb.is_mount_point(subvol):
        raise UsageError(f"{subvol} is a mount point of its own (mounted with subvol=): it cannot be moved "
                         "aside while mounted. Mount the filesystem's top level (e.g. mount -o subvolid=5 DEVICE "
                         "/mnt/top), roll back there (btrsync snapshot rollback /mnt/top/<subvol> /mnt/top/<snapshot>), "
                         "then remount (or reboot, for the root filesystem)")
    if str(snapshot).startswith(str(subvol) + "/"):
        raise UsageError(f"{snapshot} is inside {subvol}: move your snapshots out of the subvolume first")
    nested = rb.nested_subvolumes(subvol)
    if nested:
        raise UsageError(f"{subvol} holds nested subvolumes ({', '.join(nested[:3])}"
                         f"{', ...' if len(nested) > 3 else ''}); they would stay behind in the old "
                         "subvolume. Move them out of it first")
    stamp = format_stamp(now or datetime.now(UTC))
    aside = subvol.with_name(f"{subvol.name}.rollback-{stamp}")
    n = 0
    while os.path.lexists(aside):
        n += 1
        aside = subvol.with_name(f"{subvol.name}.rollback-{stamp}_{n}")
    log.info("rollback subvolume=%s snapshot=%s aside=%s", subvol, snapshot, aside)
    # a signal (Ctrl-C, a dropped ssh session) waits until both steps are done: between them the
    # subvolume is missing from its path, and a failed snapshot puts the original back
    with deferred():
        try:
            os.rename(subvol, aside)
        except OSError as exc:
            raise SnapshotError(f"cannot move {subvol} aside to {aside}: {exc.strerror}") from None
        try:
            rb.create_writable_snapshot(snapshot, subvol)
        except BaseException:
            if not os.path.lexists(subvol):
                os.rename(aside, subvol)
            raise
    undo = [f"btrfs subvolume delete {shlex.quote(str(subvol))}",
            f"mv -T {shlex.quote(str(aside))} {shlex.quote(str(subvol))}"]
    return RollbackResult(str(subvol), str(snapshot), str(aside), undo)
