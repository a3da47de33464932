"""btrsync snapshot restore (files out of a local snapshot, with metadata) and snapshot rollback
(including its undo), on loopback btrfs."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path
from unittest import mock

import psutil
import pytest

from tests.integration.conftest import World
from tests.integration.test_signals import Child
from tests.support import tree
from tests.support.loopfs import _run, create_subvolume, unmount
from tests.support.otherfs import tmpfs, user_xattrs_supported

pytestmark = pytest.mark.btrfs

_physical_extents = tree.physical_extents


def _extents_or_none(path: Path) -> list[tuple[int, int, int]]:
    try:
        return _physical_extents(path)
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
        return []


def describe(root: Path) -> dict:
    with mock.patch.object(tree, "physical_extents", _extents_or_none):
        d = tree.describe(root)
    d.pop(".")  # the destination directory itself is not restored
    return d


def _populated(world: World) -> Path:
    tree.populate(world.subvol, 13)
    return world.snapshot()


def test_whole_snapshot_on_its_own_filesystem_shares_extents(world: World) -> None:
    snap = _populated(world)
    to = world.src / "copy"
    to.mkdir()
    run = world.cli("snapshot", "restore", str(snap), "--to", str(to), "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["notes"] == [] and doc["reflinked_bytes"] > 8 << 20 and doc["hardlinks"] >= 3
    assert tree.compare(describe(snap), describe(to)) == []  # reflinks, holes, links, everything
    assert sorted(os.listdir(to)) == sorted(os.listdir(snap))  # no work directory left


def test_selected_paths_onto_tmpfs(world: World, tmp_path: Path) -> None:
    snap = _populated(world)
    paths = ["docs", "links", "sparse", "data", "odd names", "modes", "owners", "special"]
    with tmpfs(tmp_path / "fs") as mnt:
        run = world.cli("snapshot", "restore", str(snap), *paths, "--to", str(mnt))
        assert run.code == 0, run.err
        ignore = set(tree.SEND_BEST_EFFORT)
        if user_xattrs_supported(mnt):
            ignore.add("xattrs")
        want = {k: v for k, v in describe(snap).items() if k.split("/")[0] in paths}
        assert tree.compare(want, describe(mnt), ignore=ignore) == []
        assert os.stat(mnt / "links" / "hard-a").st_ino == os.stat(mnt / "docs" / "hard-c").st_ino
        # a single file deep down: its missing parents come with the snapshot's metadata
        run = world.cli("snapshot", "restore", str(snap), "deep/level-00/level-01/level-02", "--to", str(mnt))
        assert run.code == 0, run.err
        got = describe(mnt / "deep")
        full = describe(snap / "deep")
        assert got["level-00"] == full["level-00"] and got["level-00/level-01"] == full["level-00/level-01"]


def test_existing_paths_and_confinement(world: World, tmp_path: Path) -> None:
    (world.subvol / "etc").mkdir()
    (world.subvol / "etc" / "fstab").write_bytes(b"snapshot fstab\n")
    (world.subvol / "etc" / "hosts").write_bytes(b"snapshot hosts\n")
    os.symlink("etc", world.subvol / "etc-link")
    snap = world.snapshot()
    to = tmp_path / "to"
    (to / "etc").mkdir(parents=True)
    (to / "etc" / "fstab").write_bytes(b"mine\n")

    def restore(*args: str):
        return world.cli("snapshot", "restore", str(snap), *args, "--to", str(to))

    assert restore("etc/fstab").code == 2  # exists
    run = restore("etc", "--skip-existing", "--json")
    assert run.code == 0, run.err
    assert (to / "etc" / "fstab").read_bytes() == b"mine\n"
    assert (to / "etc" / "hosts").read_bytes() == b"snapshot hosts\n"
    assert restore("etc/fstab", "--overwrite").code == 0
    assert (to / "etc" / "fstab").read_bytes() == b"snapshot fstab\n"
    # paths out of the snapshot, or through a symlink of the snapshot: refused
    for bad in ("../x", "/etc/fstab", "etc-link/fstab", "nope"):
        run = restore(bad)
        assert run.code == 2, (bad, run.err)
    # a symlink on the way to DIR/PATH is never followed
    outside = tmp_path / "outside"
    outside.mkdir()
    (to / "sub").symlink_to(outside)
    before = sorted(os.listdir(outside))
    (world.subvol / "sub").mkdir()
    (world.subvol / "sub" / "file").write_bytes(b"x")
    snap2 = world.snapshot()
    run = world.cli("snapshot", "restore", str(snap2), "sub/file", "--to", str(to))
    assert run.code == 1 and "symlink" in run.err, run.err
    assert sorted(os.listdir(outside)) == before
    # the symlink itself is copied as a symlink
    assert restore("etc-link").code == 0
    assert os.readlink(to / "etc-link") == "etc"
    assert [n for n in os.listdir(to / "etc") if n.startswith(".btrsync")] == []
    # only read-only snapshots
    assert world.cli("snapshot", "restore", str(world.subvol), "etc", "--to", str(tmp_path)).code == 2


def test_rollback_and_its_undo(world: World) -> None:
    sv = world.subvol
    (sv / "file").write_bytes(b"version 1\n")
    snap = world.snapshot()
    (sv / "file").write_bytes(b"version 2\n")
    (sv / "new").write_bytes(b"made after the snapshot\n")
    run = world.cli("snapshot", "rollback", str(sv), str(snap), "--json")
    assert run.code == 0, run.err
    doc = run.json()
    aside = Path(doc["moved_aside"])
    assert aside.parent == sv.parent and aside.name.startswith("data.rollback-")
    assert (sv / "file").read_bytes() == b"version 1\n" and not (sv / "new").exists()
    assert (aside / "new").exists() and (aside / "file").read_bytes() == b"version 2\n"
    (sv / "file").write_bytes(b"writable\n")  # the rolled-back subvolume is writable
    human = world.cli("snapshot", "rollback", str(sv), str(snap))
    assert human.code == 0 and "to undo" in human.out and "btrfs subvolume delete" in human.out
    second_aside = Path(human.out.split("is now ", 1)[1].split("\n", 1)[0])
    assert second_aside != aside and (second_aside / "file").read_bytes() == b"writable\n"
    # undo the second rollback, then the first, with the exact printed commands
    for line in [ln.strip() for ln in human.out.splitlines() if ln.startswith("  ")]:
        subprocess.run(line, shell=True, check=True, capture_output=True)
    assert (sv / "file").read_bytes() == b"writable\n"
    subprocess.run(["btrfs", "subvolume", "delete", str(sv)], check=True, capture_output=True)
    for line in doc["undo"][1:]:
        subprocess.run(line, shell=True, check=True, capture_output=True)
    assert (sv / "file").read_bytes() == b"version 2\n" and (sv / "new").exists()


def test_rollback_refusals(world: World) -> None:
    sv = world.subvol
    (sv / "f").write_bytes(b"1")
    snap = world.snapshot()
    writable = world.src / "writable"
    _run(["btrfs", "subvolume", "snapshot", str(snap), str(writable)])
    run = world.cli("snapshot", "rollback", str(sv), str(writable))
    assert run.code == 2 and "not a read-only snapshot" in run.err
    # a snapshot of another filesystem (received on the restore btrfs)
    assert world.push().code == 0 and world.receive("latest").code == 0
    run = world.cli("snapshot", "rollback", str(sv), str(world.restore / snap.name))
    assert run.code == 2 and "another btrfs filesystem" in run.err
    # a subvolume mounted on its own
    _run(["mount", "--bind", str(sv), str(sv)])
    try:
        run = world.cli("snapshot", "rollback", str(sv), str(snap))
        assert run.code == 2 and "mount point" in run.err and "subvolid=5" in run.err
    finally:
        unmount(sv)
    # nested subvolumes would be left behind
    create_subvolume(sv / "nested")
    run = world.cli("snapshot", "rollback", str(sv), str(snap))
    assert run.code == 2 and "nested" in run.err
    assert (sv / "f").exists() and sorted(p.name for p in world.src.iterdir() if "rollback" in p.name) == []


@pytest.mark.slow
def test_a_signal_during_rollback_never_leaves_the_subvolume_missing(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (Ctrl-C, an ssh session dropping) while the new subvolume was being snapshotted:
    the original had been moved aside and was not put back, so /home (or the root subvolume) was
    simply gone from its path, and the message said 'cleaned up, run again'.  (The snapshot is
    made slow, as a transaction commit on a busy disk is, by a 'btrfs' first on PATH that waits
    a second before running the real one.)"""
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    (slow / "btrfs").write_text(f'#!/bin/sh\n[ "$1 $2" = "subvolume snapshot" ] && sleep 1\n'
                                f'exec {shutil.which("btrfs")} "$@"\n')
    (slow / "btrfs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}:{os.environ['PATH']}")
    sv = world.subvol
    (sv / "file").write_bytes(b"version 1\n")
    snap = world.snapshot()
    (sv / "file").write_bytes(b"version 2\n")
    child = Child(world, "snapshot", "rollback", str(sv), str(snap))

    def snapshotting() -> bool:
        for p in child.ps.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.cmdline()[-4:-2] == ["subvolume", "snapshot"]:
                    return True
        return False
    child.freeze_when(snapshotting)
    out = child.signal(signal.SIGTERM)
    assert out.code == 143, out.err
    assert (sv / "file").read_bytes() in (b"version 1\n", b"version 2\n"), "the subvolume is gone from its path"
    aside = [p for p in sv.parent.iterdir() if p.name.startswith("data.rollback-")]
    assert (sv / "file").read_bytes() == b"version 1\n" and len(aside) == 1, (aside, out.err)


def test_paths_that_are_hard_links_to_each_other_stay_one_file(world: World, tmp_path: Path) -> None:
    """PATH items 'a.txt' and 'dir' where dir/b is a hard link of a.txt: the link table pointed
    into the first item's work directory, removed once it was placed, so the second item failed
    (exit 1, half restored).  Links follow the copy to its place."""
    (world.subvol / "dir").mkdir()
    (world.subvol / "a.txt").write_text("one inode, two names")
    os.link(world.subvol / "a.txt", world.subvol / "dir" / "b")
    snap = world.snapshot()
    to = tmp_path / "to"
    to.mkdir()
    run = world.cli("snapshot", "restore", str(snap), "a.txt", "dir", "--to", str(to))
    assert run.code == 0, run.err
    assert (to / "a.txt").stat().st_ino == (to / "dir" / "b").stat().st_ino
    assert (to / "dir" / "b").read_text() == "one inode, two names"
    assert sorted(os.listdir(to)) == ["a.txt", "dir"]
