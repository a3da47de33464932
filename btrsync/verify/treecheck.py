"""Compare a restored tree with the tree its chain's file indexes record.

A restore drill without the original snapshot (it was pruned, or the drill runs on another host)
still has something exact to compare with: the file index of every link of the chain, written at
push from the parser's events of the very stream that was sent, materialised into the tree
``btrfs receive`` must have built (``fileindex/tree.py``), for a full and an incremental alike.
Every path is compared by ``lstat``: type, size, permissions, owner, mtime, symlink target,
device number, extended attributes and, for non-directories, the hard-link count, the top
directory included: an incremental creates and renames its temporary ``o<ino>-<gen>-<n>`` entries
there and re-sends the top directory's times only when they changed in the source, so plain
``btrfs receive`` leaves that mtime at the time of the receive, but ``btrsync receive`` sets it
to the snapshot's (``ops/receive.py``).  File contents
are not read here: they are covered by the per-chunk hashes, AEAD tags and the stream's CRC32C
that the replay checks, and by the original-snapshot comparison when the snapshot exists.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from btrsync.fileindex.summary import digest_records, disk_kind, disk_record
from btrsync.fileindex.tree import FileTree, Inode
from btrsync.verify.treecompare import xattrs_of

MAX_SHOWN = 20


def _disk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """``(relative path, lstat)`` of the root ('') and everything under it."""
    yield "", os.lstat(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root), os.lstat(full)


def _mismatches(path: str, full: str, st: os.stat_result, ino: Inode) -> Iterator[str]:
    kind = disk_kind(st.st_mode)
    if kind != ino.kind:
        yield f"type {kind} restored, {ino.kind} recorded"
        return
    if kind == "l":
        target = os.readlink(full)
        if target != ino.target:
            yield f"symlink target {target!r} restored, {ino.target!r} recorded"
    else:
        if stat.S_IMODE(st.st_mode) != ino.mode:
            yield f"mode {stat.S_IMODE(st.st_mode):04o} restored, {ino.mode:04o} recorded"
        if kind == "f" and st.st_size != ino.size:
            yield f"size {st.st_size} restored, {ino.size} recorded"
        if kind in ("c", "b") and st.st_rdev != ino.rdev:
            yield f"device {st.st_rdev:#x} restored, {ino.rdev:#x} recorded"
    if (st.st_uid, st.st_gid) != (ino.uid, ino.gid):
        yield f"owner {st.st_uid}:{st.st_gid} restored, {ino.uid}:{ino.gid} recorded"
    if ino.mtime is not None and st.st_mtime_ns != ino.mtime_ns:
        yield f"mtime {st.st_mtime_ns} restored, {ino.mtime_ns} recorded"
    if kind != "d" and path and st.st_nlink != ino.nlink:
        yield f"{st.st_nlink} hard links restored, {ino.nlink} recorded"
    got = xattrs_of(full)
    if got != ino.xattrs:
        names = sorted(got.keys() ^ ino.xattrs.keys()) or sorted(k for k in got if got[k] != ino.xattrs[k])
        yield f"extended attributes differ ({', '.join(names)})"


def compare_with_index(tree: FileTree, root: Path) -> tuple[list[str], dict[str, Any]]:
    """The differences between ``root`` and ``tree`` (at most ``MAX_SHOWN`` lines, then a count),
    and the tree summary of ``root`` (``fileindex/summary.py``) from the same walk."""
    recorded = dict(tree.walk())
    problems: list[str] = []
    records: list[tuple[str, bytes]] = []
    for path, st in _disk(root):
        full = os.path.join(root, path) if path else str(root)
        if path:
            records.append((path, disk_record(path, full, st)))
        node = recorded.pop(path, None)
        shown = path or "/"
        if node is None:
            problems.append(f"{shown}: restored, but not in the file index")
            continue
        problems += [f"{shown}: {m}" for m in _mismatches(path, full, st, node.inode)]
    problems.sort()
    problems += [f"{p}: in the file index, missing from the restore" for p in sorted(recorded)]
    if len(problems) > MAX_SHOWN:
        problems = problems[:MAX_SHOWN] + [f"... and {len(problems) - MAX_SHOWN} more differences"]
    return problems, digest_records(records)
