"""Restore drills, the use case behind `verify --level restore`: replay a backup's chain into a scratch btrfs
and compare it with the original (``verify/treecompare``) or with its file indexes (``verify/treecheck``).

The scratch filesystem is a sparse image in ``scratch_dir`` (default ``/var/tmp/btrsync-drills``)
on a loop device, always unmounted, detached and deleted afterwards; leftovers of an earlier drill
that was killed (SIGKILL, power cut) are removed before a new one starts, so drills never pile up
loop devices or disk space. A drill holds an exclusive ``flock`` on ``scratch_dir`` itself from
that cleanup to its own, so two drills sharing the directory (two jobs, a manual verify) take
turns, and neither removes the other's live image as a leftover.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from btrsync.btrfs.scratch import scratch_btrfs
from btrsync.btrfs.subvolume import is_subvolume, subvolume_info
from btrsync.catalog.chains import walk_chain
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Catalog, Repository
from btrsync.errors import BtrfsError, BtrsyncError, DamageError, ReceiveFailedError, ReceiveNotDurableError
from btrsync.fileindex import store
from btrsync.fileindex.summary import summary_of_disk
from btrsync.ops.files import tree_of
from btrsync.ops.receive import receive
from btrsync.verify.treecompare import diff_trees
from btrsync.targets.errors import TargetError
from btrsync.verify.treecheck import compare_with_index

log = logging.getLogger(__name__)

PREFIX = "btrsync-drill"
MiB = 1 << 20


@dataclass(slots=True)
class DrillResult:
    backup_id: str
    bytes: int
    differences: list[str]
    compared_with: str | None
    note: str | None = None


def _mount_point(field: bytes) -> str:
    """A mount point as /proc/self/mountinfo writes it: raw bytes, with space, tab, newline and
    backslash as octal escapes (a non-ASCII name must come back as the same path)."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


def clean_leftovers(scratch_dir: Path) -> list[str]:
    """Unmount, detach and delete what earlier drills left in ``scratch_dir``; returns what went."""
    removed: list[str] = []
    if not scratch_dir.is_dir():
        return removed
    root = str(scratch_dir.resolve()) + "/"
    mounts = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = _mount_point(line.split()[4])
            if point.startswith(root) and Path(point).name.startswith(PREFIX):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        removed.append(f"mount {point}")
    listing = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"],
                             capture_output=True, text=True, check=False)
    if listing.returncode == 0 and listing.stdout.strip():
        for dev in json.loads(listing.stdout).get("loopdevices", []):
            back = (dev.get("back-file") or "").removesuffix(" (deleted)")
            if back.startswith(root) and Path(back).name.startswith(PREFIX):
                subprocess.run(["losetup", "-d", dev["name"]], capture_output=True, check=False)
                removed.append(f"loop {dev['name']}")
    for entry in scratch_dir.iterdir():
        if not entry.name.startswith(PREFIX):
            continue
        if entry.is_dir() and not os.path.ismount(entry):
            try:
                entry.rmdir()
            except OSError:
                continue
        elif entry.is_file():
            entry.unlink(missing_ok=True)
        removed.append(f"file {entry}")
    if removed:
        log.warning("removed leftovers of an earlier restore drill: %s", ", ".join(removed))
    return removed


@contextmanager
def scratch_lock(scratch_dir: Path) -> Iterator[None]:
    """Exclusive use of ``scratch_dir`` (a flock on the directory: no lock file to leave behind)."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(scratch_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def local_original(snapshot_dirs: tuple[Path, ...], m: Manifest, passed_over: list[str] | None = None) -> Path | None:
    """The local read-only snapshot this backup was made from, if it still exists unchanged.

    A snapshot takes its ctransid from its source, so it is at most the transaction that created
    it (otransid); one made writable, changed and made read-only again has a later ctransid (a flip
    of the flag alone, snapshotting or sending it do not change it), and would make an intact
    backup look damaged: it is passed over (and said so in ``passed_over``). A received copy cannot
    be changed without losing its received uuid."""
    for directory in snapshot_dirs:
        path = directory / m.snapshot
        if is_subvolume(path):
            info = subvolume_info(path)
            if info.stream_uuid != m.snapshot_uuid:
                continue  # a subvolume of the same name, not this backup's snapshot
            why = None
            if not info.readonly:
                why = "is writable now"
            elif info.received_uuid is None and info.ctransid > info.otransid:
                why = (f"was changed after it was taken (ctransid {info.ctransid}, taken in transaction "
                       f"{info.otransid})")
            if why is None:
                return path
            if passed_over is not None:
                passed_over.append(f"{path} {why}, so it was not compared with")
    return None


class DrillUnavailable(BtrsyncError):
    """The drill's scratch filesystem could not be set up (the scratch directory is read-only, not
    a directory, on a full filesystem, no loop device...) or ran out of space, or the target or this
    machine failed during the drill (a network outage past the retries, an I/O error reading the
    local original): the backup was not tried through, so this is no finding about it, and no pass
    either."""


FULL_BELOW = 64 * MiB  # free space under which the filesystem holding the image counts as full


def _out_of_space(exc: ReceiveFailedError, scratch_dir: Path) -> bool:
    """btrfs receive failed because the image, or the filesystem holding it, filled up (a stream
    cannot cause that by being damaged: it is authenticated, and holds no more than it writes)."""
    if "No space left on device" in str(exc):
        return True
    try:
        st = os.statvfs(scratch_dir)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_BELOW


def drill(repo: Repository, catalog: Catalog, backup_id: str, scratch_dir: Path,
          snapshot_dirs: tuple[Path, ...] = (), *, workers: int = 2) -> DrillResult:
    by_id = {m.backup_id: m for m in catalog.manifests}
    chain = walk_chain(by_id, by_id[backup_id], {d.backup_id for d in catalog.damaged})
    stream = sum(m.stream_bytes for m in chain)
    size = max(512 * MiB, 2 * stream + 256 * MiB)
    with ExitStack() as stack:
        try:
            stack.enter_context(scratch_lock(scratch_dir))
            clean_leftovers(scratch_dir)
            mnt = stack.enter_context(scratch_btrfs(scratch_dir, str(size), PREFIX))
        except (OSError, BtrfsError) as exc:
            raise DrillUnavailable(
                f"the restore drill could not set up its scratch filesystem in {scratch_dir}: {exc}; give "
                "--scratch-dir a writable directory on a local filesystem with room for a sparse image "
                f"(up to {size // MiB} MiB of it may be written)") from None
        try:
            return _drill(repo, chain, mnt, snapshot_dirs, stream, workers)
        except ReceiveNotDurableError as exc:  # the scratch disk's fault, never the stream's
            raise DrillUnavailable(
                f"the restore drill's scratch filesystem in {scratch_dir} could not write what was received "
                f"({exc}); this says nothing about the backup: give --scratch-dir a local filesystem with room "
                f"for a sparse image (up to {size // MiB} MiB of it may be written)") from None
        except ReceiveFailedError as exc:
            if not _out_of_space(exc, scratch_dir):
                raise
            raise DrillUnavailable(
                f"the restore drill ran out of space in {scratch_dir}: {exc}; give --scratch-dir a "
                f"filesystem with room for a sparse image (up to {size // MiB} MiB of it may be written)") from None
        except (TargetError, BtrfsError, OSError) as exc:
            # the target (after its retries), this machine or its btrfs failed, not the backup: what
            # the backup holds is damage only when it is read and does not check out (DamageError,
            # a stream btrfs receive refuses, a tree that differs), exactly as at --level data
            raise DrillUnavailable(f"the restore drill could not complete: {exc}; this says nothing about "
                                   "the backup: run it again") from None


def _drill(repo: Repository, chain: list[Manifest], mnt: Path, snapshot_dirs: tuple[Path, ...],
           stream: int, workers: int) -> DrillResult:
    m = chain[-1]
    result = receive(repo, m.backup_id, mnt, workers=workers)
    restored = Path(result.path)
    passed_over: list[str] = []
    original = local_original(snapshot_dirs, m, passed_over)
    if original is not None:
        return DrillResult(m.backup_id, stream, diff_trees(original, restored), str(original))
    compared = compare_without_original(repo, chain, restored, stream)
    if passed_over:
        compared.note = "; ".join(passed_over + ([compared.note] if compared.note else []))
    return compared


def compare_without_original(repo: Repository, chain: list[Manifest], restored: Path, stream: int) -> DrillResult:
    """Compare with the tree the chain's file indexes record and, for a full, the summary in its
    manifest; a backup pushed before either existed is only checked by the replay itself."""
    m = chain[-1]
    differences: list[str] = []
    compared: list[str] = []
    got = None
    missing = [x.backup_id for x in chain if not x.files and not store.has_index(repo, x)]  # or written later
    if not missing:
        compared.append("the file indexes recorded at push time")
        try:
            tree, _ = tree_of(repo, chain)
        except DamageError as exc:
            differences.append(f"the file index cannot be replayed: {exc}")
        else:
            differences, got = compare_with_index(tree, restored)
    if m.tree:
        compared.append("the tree summary recorded at push time")
        if got is None:
            got = summary_of_disk(restored)
        differences += [f"tree summary {k}: restored {got[k]}, recorded at push time {m.tree.get(k)}"
                        for k in ("entries", "bytes", "sha256") if got[k] != m.tree.get(k)]
    if compared:
        return DrillResult(m.backup_id, stream, differences, " and ".join(compared))
    return DrillResult(m.backup_id, stream, [], None,
                       "received and checked by btrfs receive only: no local snapshot to compare with, no tree "
                       f"summary, and no file index for {', '.join(missing)} (`btrsync index` writes it)")
