"""``btrsync mount`` on real FUSE over real backups, compared with the snapshots they were made of.

Trees of ``tests.support.tree`` (hard links, reflinks, sparse files, binary xattrs, fifos, odd
names, set-id modes, foreign owners, nanosecond mtimes) are snapshotted on loopback btrfs over
three generations and pushed (a full, then incrementals); the mount of each backup is described
path by path exactly as the snapshot is (content, modes, owners, mtimes, symlink targets,
hard-link groups by inode number, xattrs, SEEK_DATA/SEEK_HOLE ranges) and must be equal. Extent
sharing (reflinks) has no meaning through FUSE and is not compared.
"""

from __future__ import annotations

import errno
import filecmp
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from unittest import mock

import pytest

from tests.integration.conftest import World
from tests.mount.conftest import mounted, two_backups_mounted
from tests.support import tree

pytestmark = [pytest.mark.btrfs, pytest.mark.slow]

SEED = 7

_physical_extents = tree.physical_extents


def _extents_or_none(path: Path) -> list[tuple[int, int, int]]:
    """No FIEMAP through FUSE: no extents (sharing is not compared on the mount)."""
    try:
        return _physical_extents(path)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.ENOSYS, errno.EINVAL):
            raise
        return []


def _describe(root: Path) -> dict:
    with mock.patch.object(tree, "physical_extents", _extents_or_none):
        return tree.describe(root)


def _generations(world: World, count: int) -> list[Path]:
    tree.populate(world.subvol, SEED)
    world.snapshot()
    assert world.push().code == 0
    for g in range(1, count):
        tree.mutate(world.subvol, SEED, g)
        world.snapshot()
        run = world.push()
        assert run.code == 0, run.err
    return list(world.snapshots)


def _backup_dir(mp: Path, snap: Path) -> Path:
    return mp / "data" / snap.name


@pytest.mark.parametrize("window", ["16M", "64k"])  # whole files; files over 64 KiB rebuilt by windows
def test_every_backup_of_a_chain_looks_as_its_snapshot(world: World, mounter, window: str) -> None:
    snaps = _generations(world, 3)
    m = mounter(world, "--read-window", window)
    assert sorted(os.listdir(m.mountpoint)) == ["data"]
    assert sorted(os.listdir(m.mountpoint / "data")) == sorted(s.name for s in snaps)
    for snap in snaps:
        diffs = tree.compare(tree.describe(snap), _describe(_backup_dir(m.mountpoint, snap)),
                             ignore=tree.SEND_BEST_EFFORT)
        assert not diffs, f"{snap.name}: " + "\n".join(diffs[:20])


def test_hard_links_share_an_inode_number_and_backups_never_do(world: World, mounter) -> None:
    (world.subvol / "a").write_bytes(b"one")
    os.link(world.subvol / "a", world.subvol / "b")
    (world.subvol / "c").write_bytes(b"one")
    world.snapshot()
    assert world.push().code == 0
    (world.subvol / "a").write_bytes(b"two")  # both names change: same inode
    world.snapshot()
    assert world.push().code == 0
    m = mounter(world)
    first, second = (_backup_dir(m.mountpoint, s) for s in world.snapshots)
    for d in (first, second):
        assert (d / "a").stat().st_ino == (d / "b").stat().st_ino != (d / "c").stat().st_ino
        assert (d / "a").stat().st_nlink == 2
    assert (first / "a").read_bytes() == b"one" and (second / "b").read_bytes() == b"two"
    assert (first / "a").stat().st_ino != (second / "a").stat().st_ino
    # diff -r across two backups compares contents (equal inode numbers would make it skip them)
    done = subprocess.run(["diff", "-r", str(first), str(second)], capture_output=True, text=True)
    assert done.returncode == 1 and "a" in done.stdout


@pytest.mark.parametrize("window", ["16M", "1M"])
def test_sparse_files_report_their_allocation_and_holes(world: World, mounter, window: str) -> None:
    f = world.subvol / "sparse"
    with open(f, "wb") as out:
        out.write(os.urandom(65536))
        out.seek(64 << 20)
        out.write(os.urandom(65536))
    world.snapshot()
    assert world.push().code == 0
    m = mounter(world, "--read-window", window)
    got = _backup_dir(m.mountpoint, world.snapshots[0]) / "sparse"
    st, src = got.stat(), (world.snapshots[0] / "sparse").stat()
    assert st.st_size == src.st_size
    assert st.st_blocks == src.st_blocks  # before a byte is read: from the file index
    assert tree.data_ranges(got) == tree.data_ranges(world.snapshots[0] / "sparse")
    assert got.read_bytes() == (world.snapshots[0] / "sparse").read_bytes()


def test_cp_rsync_and_diff_work_on_the_mount(world: World, mounter, tmp_path: Path) -> None:
    snaps = _generations(world, 2)
    m = mounter(world)
    src = _backup_dir(m.mountpoint, snaps[-1])
    done = subprocess.run(["diff", "-r", "--no-dereference", str(snaps[-1]), str(src)], capture_output=True,
                          text=True)
    # diff reports every pair of fifos, even of two identical trees: anything else is a difference
    assert done.stderr == "" and all(line.endswith("is a fifo") for line in done.stdout.splitlines()), done.stdout
    dest = tmp_path / "rsynced"
    done = subprocess.run(["rsync", "-aHAXS", f"{src}/", f"{dest}/"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with mock.patch.object(tree, "physical_extents", _extents_or_none):
        diffs = tree.compare(tree.describe(snaps[-1]), tree.describe(dest), ignore=tree.SEND_BEST_EFFORT)
    assert not diffs, "\n".join(diffs[:20])
    copied = tmp_path / "copied"
    sub = next(p.name for p in sorted(snaps[-1].iterdir()) if p.is_dir() and not p.is_symlink() and any(p.iterdir()))
    done = subprocess.run(["cp", "-a", str(src / sub), str(copied)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cmp = filecmp.dircmp(snaps[-1] / sub, copied)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only


def test_concurrent_readers_of_one_and_of_many_files(world: World, mounter) -> None:
    snaps = _generations(world, 1)
    m = mounter(world, "--cache-size", "1M")  # smaller than the files: eviction while others read
    root = _backup_dir(m.mountpoint, snaps[0])
    files = [p for p in snaps[0].rglob("*") if p.is_file() and not p.is_symlink()
             and not p.name.startswith("fifo")][:40]
    want = {p: p.read_bytes() for p in files}
    errors: list[str] = []

    def reader(order: list[Path]) -> None:
        for p in order:
            got = (root / p.relative_to(snaps[0])).read_bytes()
            if got != want[p]:
                errors.append(str(p))

    big = [p for p in files if p.name == "big.bin"]
    threads = [threading.Thread(target=reader, args=(files[i::2] + big * 2,)) for i in range(2)]
    threads += [threading.Thread(target=reader, args=(list(reversed(files)),)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_ctrl_c_and_sigterm_unmount_and_exit_with_their_codes(world: World, mounter) -> None:
    _generations(world, 1)
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        m = mounter(world)
        cwd_holder = subprocess.Popen(["sleep", "600"], cwd=_backup_dir(m.mountpoint, world.snapshots[0]))
        try:
            m.signal(sig)
            assert m.wait() == code, m.stderr()
        finally:
            cwd_holder.kill()
            cwd_holder.wait()
        assert not mounted(m.mountpoint), m.stderr()
        assert "Traceback" not in m.stderr()
        assert f"; unmounted {m.mountpoint}" in m.stderr() and "resume" not in m.stderr()  # a mount's words
        assert not list((world.state / "mount-cache").glob("session-*"))  # the plaintext cache is gone


def test_unmounted_by_fusermount_ends_the_command_with_0(world: World, mounter) -> None:
    _generations(world, 1)
    m = mounter(world)
    assert subprocess.run(["fusermount3", "-u", str(m.mountpoint)]).returncode == 0
    assert m.wait() == 0, m.stderr()
    assert "unmounted" in m.stderr()


def _top(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns


def test_listing_the_backups_replays_no_tree_and_shows_their_top_directories(world: World, mounter) -> None:
    """``ls -l`` and ``getfattr`` of a subvolume's directory show each backup's top directory as its
    snapshot's from the manifests (fileindex/root.py), reading no file index; replayed, the same."""
    top = world.subvol
    (top / "a").write_text("one\n")
    os.chown(top, 1234, 5678)
    os.chmod(top, 0o750)
    os.utime(top, ns=(1_000_000_000_123_456_789, 1_000_000_000_987_654_321))
    os.setxattr(top, "user.note", b"\x00top")
    world.snapshot()  # a full: the stream sets the top directory's owner, mode, times and xattrs
    (top / "b").write_text("two\n")  # an entry added: the top directory's mtime moves
    world.snapshot()
    os.chmod(top, 0o701)  # its mode; an xattr goes
    os.removexattr(top, "user.note")
    world.snapshot()
    world.snapshot()  # nothing changed: the parent's attributes carried over
    assert world.push().code == 0
    want = [_top(s) for s in world.snapshots]
    assert len(set(want)) == 3  # three different tops over the four backups

    m = mounter(world)
    subvol_dir = m.mountpoint / "data"
    listed = subprocess.run(["ls", "-l", "--time-style=+%s", str(subvol_dir)], capture_output=True, text=True)
    assert listed.returncode == 0 and all(s.name in listed.stdout for s in world.snapshots), listed
    assert [_top(subvol_dir / s.name) for s in world.snapshots] == want
    assert [os.listxattr(subvol_dir / s.name) for s in world.snapshots] == [["user.note"]] * 2 + [[]] * 2
    assert os.getxattr(subvol_dir / world.snapshots[1].name, "user.note") == b"\x00top"
    assert subprocess.run(["fusermount3", "-u", str(m.mountpoint)]).returncode == 0
    assert m.wait() == 0, m.stderr()
    assert "and 0 B of file indexes" in m.stderr()  # no tree was replayed for the listing

    m = mounter(world)  # a fresh mount (no attributes cached by the kernel): each tree replayed first
    replayed = []
    for s in world.snapshots:
        assert sorted(os.listdir(m.mountpoint / "data" / s.name)) == sorted(os.listdir(s))
        replayed.append((_top(m.mountpoint / "data" / s.name), os.listxattr(m.mountpoint / "data" / s.name)))
    assert replayed == [(w, ["user.note"] if n < 2 else []) for n, w in enumerate(want)]


def test_a_killed_server_leaves_nothing_after_fusermount(world: World, mounter) -> None:
    _generations(world, 1)
    m = mounter(world)
    (_backup_dir(m.mountpoint, world.snapshots[0]) / "docs" / "readme.txt").read_bytes()  # a cached file
    m.proc.kill()
    m.wait()
    with pytest.raises(OSError) as info:
        os.listdir(m.mountpoint)
    assert info.value.errno == errno.ENOTCONN
    again = mounter(world, mountpoint=m.mountpoint, wait=False)  # a careless operator mounts again
    assert again.wait() == 2 and "fusermount3 -u" in again.stderr()
    assert subprocess.run(["fusermount3", "-u", str(m.mountpoint)]).returncode == 0  # as documented
    assert not mounted(m.mountpoint) and os.listdir(m.mountpoint) == []
    third = mounter(world, mountpoint=m.mountpoint)  # and the next mount removes the killed one's cache
    assert [p.name for p in (world.state / "mount-cache").iterdir()] == \
        [p.name for p in (world.state / "mount-cache").glob(f"session-{third.proc.pid}-*")]


def test_a_damaged_chunk_fails_only_the_files_it_holds(world: World, mounter) -> None:
    (world.subvol / "small.txt").write_bytes(b"small file\n")
    (world.subvol / "big.bin").write_bytes(os.urandom(3 << 20))
    world.snapshot()
    assert world.push().code == 0
    segments = sorted(p for p in world.target_dir.rglob("data/*/[0-9]*") if not p.name.endswith(".idx"))
    last = segments[-1]  # the stream's end holds big.bin's last data, not small.txt (written before it)
    raw = bytearray(last.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    last.write_bytes(bytes(raw))
    m = mounter(world)
    root = _backup_dir(m.mountpoint, world.snapshots[0])
    with pytest.raises(OSError) as info:
        (root / "big.bin").read_bytes()
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError):  # remembered: no second fetch, the same answer
        (root / "big.bin").read_bytes()
    assert (root / "small.txt").read_bytes() == b"small file\n"
    assert sorted(os.listdir(root)) == ["big.bin", "small.txt"]
    assert m.proc.poll() is None  # still serving
    assert "damaged" in m.stderr()


def test_careless_operators_are_refused_before_anything_is_mounted(world: World, mounter, tmp_path: Path) -> None:
    _generations(world, 1)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious").write_text("keep me visible")
    refused = mounter(world, mountpoint=busy, wait=False)
    assert refused.wait() == 2 and "not empty" in refused.stderr() and "--allow-non-empty" in refused.stderr()
    assert not mounted(busy)
    gone = tmp_path / "gone"
    proc = subprocess.run([*_argv(world), "mount", "--from", world.url, str(gone)], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    other = tmp_path / "other.key"
    subprocess.run([*_argv(world), "key", "generate", str(other)], check=True, capture_output=True)
    wrong = mounter(world, key=other, wait=False)
    assert wrong.wait() == 12, wrong.stderr()
    assert not mounted(wrong.mountpoint)
    inside = world.target_dir / "browse"  # an empty directory in the repository's own directory
    refused = mounter(world, mountpoint=inside, wait=False)
    assert refused.wait() == 2 and "inside the repository" in refused.stderr()
    assert not mounted(inside)
    inside.rmdir()
    over = mounter(world, "--allow-non-empty", mountpoint=busy)  # said explicitly: mounted over it
    assert sorted(os.listdir(over.mountpoint)) == ["data"]


def _argv(world: World) -> list[str]:
    import sys

    return [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
            "--key-file", str(world.key)]


def test_reading_one_file_fetches_what_a_selective_restore_fetches(world: World, mounter, tmp_path: Path) -> None:
    snaps = _generations(world, 2)
    path = "data/big.bin"
    (tmp_path / "r").mkdir()
    run = world.cli("restore", snaps[-1].name, path, "--from", world.url, "--to", str(tmp_path / "r"), "--json")
    assert run.code == 0, run.err
    restored = run.json()["fetched_bytes"]
    m = mounter(world)
    assert (_backup_dir(m.mountpoint, snaps[-1]) / path).read_bytes() == (snaps[-1] / path).read_bytes()
    subprocess.run(["fusermount3", "-u", str(m.mountpoint)], check=True)
    assert m.wait() == 0
    line = [ln for ln in m.stderr().splitlines() if "unmounted" in ln][-1]
    assert "for 1 file(s)" in line, line
    from btrsync.units import format_bytes

    assert format_bytes(restored) in line, (restored, line)


def test_files_opened_before_their_tree_was_dropped_read_right(world: World, mounter) -> None:
    """An incremental clones from its parent's files (btrfs send names the parent's paths, which the
    rebuild pins by inode object); its files are opened, then four more backups are looked into,
    which drops its tree (four are kept): the reads use the tree the files were opened in."""
    sv = world.subvol
    rng = random.Random(5)
    (sv / "dir").mkdir()
    old = rng.randbytes(256 * 1024)
    (sv / "dir" / "old").write_bytes(old)
    (sv / "keep").write_bytes(rng.randbytes(64 * 1024))
    world.snapshot()
    tree._clone(sv / "dir" / "old", sv / "copy")  # a reflink of the parent's file ...
    with open(sv / "dir" / "old", "r+b") as f:  # ... whose source then changes in place
        f.write(rng.randbytes(128 * 1024))
    os.rename(sv / "dir" / "old", sv / "renamed")
    world.snapshot()
    for n in range(4):
        (sv / f"later-{n}").write_bytes(rng.randbytes(1000))
        world.snapshot()
    assert world.push().code == 0
    snaps = world.snapshots
    m = mounter(world)
    inc = _backup_dir(m.mountpoint, snaps[1])
    handles = {name: os.open(inc / name, os.O_RDONLY) for name in ("copy", "renamed", "keep")}
    try:
        for snap in snaps[2:]:
            os.listdir(_backup_dir(m.mountpoint, snap))  # each replays its tree: the incremental's is dropped
        for name, fd in handles.items():
            assert os.pread(fd, 1 << 20, 0) == (snaps[1] / name).read_bytes(), name
        assert os.pread(handles["copy"], 1 << 20, 0) == old
    finally:
        for fd in handles.values():
            os.close(fd)


def test_a_damaged_file_index_gives_eio_below_that_backup_only(world: World, mounter) -> None:
    snaps = _generations(world, 2)
    child = next(b["id"] for b in world.listing() if b["snapshot"] == snaps[1].name)
    (world.target_dir / "data" / child / "files-000000").write_bytes(b"not an index")
    m = mounter(world)
    with pytest.raises(OSError) as info:
        os.listdir(_backup_dir(m.mountpoint, snaps[1]))
    assert info.value.errno == errno.EIO
    assert sorted(os.listdir(_backup_dir(m.mountpoint, snaps[0])))  # the parent reads
    assert m.proc.poll() is None and child in m.stderr()


def test_a_few_bytes_of_a_large_file_fetch_only_the_chunks_under_them(world: World, mounter) -> None:
    """A 24 MiB file, 64 KiB chunks (the world's push settings), 1 MiB windows: a read of 100 bytes
    in the middle fetches the chunks of that window (about 1 MiB), not the file."""
    data = os.urandom(24 << 20)
    (world.subvol / "large.bin").write_bytes(data)
    world.snapshot()
    assert world.push().code == 0
    m = mounter(world, "--read-window", "1M", "-v")
    path = _backup_dir(m.mountpoint, world.snapshots[0]) / "large.bin"
    with open(path, "rb") as f:
        f.seek(12_345_678)
        assert f.read(100) == data[12_345_678:12_345_778]
    subprocess.run(["fusermount3", "-u", str(m.mountpoint)], check=True)
    assert m.wait() == 0
    line = [ln for ln in m.stderr().splitlines() if "read for contents" in ln][-1]
    fetched = int(line.split("read for contents: ")[1].split()[0])
    assert 0 < fetched < 3 << 20, line  # the window and the kernel's read-ahead, never the 24 MiB


def test_other_users_get_in_only_with_allow_other_and_then_as_the_backup_allows(world: World, mounter) -> None:
    (world.subvol / "public").write_text("for everyone\n")
    (world.subvol / "public").chmod(0o644)
    (world.subvol / "secret").write_text("root only\n")
    (world.subvol / "secret").chmod(0o600)
    world.snapshot()
    assert world.push().code == 0
    base = Path(tempfile.mkdtemp(prefix="btrsync-mount-test-"))  # a place user nobody can reach
    base.chmod(0o755)
    try:
        for extra, public_readable in (((), False), (("--allow-other",), True)):
            mp = base / f"m{len(extra)}"
            mp.mkdir()
            mp.chmod(0o755)
            m = mounter(world, *extra, mountpoint=mp)
            top = _backup_dir(mp, world.snapshots[0])

            public, secret = (subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
                                              str(top / name)], capture_output=True, text=True)
                              for name in ("public", "secret"))
            assert (public.returncode == 0) == public_readable, public.stderr
            if public_readable:
                assert public.stdout == "for everyone\n"
            assert secret.returncode != 0 and "Permission denied" in secret.stderr
            assert (top / "secret").read_text() == "root only\n"  # root reads it
            subprocess.run(["fusermount3", "-u", str(mp)], check=True)
            assert m.wait() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_target_that_goes_away_gives_eio_until_it_is_back(world: World, mounter) -> None:
    """The disk of a directory target unplugged while mounted: what needs the target fails with
    EIO (a backup not looked into yet, a file not read yet), what was read goes on; back, all reads."""
    m, first, second = two_backups_mounted(world, mounter)
    away = world.target_dir.with_name("unplugged")
    world.target_dir.rename(away)
    try:
        for path in (second, first / "c.txt"):  # a tree not replayed yet, a file not fetched yet
            with pytest.raises(OSError) as info:
                os.listdir(path) if path == second else path.read_bytes()
            assert info.value.errno == errno.EIO, path
        assert (first / "a.txt").read_text() == "first\n"  # cached
    finally:
        away.rename(world.target_dir)
    assert sorted(os.listdir(second)) == ["a.txt", "b.txt", "c.txt"]
    assert (second / "b.txt").read_text() == "second\n"
    assert (first / "c.txt").read_text() == "not read before\n"
    assert m.proc.poll() is None
