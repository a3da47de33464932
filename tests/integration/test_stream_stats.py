"""Tree summaries and change statistics computed from real send streams equal what is on disk."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from btrsync.sendstream.parser import StreamParser
from btrsync.sendstream.stats import ChangeStats, TreeSummary, tree_summary_of
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
    summary = TreeSummary()
    for ev in _events(["btrfs", "send", "--proto", proto, "-q", str(snap)]):
        summary.add(ev)
    assert summary.reason is None
    expected = tree_summary_of(snap)
    assert summary.result() == expected and expected["entries"] > 20


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
