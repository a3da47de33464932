"""The verification and restore paths used the way a careless or hostile operator would: damaged
or planted local caches, destinations that cannot be written, damaged indexes, concurrent runs.
Each case must fail closed, say what happened, and lose nothing. Real btrfs, real targets."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import zstandard

from btrsync.btrfs.receive import ReceiveProcess
from btrsync.btrfs.scratch import scratch_btrfs
from btrsync.btrfs.subvolume import SubvolumeInfo, subvolume_info
from btrsync.catalog import layout
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.errors import ReceiveFailedError
from btrsync.ops import files
from btrsync.ops.push import attempt as attempt_mod
from btrsync.verify.treecompare import diff_trees
from btrsync.restore import place
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import World
from tests.integration.test_signals import Child
from tests.support import tree
from tests.support.deaddrill import plant_dead_drill
from tests.support.faultfs import mounted_for_test

pytestmark = pytest.mark.btrfs


def _repo(world: World) -> Repository:
    return Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))


def _small_backup(world: World) -> None:
    (world.subvol / "a").write_bytes(b"x" * 1000)
    (world.subvol / "b").write_bytes(b"y" * 10)
    os.chmod(world.subvol / "b", 0o640)
    world.snapshot()
    assert world.push().code == 0


# --- the local listing cache of ls/find ----------------------------------------------------------


def test_a_damaged_listing_cache_is_never_shown(world: World) -> None:
    """Every single-bit flip of the cached listing: ls lists what the file index says, never
    what the damaged cache says (a cache without a checksum decoded to other sizes and modes)."""
    _small_backup(world)
    repo = _repo(world)
    chain = files.chain_for(repo, "latest")
    truth = files.listing(repo, chain, None)
    [cache] = files.listing(repo, chain, world.state) and list((world.state / "files").rglob("*.json.zst"))
    good = cache.read_bytes()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x04
        cache.write_bytes(bytes(bad))
        assert files.listing(repo, chain, world.state) == truth, f"byte {i} flipped"


def test_a_listing_cache_that_is_not_a_plain_file_is_ignored_not_followed(world: World, tmp_path: Path) -> None:
    _small_backup(world)
    run = world.cli("ls", "latest", "--from", world.url, "--json")
    assert run.code == 0, run.err
    truth = run.json()
    [cache] = list((world.state / "files").rglob("*.json.zst"))
    doc = json.loads(zstandard.ZstdDecompressor().decompress(cache.read_bytes()))

    # a directory, a JSON document of another shape: ls still lists the backup (exit 0)
    cache.unlink()
    cache.mkdir()
    run = world.cli("ls", "latest", "--from", world.url, "--json")
    assert run.code == 0 and run.json() == truth, run.err
    cache.rmdir()
    cache.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(b"[1, 2]"))
    run = world.cli("ls", "latest", "--from", world.url, "--json")
    assert run.code == 0 and run.json() == truth, run.err

    # a symlink to a listing elsewhere (same key, other entries) is not followed, nor written through
    forged = dict(doc, entries=[row[:2] + [666] + row[3:] for row in doc["entries"]])
    elsewhere = tmp_path / "elsewhere.json.zst"
    elsewhere.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(json.dumps(forged).encode()))
    before = elsewhere.read_bytes()
    cache.unlink()
    cache.symlink_to(elsewhere)
    run = world.cli("ls", "latest", "--from", world.url, "--json")
    assert run.code == 0 and run.json() == truth, run.err
    assert elsewhere.read_bytes() == before and not cache.is_symlink()

    # a symlink planted where the cache is written first: the file it points to is left alone
    cache.unlink()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for pid in {os.getpid(), os.getppid()}:
        cache.with_name(f".{cache.name}.{pid}").symlink_to(victim)
    run = world.cli("ls", "latest", "--from", world.url, "--json")
    assert run.code == 0 and run.json() == truth, run.err
    assert victim.read_bytes() == b"precious"

    # the cache directory cannot be made (a file in its place): ls works, without a cache
    for entry in cache.parent.iterdir():
        entry.unlink()
    cache.parent.rmdir()
    cache.parent.write_bytes(b"")
    run = world.cli("ls", "latest", "--from", world.url, "--json")
    assert run.code == 0 and run.json() == truth, run.err


# --- restore into a destination that cannot take it ---------------------------------------------


def _tmpfs(path: Path, options: str) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)


def test_restore_into_a_read_only_or_full_directory_says_so_and_leaves_nothing(world: World, tmp_path: Path) -> None:
    (world.subvol / "d").mkdir()
    (world.subvol / "d" / "big").write_bytes(os.urandom(1 << 20))
    (world.subvol / "small").write_bytes(b"s")
    world.snapshot()
    assert world.push().code == 0
    read_only, full = tmp_path / "ro", tmp_path / "full"
    _tmpfs(read_only, "ro,size=1m")
    _tmpfs(full, "size=256k")
    try:
        # read-only: a mount, or a read-only snapshot; whole backups and selected paths alike
        for to, paths in [(read_only, []), (read_only, ["d"]), (world.snapshots[0], []), (world.snapshots[0], ["d"])]:
            run = world.cli("restore", "latest", *paths, "--from", world.url, "--to", str(to))
            assert run.code == 1, run.err
            assert f"cannot restore into {to}: Read-only file system" in run.err
        assert os.listdir(read_only) == [] and sorted(os.listdir(world.snapshots[0])) == ["d", "small"]
        # full: the whole backup and one big selected file, then a small one fits
        for paths in ([], ["d/big"]):
            run = world.cli("restore", "latest", *paths, "--from", world.url, "--to", str(full))
            assert run.code == 1 and "No space left on device" in run.err, run.err
            assert os.listdir(full) == []
        run = world.cli("restore", "latest", "small", "--from", world.url, "--to", str(full))
        assert run.code == 0, run.err
        assert (full / world.snapshots[0].name / "small").read_bytes() == b"s"
    finally:
        for mnt in (read_only, full):
            subprocess.run(["umount", str(mnt)], check=False)


def test_a_restore_running_into_the_same_place_is_refused_not_removed(world: World, tmp_path: Path) -> None:
    """A second restore of the same snapshot into the same DIR took the first one's live work
    directory for leftovers and removed it under it. Here the first restore's work directory is
    held as a restore holds it (a flock on its marker, taken by this process); the second is
    refused with exit 11 and touches nothing; once the first is gone its leftovers are removed."""
    (world.subvol / "f").write_bytes(b"1")
    world.snapshot()
    assert world.push().code == 0
    name = world.snapshots[0].name
    to = tmp_path / "to"
    work = to / f".btrsync-restore.{name}"
    (work / "tree").mkdir(parents=True)
    (work / "tree" / "half").write_bytes(b"written by the first restore")
    (work / "btrsync-restore.json").write_text(json.dumps({"backup": "x", "pid": 4242, "started": "then"}))
    fd = os.open(work / "btrsync-restore.json", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for extra in ([], ["f"], ["--overwrite"]):
            run = world.cli("restore", "latest", *extra, "--from", world.url, "--to", str(to))
            assert run.code == 11 and "another restore is writing" in run.err and "pid 4242" in run.err, run.err
            assert (work / "tree" / "half").read_bytes() == b"written by the first restore"
            assert sorted(os.listdir(to)) == [work.name]
    finally:
        os.close(fd)  # the first restore died
    run = world.cli("restore", "latest", "--from", world.url, "--to", str(to))
    assert run.code == 0 and "leftovers of an interrupted restore" in run.err, run.err
    assert sorted(os.listdir(to)) == [name] and (to / name / "f").read_bytes() == b"1"


# --- btrsync index over an index that exists but is damaged -------------------------------------


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_index_over_a_damaged_index_rewrites_it_or_says_it_cannot(world: World) -> None:
    """``index`` called a damaged index 'present' (exit 0) while ls failed on it: now an index no
    manifest pins (written by ``index`` for an older backup) is rewritten from the stream, and a
    pinned one is reported damaged (exit 4) with what can still be done."""
    _small_backup(world)
    [backup] = world.listing()
    part = world.target_dir / "data" / backup["id"] / "files-000000"
    _flip(part)
    run = world.cli("index", "latest", "--from", world.url, "--json")
    assert run.code == 4 and "pins it, so it cannot be rewritten" in run.err, run.err
    assert json.loads(run.out.split("\n]\n")[0] + "\n]")[0]["status"] == "damaged"

    repo = _repo(world)  # as if pushed before file indexes: nothing pins the index `index` writes
    [m] = repo.manifests()
    repo.commit(dataclasses.replace(m, files=None))
    part.unlink()
    run = world.cli("index", "latest", "--from", world.url, "--json")
    assert run.code == 0 and run.json()[0]["status"] == "written", run.err
    _flip(part)
    run = world.cli("index", "latest", "--from", world.url, "--json")
    assert run.code == 0 and run.json()[0]["status"] == "rewritten", run.err
    shutil.rmtree(world.state / "files", ignore_errors=True)  # no cached listing: ls reads the index
    run = world.cli("ls", "latest", "--from", world.url)
    assert run.code == 0 and run.out.split() == ["a", "b"], run.err
    run = world.cli("index", "latest", "--from", world.url, "--json")
    assert run.code == 0 and run.json()[0]["status"] == "present", run.err


# --- restore drills --------------------------------------------------------------------------------


def _drill(world: World, scratch: Path, *args: str) -> tuple[int, dict, str]:
    run = world.cli("verify", "--from", world.url, "--level", "restore", "--json", "--scratch-dir", str(scratch),
                    *args)
    return run.code, json.loads(run.out.split("\n}\n")[0] + "\n}"), run.err


@pytest.mark.slow
def test_a_drill_uses_the_file_indexes_that_index_wrote_for_older_backups(world: World, tmp_path: Path) -> None:
    """The drill of a backup pushed before file indexes told the operator to run 'btrsync index',
    and after it still compared with nothing, since no manifest pins those indexes."""
    tree.populate(world.subvol, 5)
    world.snapshot()
    tree.mutate(world.subvol, 5, 1)
    world.snapshot()
    assert world.push().code == 0
    repo = _repo(world)
    for m in repo.manifests():
        repo.commit(dataclasses.replace(m, files=None))
        for part in (world.target_dir / "data" / m.backup_id).glob("files-*"):
            part.unlink()
    code, doc, err = _drill(world, tmp_path / "d", "latest")
    assert code == 0, err
    assert doc["summary"]["drill"]["drills"][0]["compared_with"] is None
    assert "`btrsync index` writes it" in doc["backups"][0]["note"]
    assert world.cli("index", "latest", "--from", world.url).code == 0
    code, doc, err = _drill(world, tmp_path / "d", "latest")
    assert code == 0, err
    assert doc["summary"]["drill"]["drills"][0]["compared_with"] == "the file indexes recorded at push time"
    assert doc["backups"][0]["note"] is None


def test_a_drill_that_cannot_set_up_its_scratch_filesystem_is_no_finding_and_no_pass(
        world: World, tmp_path: Path) -> None:
    """A read-only or unusable --scratch-dir reported the backup DAMAGED (exit 4, the damage
    runbook); now the backup is 'incomplete', the drill and the run fail (exit 1, status and
    metrics see a failed drill), and the message says what to fix."""
    (world.subvol / "f").write_bytes(b"1")
    world.snapshot()
    assert world.push().code == 0
    read_only = tmp_path / "ro"
    _tmpfs(read_only, "ro,size=1m")
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    try:
        for scratch in (read_only, read_only / "sub", a_file):
            run = world.cli("verify", "--from", world.url, "--level", "restore", "--json", "--scratch-dir",
                            str(scratch))
            assert run.code == 1, run.err
            assert "could not set up its scratch filesystem" in run.err and "--scratch-dir" in run.err
            doc = json.loads(run.out.split("\n}\n")[0] + "\n}")
            [backup] = doc["backups"]
            assert backup["result"] == "incomplete" and backup["problems"] == [], backup
            assert backup["note"].startswith("restore drill not run")
            assert not doc["summary"]["ok"] and doc["summary"]["damaged"] == 0
            assert not doc["summary"]["drill"]["ok"]
            status = json.loads(world.cli("state", "show", "--json").out)
            assert status[0]["drill"]["ok"] is False
    finally:
        subprocess.run(["umount", str(read_only)], check=False)
    code, doc, err = _drill(world, tmp_path / "drills")
    assert code == 0 and doc["summary"]["ok"], err
    assert list((tmp_path / "drills").iterdir()) == []


def test_a_drill_that_runs_out_of_space_is_no_finding_and_no_pass(world: World, tmp_path: Path) -> None:
    """The scratch filesystem filled during the receive: the backup was reported DAMAGED (exit 4)
    for 'btrfs receive ... No space left on device'; now incomplete, drill failed, exit 1."""
    tree.populate(world.subvol, 3)  # ~10 MB of stream, with clones (a clone flushes its source: ENOSPC shows)
    world.snapshot()
    assert world.push().code == 0
    small = tmp_path / "small"
    _tmpfs(small, "size=12m")
    try:
        run = world.cli("verify", "--from", world.url, "--level", "restore", "--json", "--scratch-dir", str(small))
        assert run.code == 1 and "ran out of space" in run.err and "--scratch-dir" in run.err, run.err
        doc = json.loads(run.out.split("\n}\n")[0] + "\n}")
        assert [b["result"] for b in doc["backups"]] == ["incomplete"] and doc["summary"]["damaged"] == 0, doc
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def _incompressible_backup(world: World, mib: int) -> None:
    """Files of random bytes, no clones: btrfs receive writes them all into the page cache and
    nothing makes it flush them before it exits."""
    for i in range(mib // 4):
        (world.subvol / f"r{i}").write_bytes(os.urandom(4 << 20))
    world.snapshot()
    assert world.push().code == 0


@pytest.mark.slow
def test_a_receive_whose_data_never_reaches_the_disk_fails(world: World, tmp_path: Path) -> None:
    """A btrfs whose image sits on a filesystem that fills up: btrfs receive exited 0 with every
    byte still in the page cache, and 'btrsync receive' reported success for a subvolume whose data
    the kernel then failed to write (I/O error, filesystem forced read-only)."""
    _incompressible_backup(world, 32)
    small = tmp_path / "small"
    _tmpfs(small, "size=12m")
    try:
        with scratch_btrfs(small, "300M", "rx") as into:
            run = world.cli("receive", "latest", "--from", world.url, "--into", str(into))
            assert run.code == 1, run.err
            # the kernel fails the writeback either after btrfs receive ended (the sync) or, when it
            # flushes early (a busy machine), while it runs: the filesystem goes read-only under it
            assert (f"btrfs receive finished, but {into} could not write it to disk" in run.err
                    or ("btrfs receive stopped early" in run.err and "Read-only file system" in run.err)), run.err
            # deleted, or (the filesystem now read-only) the operator is told to delete it
            left = [p.name for p in into.iterdir()]
            assert left == [] or ("delete" in run.err and "must not serve as a parent" in run.err), (left, run.err)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.slow
def test_a_drill_whose_scratch_disk_cannot_take_the_data_is_no_pass(world: World, tmp_path: Path) -> None:
    """The same on a drill's scratch filesystem: the drill compared the page cache with the index
    and reported an intact backup that no disk held. Now: incomplete, drill failed, exit 1."""
    _incompressible_backup(world, 32)
    small = tmp_path / "small"
    _tmpfs(small, "size=12m")
    try:
        code, doc, err = _drill(world, small)
        # the writeback fails after btrfs receive ended, or (a busy machine flushing early) under it
        assert code == 1 and ("could not write what was received" in err or "ran out of space" in err), err
        assert [b["result"] for b in doc["backups"]] == ["incomplete"] and doc["summary"]["damaged"] == 0, doc
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_leftovers_of_a_killed_drill_are_removed_from_a_scratch_dir_with_a_non_ascii_name(
        world: World, tmp_path: Path) -> None:
    """/proc/self/mountinfo was decoded as latin-1 escapes, so the mount of a killed drill in
    /var/tmp/drills-é (or any UTF-8 name) was never found: it stayed mounted forever."""
    (world.subvol / "f").write_bytes(b"1")
    world.snapshot()
    assert world.push().code == 0
    scratch = tmp_path / "drills-é 名"
    scratch.mkdir()
    image, mnt, dev = plant_dead_drill(scratch)  # a SIGKILLed drill's image, attached and mounted
    try:
        code, doc, err = _drill(world, scratch)
        assert code == 0 and f"mount {mnt}" in err, err
        assert not os.path.ismount(mnt) and list(scratch.iterdir()) == []
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


@pytest.mark.slow
def test_a_drill_passes_over_a_local_snapshot_changed_after_it_was_taken(world: World, tmp_path: Path) -> None:
    """A local snapshot made writable, changed and made read-only again made an intact backup
    look DAMAGED ('the restored tree differs from <snapshot>'); it is passed over, said so, and
    the drill compares with the file indexes. Snapshots of the same name that are writable or
    another subvolume (other uuid) are never compared with either."""
    tree.populate(world.subvol, 4)
    os.sync()
    (world.src / "elsewhere").write_bytes(b"a later transaction")  # the subvolume is idle meanwhile
    os.sync()
    snap = world.snapshot()
    info = subvolume_info(snap)
    assert info.ctransid < info.otransid  # a snapshot takes its ctransid from the (idle) subvolume
    assert world.push().code == 0
    code, doc, err = _drill(world, tmp_path / "d", "--snapshot-dir", str(world.snapdir))
    assert code == 0 and doc["summary"]["drill"]["drills"][0]["compared_with"] == str(snap), err

    def prop(ro: str) -> None:
        subprocess.run(["btrfs", "property", "set", "-ts", str(snap), "ro", ro], check=True)

    prop("false")
    code, doc, err = _drill(world, tmp_path / "d", "--snapshot-dir", str(world.snapdir))
    assert code == 0 and doc["summary"]["drill"]["drills"][0]["compared_with"].startswith("the file indexes"), err
    assert f"{snap} is writable now, so it was not compared with" in doc["backups"][0]["note"]
    prop("true")  # a flip alone changes nothing: still the original
    code, doc, err = _drill(world, tmp_path / "d", "--snapshot-dir", str(world.snapdir))
    assert code == 0 and doc["summary"]["drill"]["drills"][0]["compared_with"] == str(snap), err
    prop("false")
    (snap / "added later").write_bytes(b"x")
    prop("true")
    code, doc, err = _drill(world, tmp_path / "d", "--snapshot-dir", str(world.snapdir))
    assert code == 0, err
    assert doc["summary"]["drill"]["drills"][0]["compared_with"].startswith("the file indexes")
    assert f"{snap} was changed after it was taken" in doc["backups"][0]["note"]

    other = world.src / "other"  # same name, another subvolume (writable, then read-only)
    other.mkdir()
    subprocess.run(["btrfs", "subvolume", "snapshot", str(world.subvol), str(other / snap.name)], check=True,
                   capture_output=True)
    (other / snap.name / "only here").write_bytes(b"y")
    for _ in range(2):
        code, doc, err = _drill(world, tmp_path / "d", "--snapshot-dir", str(other))
        assert code == 0 and doc["summary"]["drill"]["drills"][0]["compared_with"].startswith("the file"), err
        subprocess.run(["btrfs", "property", "set", "-ts", str(other / snap.name), "ro", "true"], check=True)


def _change_read_only(snap: Path, change: Callable[[], object]) -> None:
    """Make a read-only snapshot writable, change it, make it read-only again."""
    subprocess.run(["btrfs", "property", "set", "-ts", str(snap), "ro", "false"], check=True)
    change()
    subprocess.run(["btrfs", "property", "set", "-ts", str(snap), "ro", "true"], check=True)


def test_a_local_snapshot_changed_after_its_push_is_never_a_parent(world: World, tmp_path: Path) -> None:
    """A pushed snapshot made writable, changed and made read-only again was still used as the
    parent of the next incremental: the push succeeded (exit 0) and the stored incremental could
    not be restored (it is a diff from the changed snapshot), which only a drill found. Now that
    snapshot is skipped with the reason, and the next backup is a full that restores."""
    (world.subvol / "a").write_bytes(b"a")
    first = world.snapshot()
    assert world.push().code == 0
    _change_read_only(first, lambda: (first / "planted").write_bytes(b"p"))
    (world.subvol / "b").write_bytes(b"b")
    second = world.snapshot()
    run = world.push()
    assert run.code == 0, run.err
    newest = world.listing()[-1]
    assert newest["snapshot"] == second.name and newest["kind"] == "full", newest
    to = tmp_path / "to"
    to.mkdir()
    run = world.cli("restore", "latest", "--from", world.url, "--to", str(to))
    assert run.code == 0, run.err
    assert sorted(os.listdir(to / second.name)) == ["a", "b"]


def test_an_incremental_sent_on_a_changed_parent_is_refused_not_restored_wrong(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backups an earlier btrsync pushed on a changed parent (the push trusted any read-only
    snapshot, as it does here) restored *wrong without an error*: the parent snapshot's file was
    changed, the live file too, so the incremental carried nothing for it and a restore gave back
    the parent's old content; a drill without the snapshot passed. The stream says so itself (its
    parent's ctransid when sent differs from the parent's backup): restore, receive, ls, drills and stream verification refuse."""
    (world.subvol / "a").write_bytes(b"old")
    first = world.snapshot()
    assert world.push().code == 0
    _change_read_only(first, lambda: (first / "a").write_bytes(b"new"))
    (world.subvol / "a").write_bytes(b"new")
    os.utime(world.subvol / "a", ns=(os.stat(first / "a").st_atime_ns, os.stat(first / "a").st_mtime_ns))
    (world.subvol / "b").write_bytes(b"b")
    world.snapshot()
    monkeypatch.setattr(SubvolumeInfo, "is_trusted_parent", property(lambda self: self.readonly))  # the old rule
    monkeypatch.setattr(attempt_mod.Attempt, "_check_parent_unchanged", lambda self, framing: None)  # and no check
    assert world.push().code == 0
    monkeypatch.undo()
    assert world.listing()[-1]["kind"] == "incremental"
    # the manifests alone show it: a catalog check reads no data
    run = world.cli("verify", "--from", world.url, "--level", "catalog", "--json")
    assert run.code == 4 and "changed after the parent was backed up" in run.out, run.out
    to = tmp_path / "to"
    to.mkdir()
    for paths in ([], ["a"]):
        run = world.cli("restore", "latest", *paths, "--from", world.url, "--to", str(to))
        assert run.code == 4 and "changed after the parent was backed up" in run.err, run.err
        assert os.listdir(to) == []
    run = world.cli("ls", "latest", "--from", world.url)
    assert run.code == 4 and "changed after the parent was backed up" in run.err, run.err
    code, doc, err = _drill(world, tmp_path / "d", "latest")
    assert code == 4 and "changed after the parent was backed up" in err, err
    run = world.cli("verify", "--from", world.url, "--level", "stream", "--json")  # parent and child parsed
    assert run.code == 4 and "changed after the parent was backed up" in run.err, run.err
    run = world.receive("latest")  # btrfs receive itself does not compare them
    assert run.code == 4 and "changed after the parent was backed up" in run.err, run.err
    assert sorted(os.listdir(world.restore)) == [first.name]  # the parent, received; nothing of the child
    run = world.cli("restore", first.name, "--from", world.url, "--to", str(to))  # the parent is fine
    assert run.code == 0 and (to / first.name / "a").read_bytes() == b"old", run.err


def test_a_parent_changed_between_the_planner_s_check_and_the_send_is_never_committed(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner trusts only snapshots unchanged since they were taken; should one change
    between that check and ``btrfs send`` (here: the planner's check is switched off), the push
    compares the parent's ctransid in the stream with the one its backup recorded, and commits
    nothing."""
    (world.subvol / "a").write_bytes(b"old")
    first = world.snapshot()
    assert world.push().code == 0
    _change_read_only(first, lambda: (first / "a").write_bytes(b"new"))
    (world.subvol / "b").write_bytes(b"b")
    world.snapshot()
    monkeypatch.setattr(SubvolumeInfo, "is_trusted_parent", property(lambda self: self.readonly))
    run = world.push()
    assert run.code != 0 and f"the parent snapshot {first.name} changed after its backup" in run.err, run.err
    assert "nothing was committed" in run.err
    monkeypatch.undo()
    assert [b["snapshot"] for b in world.listing()] == [first.name]


def test_a_missing_file_index_part_does_not_make_the_chain_look_unrestorable(world: World, tmp_path: Path) -> None:
    """A missing file index part made every later backup of the chain 'affected' ('cannot be
    restored', the runbook's candidates for deletion) though all of them restore whole."""
    tree.populate(world.subvol, 2)
    world.snapshot()
    tree.mutate(world.subvol, 2, 1)
    world.snapshot()
    assert world.push().code == 0
    full, inc = world.listing()
    for part in (world.target_dir / "data" / full["id"]).glob("files-*"):
        part.unlink()
    code, doc, err = _verify_json(world, "--level", "catalog")
    assert code == 4, err
    by_id = {b["backup_id"]: b for b in doc["backups"]}
    assert by_id[full["id"]]["result"] == "damaged" and by_id[full["id"]]["problems"][0]["what"] == "files"
    assert by_id[inc["id"]]["result"] == "ok" and full["id"] in by_id[inc["id"]]["note"]
    to = tmp_path / "to"
    to.mkdir()
    run = world.cli("restore", inc["id"], "--from", world.url, "--to", str(to))
    assert run.code == 0, run.err
    # a missing segment still makes the dependents affected
    (world.target_dir / "data" / full["id"] / "000000").unlink()
    code, doc, err = _verify_json(world, "--level", "catalog")
    by_id = {b["backup_id"]: b for b in doc["backups"]}
    assert code == 4 and by_id[inc["id"]]["result"] == "affected", doc


def _verify_json(world: World, *args: str) -> tuple[int, dict, str]:
    run = world.cli("verify", "--from", world.url, "--json", *args)
    return run.code, json.loads(run.out.split("\n}\n")[0] + "\n}"), run.err


def test_a_drill_sample_that_drills_nothing_or_everything_is_refused(world: World, tmp_path: Path) -> None:
    """'--level restore --sample 0' drilled nothing and reported 'all intact at level restore';
    '--sample 5%' was silently ignored and drilled every backup."""
    for sample in ("0", "5%", "1G", "-1"):
        run = world.cli("verify", "--from", world.url, "--level", "restore", "--sample", sample,
                        "--scratch-dir", str(tmp_path / "d"))
        assert run.code == 2 and "number of backups to drill" in run.err, (sample, run.err)
    assert not (tmp_path / "d").exists()


def test_a_repository_id_that_is_not_an_id_is_refused_before_it_names_a_local_path(
        world: World, tmp_path: Path) -> None:
    """A format 1 marker is not authenticated; its repo_id named local paths (the verify ledger,
    the ls cache), so storage serving '../../..' made verify create files outside the state
    directory as root. An id is now 1-64 letters, digits, '-' or '_', or the marker is damage."""
    (world.subvol / "a").write_bytes(b"a")
    world.snapshot()
    assert world.push().code == 0
    marker_path = world.target_dir / layout.REPO_MARKER
    marker = json.loads(marker_path.read_text())
    escape = tmp_path / "escaped"
    evil = os.path.relpath(escape, world.state / "verify")
    marker_path.write_text(json.dumps({k: marker[k] for k in ("btrsync", "key_id", "created")}
                                      | {"format": 1, "repo_id": evil}))
    shutil.rmtree(world.state)  # no repository id recorded for the URL yet (a first contact)
    for args in (["verify", "--level", "catalog"], ["ls", "latest"], ["list"]):
        run = world.cli(*args[:1], *args[1:], "--from", world.url)
        assert run.code == 4 and "repository id" in run.err, (args, run.err)
    assert list(tmp_path.glob("escaped*")) == []


# --- a partial receive that cannot be removed ----------------------------------------------------


def _half_received(world: World) -> tuple[bytes, Path]:
    """A real send stream (with enough data to take a while) and where its receive lands."""
    tree.populate(world.subvol, 3)
    (world.subvol / "big").write_bytes(os.urandom(24 << 20))
    snap = world.snapshot()
    stream = subprocess.run(["btrfs", "send", "-q", str(snap)], check=True, capture_output=True).stdout
    return stream, world.restore / snap.name


def _pin(partial: Path) -> None:
    """Wait for btrfs receive to create the subvolume, then nest another one in it: deleting the
    partial subvolume then fails (btrfs will not delete a subvolume that holds one), as it does on
    a filesystem the failure itself forced read-only."""
    for _ in range(1000):
        if partial.is_dir():
            break
        time.sleep(0.01)
    subprocess.run(["btrfs", "subvolume", "create", str(partial / "pinned")], check=True, capture_output=True)


@pytest.mark.parametrize("how", ["stream cut short", "error while receiving"])
def test_a_partial_receive_that_cannot_be_removed_does_not_hide_the_failure(world: World, how: str) -> None:
    """A drill whose scratch filled up was reported DAMAGED (exit 4): btrfs receive failed with
    ENOSPC, the full filesystem went read-only, and the error of deleting the partial subvolume
    replaced the receive's own (and with it the out-of-space finding).  The failure that happened
    is reported; the leftover is named with what to do; an error in flight passes on unchanged."""
    stream, partial = _half_received(world)
    half = len(stream) // 2
    rx = ReceiveProcess(world.restore, partial.name, "test receive")
    if how == "stream cut short":
        with pytest.raises(ReceiveFailedError) as caught, rx:
            rx.write(stream[:half])
            _pin(partial)
        message = str(caught.value)
        assert "btrfs receive failed" in message and f"delete {partial} yourself" in message, message
    else:
        with pytest.raises(KeyError, match="boom"), rx:
            rx.write(stream[:half])
            _pin(partial)
            raise KeyError("boom")
    assert partial.is_dir()  # named in the message (or log): the operator deletes it


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie; one that went away between listing and asking is not running."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_a_signal_while_a_receive_is_made_durable_does_not_skip_the_check(world: World, tmp_path: Path) -> None:
    """SIGTERM while btrsync flushed a finished receive (syncfs: minutes on a big restore, shown as
    'committing') was handled as syncfs returned, before its error was looked at: a subvolume that
    looked received but was never written stayed, and the rerun skipped it.  The check completes,
    then the signal ends the command."""
    _incompressible_backup(world, 32)
    small = tmp_path / "small"
    _tmpfs(small, "size=12m")
    try:
        with scratch_btrfs(small, "300M", "rx") as into:
            child = Child(world, "receive", "latest", "--from", world.url, "--into", str(into))

            def committing() -> bool:  # btrfs receive has exited: btrsync checks and flushes
                return any(into.iterdir()) and not any(_running(p) for p in child.ps.children())
            child.freeze_when(committing)
            out = child.signal(signal.SIGTERM)
            assert out.code == 143, out.err
            left = [p.name for p in into.iterdir()]
            assert left == [] or ("delete" in out.err and "must not serve as a parent" in out.err), (left, out.err)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_signal_as_btrfs_receive_exits_keeps_the_subvolume_only_once_it_is_on_disk(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same race made certain: SIGTERM handled while btrsync waits for a btrfs receive that
    has just finished the whole stream.  The cleanup kept the subvolume as complete (it looks
    received) without writing it out; on a disk that cannot hold it, it is removed (or named to
    be deleted), never kept as received."""
    from btrsync.signals import Terminated

    _incompressible_backup(world, 32)
    real_wait = subprocess.Popen.wait

    def wait(self: subprocess.Popen, timeout: float | None = None) -> int:  # type: ignore[type-arg]
        rc = real_wait(self, timeout)
        if isinstance(self.args, list) and "receive" in self.args[:2] and rc == 0 and not hasattr(self, "_hit"):
            self._hit = True  # type: ignore[attr-defined]
            raise Terminated(signal.SIGTERM)  # as the handler raises it, right after btrfs receive exited 0
        return rc

    small = tmp_path / "small"
    _tmpfs(small, "size=12m")
    try:
        with scratch_btrfs(small, "300M", "rx") as into:
            monkeypatch.setattr(subprocess.Popen, "wait", wait)
            run = world.receive("latest", into=into)
            monkeypatch.undo()
            assert run.code == 143, run.err
            left = [p.name for p in into.iterdir()]
            assert left == [] or ("delete" in run.err and "must not serve as a parent" in run.err), (left, run.err)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    # on a disk that holds it, the finished subvolume is written out and kept, complete
    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    run = world.receive("latest")
    monkeypatch.undo()
    assert run.code == 143, run.err
    snap = world.snapshots[-1]
    info = subvolume_info(world.restore / snap.name)
    assert info.readonly and info.received_uuid is not None
    assert tree.compare(tree.describe(snap), tree.describe(world.restore / snap.name)) == []


@pytest.mark.slow
def test_a_drill_that_loses_the_target_midway_is_no_finding(world: World, tmp_path: Path) -> None:
    """The target's disk began failing reads while the drill ran (its data pass had read every
    chunk fine): the backup was reported DAMAGED (exit 4), where the same failure during the data
    pass exits 1.  Now: incomplete, no finding, exit 1, and the drill says to run it again."""
    with mounted_for_test(tmp_path / "fault") as fs:
        world.target_dir = fs.mountpoint
        world.init()
        tree.populate(world.subvol, 3)
        (world.subvol / "big").write_bytes(os.urandom(48 << 20))
        world.snapshot()
        assert world.push().code == 0
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        child = Child(world, "verify", "--from", world.url, "--level", "restore", "--scratch-dir", str(scratch))
        child.freeze_when(lambda: any(p.name.startswith("btrsync-drill-mnt") for p in scratch.iterdir()))
        fs.fail("read", "data/*", errno.EIO)  # the drill now receives: its reads of the segments fail
        child.proc.send_signal(signal.SIGCONT)
        code = child.proc.wait(timeout=120)
        err = child.stderr()
        assert fs.hits(), "the fault never hit: the drill had read everything before it was armed"
        assert code == 1 and "could not complete" in err and "nothing was found damaged" in err, (code, err)
        assert "damaged or affected" not in err, err
        assert os.listdir(scratch) == []


# --- a filesystem mounted inside what is replaced or removed ---------------------------------------


def test_overwriting_a_tree_with_a_filesystem_mounted_in_it_refuses_and_leaves_the_mount_alone(
        world: World, tmp_path: Path) -> None:
    """'restore --overwrite' swapped the old tree aside and removed it file by file, descending into
    a filesystem the operator had mounted inside it (a data disk at DIR/<snapshot>/srv): its files
    were deleted before the removal stopped at the mount point with EBUSY."""
    _small_backup(world)
    dest = tmp_path / "dest"
    dest.mkdir()
    first = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--json")
    assert first.code == 0, first.err
    restored = Path(first.json()["path"])
    (restored / "srv").mkdir()
    _tmpfs(restored / "srv" / "disk", "size=4m")
    try:
        (restored / "srv" / "disk" / "precious").write_bytes(b"not part of any backup")
        run = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--overwrite")
        assert run.code == 2 and "a filesystem is mounted in it" in run.err, run.err
        assert (restored / "srv" / "disk" / "precious").read_bytes() == b"not part of any backup"
        assert sorted(p.name for p in dest.iterdir()) == [restored.name]  # no work directory left

        # the last line of defence: removing a tree never enters a mount point
        parent_fd = os.open(restored.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(OSError) as caught:
                place.remove_tree(parent_fd, restored.name)
            assert caught.value.errno == errno.EBUSY
        finally:
            os.close(parent_fd)
        assert (restored / "srv" / "disk" / "precious").read_bytes() == b"not part of any backup"
    finally:  # wherever the mount ended up (before the fix: inside the work directory)
        for line in Path("/proc/self/mounts").read_text().splitlines():
            if line.split()[1].startswith(f"{dest}/"):
                subprocess.run(["umount", "-l", line.split()[1]], check=False)


def test_overwrite_where_names_cannot_be_exchanged_keeps_the_old_tree_if_the_swap_fails(
        world: World, tmp_path: Path) -> None:
    """Where the filesystem cannot exchange two names (FUSE here; NFS, CIFS, vfat), --overwrite
    moves the old tree aside into the work directory, then the new one into place.  When that
    second rename failed, both trees were in the work directory, which was then removed: the
    operator lost the old tree and got no new one."""
    _small_backup(world)
    with mounted_for_test(tmp_path / "fault") as fs:
        dest = fs.mountpoint
        first = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--json")
        assert first.code == 0, first.err
        restored = Path(first.json()["path"])
        assert diff_trees(world.snapshots[-1], restored) == []
        assert sorted(p.name for p in dest.iterdir()) == [restored.name], first.err
        fs.fail("rename", ".btrsync-restore.*/tree", errno.EIO)  # the new tree cannot take the name
        run = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--overwrite")
        assert fs.hits(), ("the swap never reached its second rename", run.code, run.err)
        assert run.code == 1 and "Input/output error" in run.err, run.err
        assert diff_trees(world.snapshots[-1], restored) == []  # the old tree, whole, in its place
        assert sorted(p.name for p in dest.iterdir()) == [restored.name]


def test_a_committed_push_whose_lease_cannot_be_removed_is_still_a_success(world: World, tmp_path: Path) -> None:
    """The target's disk refused the last delete of a push, its upload lease's, after the
    manifest was written: the backup existed, and the push reported it failed (exit 1), skipping
    what a run does after a good push.  The lease goes stale on its own; a warning says so."""
    with mounted_for_test(tmp_path / "fault") as fs:
        world.target_dir = fs.mountpoint
        world.init()
        (world.subvol / "a").write_bytes(b"x" * 1000)
        world.snapshot()
        fs.fail("unlink", "locks/*.lease", errno.EIO)
        run = world.push()
        assert fs.hits(), "the lease was never removed"
        assert run.code == 0 and "could not remove the upload lease" in run.err, run.err
        fs.clear()
        [backup] = world.listing()
        assert world.snapshots[-1].name in json.dumps(backup), backup


# --- --overwrite of selected paths -----------------------------------------------------------------


def test_overwrite_of_selected_paths_replaces_exactly_them(world: World, tmp_path: Path) -> None:
    """'restore BACKUP etc/link --to DIR --overwrite' into a full restore the user had worked in
    swapped the whole tree for one holding only etc/link and removed the rest: exit 0, and
    everything else in DIR/<snapshot>, the user's own files included, was gone."""
    (world.subvol / "etc").mkdir()
    (world.subvol / "etc" / "conf").write_bytes(b"from the backup")
    os.symlink("conf", world.subvol / "etc" / "link")
    (world.subvol / "d").mkdir()
    (world.subvol / "d" / "x").write_bytes(b"x")
    (world.subvol / "top").write_bytes(b"top")
    world.snapshot()
    assert world.push().code == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    first = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--json")
    assert first.code == 0, first.err
    r = Path(first.json()["path"])
    (r / "mine").write_bytes(b"the user's own")
    (r / "etc" / "mine").write_bytes(b"the user's own, beside the link")
    (r / "etc" / "link").unlink()
    os.symlink("elsewhere", r / "etc" / "link")
    (r / "d" / "x").write_bytes(b"changed")
    (r / "d" / "added").write_bytes(b"inside a named directory")
    (r / "top").write_bytes(b"changed too, but not named")
    os.utime(r / "etc", ns=(1_000_000_000, 2_000_000_000))

    run = world.cli("restore", "latest", "etc/link", "d", "--from", world.url, "--to", str(dest),
                    "--overwrite", "--json")
    assert run.code == 0, run.err
    assert sorted(run.json()["replaced"]) == ["d", "etc/link"]
    assert os.readlink(r / "etc" / "link") == "conf"
    assert sorted(os.listdir(r / "d")) == ["x"] and (r / "d" / "x").read_bytes() == b"x"  # replaced whole
    assert (r / "mine").read_bytes() == b"the user's own"
    assert (r / "etc" / "mine").read_bytes() == b"the user's own, beside the link"
    assert (r / "etc" / "conf").read_bytes() == b"from the backup"
    assert (r / "top").read_bytes() == b"changed too, but not named"
    assert os.stat(r / "etc").st_mtime_ns == 2_000_000_000  # a directory on the way keeps its times
    assert sorted(p.name for p in dest.iterdir()) == [r.name]  # no work directory left
    text = world.cli("restore", "latest", "etc/conf", "--from", world.url, "--to", str(dest), "--overwrite")
    assert text.code == 0 and "replaced 1 existing path(s) (etc/conf)" in text.out, text.out

    # a missing path comes back with its missing directories; nothing else moves
    shutil.rmtree(r / "d")
    run = world.cli("restore", "latest", "d/x", "--from", world.url, "--to", str(dest), "--overwrite", "--json")
    assert run.code == 0 and run.json()["replaced"] == [] and run.json()["added"] == 1, run.err
    assert (r / "d" / "x").read_bytes() == b"x" and (r / "mine").exists()

    # a file where the backup has a directory on the way: refused before anything is restored
    shutil.rmtree(r / "d")
    (r / "d").write_bytes(b"a file named d")
    run = world.cli("restore", "latest", "d/x", "--from", world.url, "--to", str(dest), "--overwrite")
    assert run.code == 2 and f"cannot replace in {r}: d is not a directory" in run.err, run.err
    assert (r / "d").read_bytes() == b"a file named d" and (r / "mine").exists()
    assert sorted(p.name for p in dest.iterdir()) == [r.name]


def test_overwrite_of_selected_paths_refuses_a_mount_in_them_and_ignores_one_elsewhere(
        world: World, tmp_path: Path) -> None:
    """The refusal names the selected path that holds the mount; a mount beside the selected
    paths is no reason to refuse, since nothing but the selected paths is replaced."""
    (world.subvol / "srv").mkdir()
    (world.subvol / "keep").mkdir()
    (world.subvol / "f").write_bytes(b"f")
    world.snapshot()
    assert world.push().code == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    first = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--json")
    r = Path(first.json()["path"])
    _tmpfs(r / "srv" / "disk", "size=4m")
    try:
        (r / "srv" / "disk" / "precious").write_bytes(b"p")
        run = world.cli("restore", "latest", "srv", "--from", world.url, "--to", str(dest), "--overwrite")
        assert run.code == 2 and f"cannot replace in {r}: srv: a filesystem is mounted in it, at {r}/srv/disk" \
            in run.err, run.err
        run = world.cli("restore", "latest", "f", "--from", world.url, "--to", str(dest), "--overwrite")
        assert run.code == 0, run.err
        assert (r / "srv" / "disk" / "precious").read_bytes() == b"p"
    finally:
        subprocess.run(["umount", str(r / "srv" / "disk")], check=False)


def test_overwrite_refusal_names_what_is_in_the_way(world: World) -> None:
    """DIR/<snapshot> being itself a subvolume (where 'btrsync receive' put the same backup) was
    refused as 'it holds btrfs subvolumes, at DIR/<snapshot>': the path named was the one to be
    replaced, not something inside it.  Now the refusal says what it is."""
    (world.subvol / "f").write_bytes(b"f")
    world.snapshot()
    assert world.push().code == 0
    assert world.receive("latest").code == 0
    received = world.restore / world.snapshots[0].name
    run = world.cli("restore", "latest", "--from", world.url, "--to", str(world.restore), "--overwrite")
    assert run.code == 2, run.err
    assert f"{received} cannot be replaced: it is itself a btrfs subvolume" in run.err, run.err
    assert "holds btrfs subvolumes" not in run.err, run.err
    assert sorted(os.listdir(world.restore)) == [received.name]


def test_overwrite_of_selected_paths_where_names_cannot_be_exchanged_restores_a_path_named_like_the_aside(
        world: World, tmp_path: Path) -> None:
    """Where names cannot be exchanged (FUSE here; NFS), the old d/f was moved aside as d/f.old
    in the restored tree, over the restored d/f.old, a path also named: exit 0, d/f.old of the
    backup silently never restored (skipped as "moved in already") and gone."""
    (world.subvol / "d").mkdir()
    (world.subvol / "d" / "f").write_bytes(b"f of the backup")
    (world.subvol / "d" / "f.old").write_bytes(b"f.old of the backup")
    world.snapshot()
    assert world.push().code == 0
    with mounted_for_test(tmp_path / "fault") as fs:
        dest = fs.mountpoint
        first = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--json")
        assert first.code == 0, first.err
        r = Path(first.json()["path"])
        (r / "d" / "f").write_bytes(b"mine")
        (r / "d" / "f.old").write_bytes(b"mine too")
        run = world.cli("restore", "latest", "d/f", "d/f.old", "--from", world.url, "--to", str(dest),
                        "--overwrite", "--json")
        assert run.code == 0, run.err
        assert sorted(run.json()["replaced"]) == ["d/f", "d/f.old"], run.out
        assert (r / "d" / "f").read_bytes() == b"f of the backup"
        assert (r / "d" / "f.old").read_bytes() == b"f.old of the backup"
        assert sorted(os.listdir(r / "d")) == ["f", "f.old"] and sorted(os.listdir(dest)) == [r.name]


def test_overwrite_of_selected_paths_into_a_subvolume_is_refused_before_anything_is_restored(
        world: World) -> None:
    """DIR/<snapshot> where 'btrsync receive' put the backup (a read-only subvolume), or a
    directory on the way that is a subvolume: nothing can be renamed into it from the work
    directory in DIR.  The whole restore ran first and then failed (exit 1, 'Read-only file
    system' / 'Invalid cross-device link'), after replacing the paths before it, where several."""
    (world.subvol / "d").mkdir()
    (world.subvol / "d" / "f").write_bytes(b"f of the backup")
    (world.subvol / "top").write_bytes(b"top of the backup")
    world.snapshot()
    assert world.push().code == 0
    assert world.receive("latest").code == 0
    received = world.restore / world.snapshots[-1].name
    run = world.cli("restore", "latest", "d/f", "--from", world.url, "--to", str(world.restore), "--overwrite")
    assert run.code == 2 and f"cannot replace in {received}: it is itself a btrfs subvolume or a mount point" in run.err, run.err
    assert sorted(os.listdir(world.restore)) == [received.name]

    subprocess.run(["btrfs", "subvolume", "delete", str(received)], check=True, capture_output=True)
    first = world.cli("restore", "latest", "--from", world.url, "--to", str(world.restore), "--json")
    assert first.code == 0, first.err
    shutil.rmtree(received / "d")
    subprocess.run(["btrfs", "subvolume", "create", str(received / "d")], check=True, capture_output=True)
    try:
        (received / "d" / "f").write_bytes(b"mine")
        (received / "top").write_bytes(b"mine too")
        run = world.cli("restore", "latest", "top", "d/f", "--from", world.url, "--to", str(world.restore),
                        "--overwrite")
        assert run.code == 2 and "d is another btrfs subvolume or a mount point there" in run.err, run.err
        assert (received / "d" / "f").read_bytes() == b"mine" and (received / "top").read_bytes() == b"mine too"
        assert sorted(os.listdir(world.restore)) == [received.name]
    finally:
        subprocess.run(["btrfs", "subvolume", "delete", str(received / "d")], check=False, capture_output=True)


# --- a push whose uploaded data vanishes before its commit ------------------------------------------


@pytest.mark.slow
def test_a_push_whose_segments_vanish_before_the_commit_is_not_committed(world: World) -> None:
    """A clean on another host took a running push's segments for orphans and deleted them (or a
    disk lost them); the push went on and committed a manifest naming data that was gone: a
    backup, and every incremental on it, that cannot be restored.  Now the push checks, in one
    listing right before the commit, that everything it names is there; the rerun sends it anew."""
    tree.populate(world.subvol, 3)
    (world.subvol / "big").write_bytes(os.urandom(16 << 20))  # 64 segments of 256k: seconds at 8M/s
    snap = world.snapshot()
    child = Child(world, "push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", world.url,
                  "--bwlimit", "8M")
    first = None

    def two_segments() -> bool:
        nonlocal first
        segments = sorted(world.target_dir.glob("data/*/000000"))
        first = segments[0] if segments else None
        return len(list(world.target_dir.glob("data/*/*.idx"))) >= 2
    child.freeze_when(two_segments)
    assert first is not None
    first.unlink()  # what the other host's clean does
    child.proc.send_signal(signal.SIGCONT)
    assert child.proc.wait(timeout=180) == 1, child.stderr()
    err = child.stderr()
    assert "was not committed" in err and "missing" in err and first.name in err, err
    assert not list(world.target_dir.glob("backups/*/manifest")), "a manifest naming lost data was written"

    run = world.push()
    assert run.code == 0, run.err
    assert world.receive("latest").code == 0
    assert diff_trees(snap, world.restore / snap.name) == []


# --- btrfs subvolumes inside what is replaced ------------------------------------------------------


def _restored_on_btrfs(world: World) -> tuple[Path, Path]:
    """A small backup restored into ``DIR`` on the world's btrfs: (DIR, the restored tree)."""
    _small_backup(world)
    dest = world.src / "dest"
    dest.mkdir()
    first = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--json")
    assert first.code == 0, first.err
    return dest, Path(first.json()["path"])


def test_overwriting_a_tree_that_holds_btrfs_subvolumes_refuses_and_leaves_them(world: World) -> None:
    """'--overwrite' swapped the old tree aside and removed it entry by entry: a subvolume in it
    (the snapshots kept in /data/.snapshots, a container's storage) was emptied if writable, or
    left hidden in the work directory if read-only, and the command said "replaced", exit 0.
    None of it is in any backup.  Now the replace is refused before anything is restored."""
    dest, restored = _restored_on_btrfs(world)
    subprocess.run(["btrfs", "subvolume", "create", str(restored / "containers")], check=True, capture_output=True)
    (restored / "containers" / "state").write_text("not in any backup")
    run = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--overwrite")
    assert run.code == 2 and "holds btrfs subvolumes" in run.err and "containers" in run.err, run.err
    assert (restored / "containers" / "state").read_text() == "not in any backup"
    assert sorted(p.name for p in dest.iterdir()) == [restored.name]

    # snapshot restore of a path whose live version holds a nested subvolume (the snapshot has
    # only the empty placeholder btrfs leaves for it)
    (world.subvol / "srv").mkdir()
    subprocess.run(["btrfs", "subvolume", "create", str(world.subvol / "srv" / "vm")], check=True, capture_output=True)
    (world.subvol / "srv" / "vm" / "disk.img").write_bytes(b"v" * 4096)
    snap = world.snapshot()
    run = world.cli("snapshot", "restore", str(snap), "srv", "--to", str(world.subvol), "--overwrite")
    assert run.code == 2 and "holds btrfs subvolumes" in run.err, run.err
    assert (world.subvol / "srv" / "vm" / "disk.img").read_bytes() == b"v" * 4096

    # and the last line of defence: removing a tree never deletes a subvolume in it
    parent_fd = os.open(restored.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as caught:
            place.remove_tree(parent_fd, restored.name)
        assert caught.value.errno == errno.EBUSY and "btrfs subvolume" in str(caught.value)
    finally:
        os.close(parent_fd)
    assert (restored / "containers" / "state").read_text() == "not in any backup"


def test_a_work_directory_another_user_put_in_place_is_refused(tmp_path: Path) -> None:
    """A restore into a directory a user can write to: the user can rename root's fresh work
    directory and put their own there, and root would build the tree (chmod, chown, setuid bits)
    where the user can plant symlinks.  What the name opens must be root's own 0700 directory."""
    home = tmp_path / "alice"  # a directory another user can write to
    home.mkdir()
    os.chown(home, 1000, 1000)
    parent = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.mkdir("mine", 0o700, dir_fd=parent)
        os.close(place.open_own_dir(parent, "mine"))
        os.mkdir("theirs", 0o700, dir_fd=parent)
        os.chown("theirs", 1000, 1000, dir_fd=parent)
        with pytest.raises(OSError, match="was replaced while in use"):
            place.open_own_dir(parent, "theirs")
        os.mkdir("open", 0o755, dir_fd=parent)
        with pytest.raises(OSError, match="was replaced while in use"):
            place.open_own_dir(parent, "open")
        assert not [n for n in os.listdir(parent) if n.startswith(".btrsync-probe")]
    finally:
        os.close(parent)
    # a setgid parent (its directories are made 2700), and a parent only root can write to
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o2775)
    parent = os.open(shared, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.mkdir("work", 0o700, dir_fd=parent)
        os.close(place.open_own_dir(parent, "work"))
    finally:
        os.close(parent)


# --- btrfs receive confined to its directory -------------------------------------------------------


def test_btrfs_receive_never_writes_outside_the_receive_directory(world: World, tmp_path: Path) -> None:
    """btrfs receive works by path names and follows symlinks: a path that goes through a symlink
    (made by the stream, or planted by a user whose uid owns a directory of the backup while it
    is received) had root write wherever the link pointed.  Confined (--chroot), it cannot."""
    from tests.unit.sendstream.streams import cmd_attrs, end, header, subvol, u64

    outside = tmp_path / "outside"
    outside.mkdir()
    stream = (header(1) + subvol("snap", version=1)
              + cmd_attrs("symlink", [("path", b"link"), ("ino", u64(257)), ("path_link", str(outside).encode())], 1)
              + cmd_attrs("mkfile", [("path", b"link/evil"), ("ino", u64(258))], 1) + end())
    with (pytest.raises(ReceiveFailedError),
          ReceiveProcess(world.restore, "snap", "a stream that writes through a symlink") as rx):
        rx.write(stream)
    assert list(outside.iterdir()) == []
    assert not (world.restore / "snap").exists()


def test_where_the_filesystem_cannot_lock_a_live_restore_is_not_taken_for_leftovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where flock fails (ENOLCK on some NFS and FUSE mounts) the work directory counted as
    unlocked: a second restore removed the first one's live work directory as "leftovers", and the
    first placed a tree with files missing.  Now the marker's host and pid decide."""
    from btrsync.errors import LockedError
    from btrsync.ops import restore as restore_mod

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(restore_mod.fcntl, "flock", no_locks)
    to_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    live = subprocess.Popen(["sleep", "60"])
    try:
        for pid, expect_locked in ((live.pid, True), (2**22 + 12345, False)):
            work = tmp_path / ".btrsync-restore.x"
            work.mkdir(mode=0o700)
            (work / restore_mod.MARKER).write_text(json.dumps({"backup": "b", "pid": pid, "host": os.uname().nodename,
                                                     "started": "2026-12-01T00:00:00+00:00"}))
            (work / "tree").mkdir()
            (work / "tree" / "half-written").write_bytes(b"x")
            if expect_locked:
                with pytest.raises(LockedError, match="another restore is writing"):
                    restore_mod._claim_work_dir(to_fd, tmp_path, work.name, "b")
                assert (work / "tree" / "half-written").exists()
                shutil.rmtree(work)
            else:
                fd = restore_mod._claim_work_dir(to_fd, tmp_path, work.name, "b")
                os.close(fd)
                assert not (work / "tree").exists()  # a dead run's leftovers: removed, and claimed anew
                shutil.rmtree(work)
    finally:
        live.kill()
        live.wait()
        os.close(to_fd)


def test_an_overwrite_cut_off_between_its_renames_gets_the_old_tree_back(world: World) -> None:
    """Where names cannot be exchanged atomically (NFS), --overwrite renames the old tree into the
    work directory, then the new one into place.  A SIGKILL or power cut between the two left the
    old tree in the work directory, and the next restore removed it with the leftovers."""
    from btrsync.ops import restore as restore_mod

    dest, placed = _restored_on_btrfs(world)
    (placed / "mine").write_text("changed since the backup")
    # the state that cut-off leaves: the old tree aside in a dead run's work directory
    work = dest / (restore_mod.WORK_PREFIX + placed.name)
    work.mkdir(mode=0o700)
    (work / restore_mod.MARKER).write_text(json.dumps({"backup": "b", "pid": 2**22 + 4321,
                                                       "host": os.uname().nodename, "started": "x"}))
    (work / "tree").mkdir()
    placed.rename(work / place.aside_name("tree"))
    run = world.cli("restore", "latest", "--from", world.url, "--to", str(dest))
    # it is back before the leftovers go; then it is where the new tree would go, which is not replaced
    assert run.code == 1 and "back where it was" in run.err and "nothing was replaced" in run.err, run.err
    assert (placed / "mine").read_text() == "changed since the backup"
    assert sorted(p.name for p in dest.iterdir()) == [placed.name]


def test_a_selected_path_left_aside_by_a_killed_overwrite_is_put_back_by_the_next_restore(
        world: World, tmp_path: Path) -> None:
    """Where names cannot be exchanged, replacing a selected path takes two renames: the old one
    aside into the work directory, then the new one into place.  A SIGKILL between them left the
    path missing, and the next restore into that directory removed the old copy with the work
    directory's leftovers.  The restore now journals what it moved aside; whatever restore runs
    there next puts it back first.  The state is the one a SIGKILL leaves (journal, aside, gap)."""
    (world.subvol / "d").mkdir()
    (world.subvol / "d" / "f").write_bytes(b"from the backup")
    (world.subvol / "g").write_bytes(b"g")
    world.snapshot()
    assert world.push().code == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    first = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--json")
    r = Path(first.json()["path"])
    (r / "d" / "f").write_bytes(b"the user's own version")
    work = dest / f".btrsync-restore.{r.name}"
    (work / "tree" / "d").mkdir(parents=True)
    os.rename(r / "d" / "f", work / "tree" / "d" / "f.old")  # the first rename happened, the second not
    (work / "aside.json").write_text(json.dumps({"path": "d/f", "aside": "d/f.old"}))
    (work / "btrsync-restore.json").write_text(json.dumps({"backup": "x", "pid": 999999, "started": "then"}))
    run = world.cli("restore", "latest", "g", "--from", world.url, "--to", str(dest), "--overwrite")
    assert run.code == 0, run.err
    assert "put " in run.err and "d/f back where it was" in run.err, run.err
    assert (r / "d" / "f").read_bytes() == b"the user's own version"
    assert sorted(p.name for p in dest.iterdir()) == [r.name]


def test_overwrite_of_a_selected_path_where_names_cannot_be_exchanged(world: World, tmp_path: Path) -> None:
    """On FUSE (no RENAME_EXCHANGE) a selected path is replaced through the journalled fallback,
    and the journal is gone afterwards."""
    (world.subvol / "d").mkdir()
    (world.subvol / "d" / "f").write_bytes(b"from the backup")
    world.snapshot()
    assert world.push().code == 0
    with mounted_for_test(tmp_path / "fault") as fs:
        dest = fs.mountpoint
        first = world.cli("restore", "latest", "--from", world.url, "--to", str(dest), "--json")
        assert first.code == 0, first.err
        r = Path(first.json()["path"])
        (r / "d" / "f").write_bytes(b"changed")
        (r / "mine").write_bytes(b"mine")
        run = world.cli("restore", "latest", "d/f", "--from", world.url, "--to", str(dest), "--overwrite")
        assert run.code == 0, run.err
        assert (r / "d" / "f").read_bytes() == b"from the backup" and (r / "mine").read_bytes() == b"mine"
        assert sorted(p.name for p in dest.iterdir()) == [r.name]
