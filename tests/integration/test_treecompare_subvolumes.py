"""A snapshot whose snapshot directory lives inside the subvolume equals its own restore.

With the README's layout (``/data/.snapshots``), each snapshot holds the earlier snapshots as
empty placeholder directories, which ``btrfs send`` does not carry; a restore drill compared
the trees with them and reported a good backup as damaged (found by the doc test of
docs/verify.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from btrsync.verify.treecompare import describe_tree, diff_trees
from tests.support.loopfs import create_subvolume, send_receive, snapshot


@pytest.mark.btrfs
def test_nested_snapshot_placeholders_are_not_part_of_the_tree(btrfs_fs: Path) -> None:
    data = create_subvolume(btrfs_fs / "data")
    (data / ".snapshots").mkdir()
    (data / "file").write_text("x\n")
    first = snapshot(data, data / ".snapshots" / "s1")
    second = snapshot(data, data / ".snapshots" / "s2")
    assert (second / ".snapshots" / "s1").is_dir()          # the placeholder of s1 inside s2
    create_subvolume(data / "nested")                         # a live nested subvolume, too
    (data / "nested" / "inner").write_text("not part of data\n")
    third = snapshot(data, data / ".snapshots" / "s3")
    (btrfs_fs / "restore").mkdir()
    for snap in (first, second, third):
        received = send_receive(snap, btrfs_fs / "restore")
        assert diff_trees(snap, received) == []
    # a real difference is still one
    (btrfs_fs / "copy").mkdir()
    (btrfs_fs / "copy" / ".snapshots").mkdir()
    (btrfs_fs / "copy" / "file").write_text("y\n")
    for d in ("", ".snapshots"):  # directory times are compared too: the same, but for the file
        st = (second / d).lstat()
        os.utime(btrfs_fs / "copy" / d, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert diff_trees(second, btrfs_fs / "copy") == ["differs: file"]
    os.utime(btrfs_fs / "copy", ns=(0, 0))
    assert diff_trees(second, btrfs_fs / "copy")[0].startswith("differs: . (the top directory's mtime")
    # the live subvolume: nested subvolumes (snapshots too) are not data's entries
    assert sorted(describe_tree(data)) == [".snapshots", "file"]
