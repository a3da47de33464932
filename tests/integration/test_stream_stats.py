"""Tree summaries, change statistics and file-index trees computed from real send streams equal
what is on disk, for a full and an incremental alike; and a tree that differs is reported."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from btrsync.fileindex import records
from btrsync.fileindex.summary import StreamSummary, summary_of_disk
from btrsync.fileindex.tree import FileTree, parent_clone_paths
from btrsync.sendstream.parser import StreamParser
from btrsync.sendstream.stats import ChangeStats
from btrsync.verify.treecheck import compare_with_index
from tests.support import tree
from tests.support.loopfs import create_subvolume, snapshot

pytestmark = pytest.mark.btrfs


def _events(argv: list[str]) -> list:
    data = subprocess.run(argv, check=True, capture_output=True).stdout
    p = StreamParser()
    events = []
    for i in range(0, len(data), 1 << 20):
        events += p.feed(data[i:i + (1 << 20)])
    p.finish()
    return events


@pytest.mark.parametrize("proto", ["1", "2"])
def test_the_summary_of_a_full_stream_equals_the_snapshot_on_disk(btrfs_fs: Path, proto: str) -> None:
    sub = btrfs_fs / "data"
    create_subvolume(sub)
    tree.populate(sub, 11)
    tree.mutate(sub, 11, 1)  # renames, deletions, hard links, odd names
    snap = btrfs_fs / "snap"
    snapshot(sub, snap, readonly=True)
    summary = StreamSummary()
    for ev in _events(["btrfs", "send", "--proto", proto, "-q", str(snap)]):
        summary.add(ev)
    assert summary.reason is None
    expected = summary_of_disk(snap)
    assert summary.result() == expected and expected["entries"] > 20


def test_the_summary_gives_up_on_a_stream_that_is_not_a_full(btrfs_fs: Path) -> None:
    sub = btrfs_fs / "data"
    create_subvolume(sub)
    snapshot(sub, btrfs_fs / "a", readonly=True)
    (sub / "x").write_bytes(b"x")
    snapshot(sub, btrfs_fs / "b", readonly=True)
    summary = StreamSummary()
    for ev in _events(["btrfs", "send", "-q", "-p", str(btrfs_fs / "a"), str(btrfs_fs / "b")]):
        summary.add(ev)
    assert summary.result() is None and "does not begin a full" in (summary.reason or "")


def _replay(chain: list[tuple[list, str | None]]) -> FileTree:
    """A FileTree from the index records of real streams, as ``ls`` and drills build it."""
    ft = FileTree()
    for events, parent_uuid in chain:
        recs = [records.decode(records.encode(ev)) for ev in events]
        head = recs[0][4]
        ft.apply_link(recs, where="test", uuid=str(head["uuid"]), parent_uuid=parent_uuid,
                      parent_clone_paths=sorted(parent_clone_paths(recs, parent_uuid)))
    return ft


def test_an_incremental_chain_s_index_tree_equals_the_snapshot_and_differences_are_named(btrfs_fs: Path) -> None:
    sub = btrfs_fs / "data"
    create_subvolume(sub)
    tree.populate(sub, 5)
    snaps = []
    for g in range(3):
        if g:
            tree.mutate(sub, 5, g)
        snaps.append(btrfs_fs / f"s{g}")
        snapshot(sub, snaps[-1], readonly=True)
    full = _events(["btrfs", "send", "--proto", "2", "-q", str(snaps[0])])
    chain = [(full, None)]
    for g in (1, 2):
        ev = _events(["btrfs", "send", "--proto", "2", "-q", "-p", str(snaps[g - 1]), str(snaps[g])])
        chain.append((ev, str(ev[0].attrs["clone_uuid"])))
    ft = _replay(chain)
    problems, summary = compare_with_index(ft, snaps[2])
    assert problems == []
    assert summary == summary_of_disk(snaps[2]) and summary["entries"] > 20
    # the same index against the tree one generation earlier: every difference is named by path
    problems, _ = compare_with_index(ft, snaps[1])
    assert problems and all(": " in p or p.startswith("... and ") for p in problems)
    # a writable copy with one file changed in a way only metadata shows
    copy = btrfs_fs / "copy"
    snapshot(snaps[2], copy, readonly=False)
    victim = next(p for p in sorted(copy.rglob("*")) if p.is_file() and not p.is_symlink())
    os.chmod(victim, 0o640 if (victim.stat().st_mode & 0o777) != 0o640 else 0o600)
    os.setxattr(victim, "user.planted", b"1")
    (copy / "stray").write_bytes(b"")
    problems, _ = compare_with_index(ft, copy)
    rel = str(victim.relative_to(copy))
    assert any(p.startswith(f"{rel}: mode") for p in problems), problems
    assert any(p.startswith(f"{rel}: extended attributes differ (user.planted)") for p in problems), problems
    assert "stray: restored, but not in the file index" in problems


def test_change_statistics_of_an_incremental(btrfs_fs: Path) -> None:
    sub = btrfs_fs / "data"
    create_subvolume(sub)
    (sub / "keep").write_bytes(b"k" * 1000)
    (sub / "gone").write_bytes(b"g")
    snapshot(sub, btrfs_fs / "a", readonly=True)
    (sub / "gone").unlink()
    (sub / "new").write_bytes(b"n" * 5000)
    (sub / "dir").mkdir()
    (sub / "keep").rename(sub / "kept")
    snapshot(sub, btrfs_fs / "b", readonly=True)
    stats = ChangeStats()
    for ev in _events(["btrfs", "send", "-q", "-p", str(btrfs_fs / "a"), str(btrfs_fs / "b")]):
        stats.add(ev)
    assert stats.deleted >= 1 and stats.created >= 1 and stats.dirs_created == 1 and stats.renamed >= 1
    assert stats.data_bytes >= 5000
