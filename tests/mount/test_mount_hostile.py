"""``btrsync mount`` against an unlucky operator: names that are not UTF-8, device nodes and
fifos, empty files and holes at the end, a cache directory on a full filesystem, two mounts of
one repository at once, a backup pruned while it is read."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import World
from tests.mount.conftest import mounted, two_backups_mounted

pytestmark = [pytest.mark.btrfs, pytest.mark.slow]

BAD = b"bad-\xff\xfe-name"


def _odd_tree(world: World) -> Path:
    root = os.fsencode(world.subvol)
    with open(os.path.join(root, BAD), "wb") as f:
        f.write(b"latin-1 bytes in the name\n")
    os.mkdir(os.path.join(root, b"dir-\xe9"))
    with open(os.path.join(root, b"dir-\xe9", b"inner\n\xff"), "wb") as f:
        f.write(b"inner")
    (world.subvol / "empty").write_bytes(b"")
    os.setxattr(world.subvol / "empty", b"user.b\xe9", b"\x00\xff")  # a name that is not UTF-8
    os.setxattr(world.subvol / "empty", "user.big", os.urandom(16000))
    with open(world.subvol / "hole-at-end", "wb") as f:
        f.write(b"head" * 1000)
        f.truncate(5 << 20)
    os.mkfifo(world.subvol / "fifo")
    os.mknod(world.subvol / "null-dev", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    os.symlink(os.fsdecode(b"target-\xff"), world.subvol / "link-to-bad")
    world.snapshot()
    run = world.push()
    assert run.code == 0, run.err
    return world.snapshots[-1]


def test_odd_names_special_files_and_holes_read_as_in_the_snapshot(world: World, mounter, tmp_path: Path) -> None:
    snap = _odd_tree(world)
    m = mounter(world, "--read-window", "1M")
    got = m.mountpoint / "data" / snap.name
    assert sorted(os.listdir(os.fsencode(got))) == sorted(os.listdir(os.fsencode(snap)))
    assert open(os.path.join(os.fsencode(got), BAD), "rb").read() == b"latin-1 bytes in the name\n"
    inner = os.path.join(os.fsencode(got), b"dir-\xe9", b"inner\n\xff")
    assert open(inner, "rb").read() == b"inner"
    assert os.readlink(os.path.join(os.fsencode(got), b"link-to-bad")) == b"target-\xff"
    assert (got / "empty").read_bytes() == b""
    assert sorted(os.listxattr(os.fsencode(got / "empty"))) == sorted(os.listxattr(os.fsencode(snap / "empty")))
    assert os.getxattr(got / "empty", b"user.b\xe9") == b"\x00\xff"
    assert os.getxattr(got / "empty", "user.big") == os.getxattr(snap / "empty", "user.big")
    assert (got / "hole-at-end").stat().st_size == 5 << 20
    from tests.support import tree

    assert tree.data_ranges(got / "hole-at-end") == tree.data_ranges(snap / "hole-at-end")  # from the index
    assert (got / "hole-at-end").read_bytes() == (snap / "hole-at-end").read_bytes()
    assert tree.data_ranges(got / "hole-at-end") == tree.data_ranges(snap / "hole-at-end")  # rebuilt
    assert (got / "hole-at-end").stat().st_blocks == (snap / "hole-at-end").stat().st_blocks
    assert stat.S_ISFIFO((got / "fifo").lstat().st_mode)
    dev = (got / "null-dev").lstat()
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
    done = subprocess.run(["cp", "-a", str(got), str(tmp_path / "out")], capture_output=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(["diff", "-r", "--no-dereference", str(snap), str(tmp_path / "out")], capture_output=True)
    assert b"differ" not in done.stdout and done.stderr == b"", done.stdout + done.stderr
    assert mounted(m.mountpoint)


def test_a_full_cache_filesystem_fails_the_read_not_the_mount(world: World, mounter, tmp_path: Path) -> None:
    (world.subvol / "big").write_bytes(os.urandom(3 << 20))
    (world.subvol / "small").write_bytes(b"small")
    world.snapshot()
    assert world.push().code == 0
    cache = tmp_path / "tiny"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)], check=True)
    try:
        m = mounter(world, "--cache-dir", str(cache))
        got = m.mountpoint / "data" / world.snapshots[-1].name
        with pytest.raises(OSError) as err:
            (got / "big").read_bytes()
        assert err.value.errno in (errno.EIO, errno.ENOSPC)
        assert (got / "small").read_bytes() == b"small"
        assert mounted(m.mountpoint) and m.proc.poll() is None
        # the cache room came back: the same file reads now (a full disk is not damage)
        subprocess.run(["mount", "-o", "remount,size=16m", str(cache)], check=True)
        assert (got / "big").read_bytes() == (world.snapshots[-1] / "big").read_bytes()
    finally:
        for mp in list(m.mountpoint.parent.glob("mnt*")):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_two_mounts_of_one_repository_share_nothing_they_remove(world: World, mounter) -> None:
    (world.subvol / "f").write_bytes(os.urandom(200_000))
    world.snapshot()
    assert world.push().code == 0
    a = mounter(world)
    b = mounter(world)
    name = world.snapshots[-1].name
    fa = open(a.mountpoint / "data" / name / "f", "rb")
    assert fa.read(10) == (world.snapshots[-1] / "f").read_bytes()[:10]
    subprocess.run(["fusermount3", "-u", str(b.mountpoint)], check=True)
    assert b.wait() == 0
    assert fa.read() == (world.snapshots[-1] / "f").read_bytes()[10:]
    fa.close()
    cache = world.state / "mount-cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in cache.iterdir())


def test_a_backup_deleted_under_the_mount_gives_eio_and_the_mount_stays_well(world: World, mounter) -> None:
    import shutil

    from btrsync.catalog import layout

    (world.subvol / "a").write_bytes(os.urandom(300_000))
    (world.subvol / "b").write_bytes(os.urandom(300_000))
    world.snapshot()
    assert world.push().code == 0
    (world.subvol / "c").write_bytes(os.urandom(1000))
    world.snapshot()
    assert world.push().code == 0
    old, new = world.snapshots
    m = mounter(world)
    mine = m.mountpoint / "data" / old.name
    assert sorted(os.listdir(mine)) == ["a", "b"]
    fa = open(mine / "a", "rb")  # opened, not read yet
    # a prune (or delete) on another host removes both backups while the mount serves them
    for b in world.listing():
        shutil.rmtree(world.target_dir / layout.manifest_key(str(b["id"])).rsplit("/", 1)[0])
        shutil.rmtree(world.target_dir / layout.data_prefix(str(b["id"])))
    with pytest.raises(OSError) as err:
        fa.read()
    assert err.value.errno == errno.EIO
    fa.close()
    with pytest.raises(OSError) as err:
        (mine / "b").read_bytes()
    assert err.value.errno == errno.EIO
    with pytest.raises(OSError) as err:
        os.listdir(m.mountpoint / "data" / new.name)  # its tree was never read: the index is gone
    assert err.value.errno == errno.EIO
    assert mounted(m.mountpoint) and m.proc.poll() is None
    assert sorted(os.listdir(mine)) == ["a", "b"]  # the names it had read stay listed
    # the log says the backups were removed since the mount started, not that their data is damaged
    assert "was removed from" in m.stderr() and "damaged" not in m.stderr(), m.stderr()
    subprocess.run(["fusermount3", "-u", str(m.mountpoint)], check=True)
    assert m.wait() == 0 and not mounted(m.mountpoint)
    assert not [p for p in (world.state / "mount-cache").iterdir()]


def test_a_push_under_the_mount_neither_shows_nor_disturbs(world: World, mounter) -> None:
    (world.subvol / "a").write_bytes(os.urandom(300_000))
    world.snapshot()
    assert world.push().code == 0
    m = mounter(world)
    (world.subvol / "a").write_bytes(os.urandom(300_000))
    world.snapshot()
    assert world.push().code == 0
    assert os.listdir(m.mountpoint / "data") == [world.snapshots[0].name]
    assert (m.mountpoint / "data" / world.snapshots[0].name / "a").read_bytes() == \
        (world.snapshots[0] / "a").read_bytes()


def test_a_mount_point_with_a_space_and_a_newline_mounts_and_unmounts(world: World, mounter, tmp_path: Path) -> None:
    import signal

    (world.subvol / "f").write_bytes(b"x")
    world.snapshot()
    assert world.push().code == 0
    odd = tmp_path / "my backups\nnew"
    m = mounter(world, mountpoint=odd)
    assert (odd / "data" / world.snapshots[-1].name / "f").read_bytes() == b"x"
    m.signal(signal.SIGINT)
    assert m.wait() == 130, m.stderr()
    assert not mounted(odd)
    run = world.cli("mount", "--from", world.url, str(odd / "data"))  # not a directory now: refused
    assert run.code == 2, run.err


def test_a_disk_unmounted_under_its_mount_point_is_not_taken_for_damage(world: World, mounter) -> None:
    """A USB disk unplugged leaves its mount point: an empty directory where the repository was.
    What needs the target fails with EIO then, and reads again once it is back."""
    m, first, second = two_backups_mounted(world, mounter)
    away = world.target_dir.with_name("unplugged")
    away.mkdir()
    for p in list(world.target_dir.iterdir()):
        p.rename(away / p.name)
    try:
        for path in (second, first / "c.txt"):  # a tree not replayed yet, a file not fetched yet
            with pytest.raises(OSError) as info:
                os.listdir(path) if path == second else path.read_bytes()
            assert info.value.errno == errno.EIO, path
    finally:
        for p in list(away.iterdir()):
            p.rename(world.target_dir / p.name)
    assert sorted(os.listdir(second)) == ["a.txt", "b.txt", "c.txt"]
    assert (first / "c.txt").read_text() == "not read before\n"
    assert m.proc.poll() is None


def test_the_help_examples_run_as_written(world: World, tmp_path: Path) -> None:
    """``mount --help``'s examples, /mnt/backups a directory of the test, b2 configured as the
    world's repository, the snapshot names of the examples made real ones."""
    import shlex
    import signal
    import sys
    import time

    from btrsync.cli.main import main
    from tests.mount.conftest import force_unmount

    (world.subvol / "etc").mkdir()
    (world.subvol / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (world.subvol / "home" / "me").mkdir(parents=True)
    (world.subvol / "home" / "me" / "notes").write_text("notes\n")
    world.snapshot()
    assert world.push().code == 0
    with open(world.config, "a") as f:
        f.write(f'\n[targets.b2]\nurl = "{world.url}"\n')
    assert main(["mount", "--help"]) == 0
    help_text = world.capsys.readouterr().out
    lines = [line.strip() for line in help_text.split("Examples:")[1].split("Options:")[0].splitlines() if line.strip()]
    mnt, name = tmp_path / "mnt-backups", world.snapshots[-1].name
    mnt.mkdir()
    restored = tmp_path / "restored"
    etc = tmp_path / "etc"
    (etc).mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")

    def real(line: str) -> list[str]:
        line = (line.replace("/mnt/backups", str(mnt)).replace("data.20261120T030000Z", name)
                .replace("data.20261127T030000Z", name).replace("/home/me/restored/", f"{restored}/")
                .replace(" /etc", f" {etc}").rstrip(" &"))
        argv = shlex.split(line)
        if argv[0] == "btrsync":
            argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
                    "--key-file", str(world.key), *argv[1:]]
        return argv

    assert lines[0].startswith("btrsync mount --from file://")
    background = next(line for line in lines if line.endswith("&"))
    proc = subprocess.Popen(real(background), stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not mounted(mnt):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        for line in lines[2:]:
            done = subprocess.run(real(line), capture_output=True, text=True)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert proc.wait(60) == 0
        assert (restored / "notes").read_text() == "notes\n"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        force_unmount(mnt)


def test_a_cache_inside_the_repository_directory_is_refused(world: World, tmp_path: Path) -> None:
    """The cache holds plaintext: never on the repository's disk (carried off-site, encrypted
    backups only), where a killed mount would leave it and clean would walk it."""
    (world.subvol / "f").write_bytes(b"secret")
    world.snapshot()
    assert world.push().code == 0
    mnt = tmp_path / "m"
    mnt.mkdir()
    before = sorted(str(p) for p in world.target_dir.rglob("*"))
    import sys

    from tests.mount.conftest import force_unmount

    try:
        for cache in (world.target_dir / "cache", world.target_dir):
            # a process of its own: mounted by mistake, it is ended by the timeout, not the test hung
            run = subprocess.run([sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir",
                                  str(world.state), "--key-file", str(world.key), "mount", "--from", world.url,
                                  str(mnt), "--cache-dir", str(cache)], capture_output=True, text=True, timeout=60)
            assert run.returncode == 2 and "plaintext" in run.stderr, run.stderr
        assert not mounted(mnt)
    finally:
        force_unmount(mnt)
    assert sorted(str(p) for p in world.target_dir.rglob("*")) == before
