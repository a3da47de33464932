"""The top directory's times survive receive, restore and drills, where plain btrfs receive loses them.

An incremental creates every new inode under a temporary name (``o<ino>-<gen>-<n>``) in the
subvolume's top directory and renames it into place, and btrfs send re-sends the top directory's
times only when they changed in the source: after ``btrfs receive`` of a link that adds files
under an unchanged top directory, its mtime is the time of the receive. btrsync sets it to the
snapshot's (``ops/receive.py`` inserts a UTIMES before END; ``restore/apply/`` carries it from
link to link). Every time here is compared to the nanosecond with the source snapshot's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from btrsync.btrfs.subvolume import subvolume_info
from btrsync.catalog import layout
from btrsync.sendstream.parser import parse
from tests.integration.conftest import World
from tests.support.loopfs import create_subvolume, snapshot

pytestmark = pytest.mark.btrfs

OLD = (1_000_000_000, 123_456_789)  # 2001-09-09: never the time of a receive
PATHS = ("", "d", "d/e", "d/e/f", "g")  # the top directory, a subdirectory, one below it, files


def _set_old(path: Path, step: int) -> None:
    ns = (OLD[0] + step) * 1_000_000_000 + OLD[1]
    os.utime(path, ns=(ns - 7_000_000_001, ns), follow_symlinks=False)


def _times(root: Path, paths: tuple[str, ...] = PATHS) -> dict[str, tuple[int, int]]:
    """(atime, mtime) in ns by lstat alone: no directory is read, so no atime moves."""
    out = {}
    for p in paths:
        full = root / p if p else root
        if os.path.lexists(full):
            st = os.lstat(full)
            out[p] = (st.st_atime_ns, st.st_mtime_ns)
    return out


def _first_link(world: World) -> Path:
    (world.subvol / "d" / "e").mkdir(parents=True)
    (world.subvol / "d" / "e" / "f").write_text("f\n")
    (world.subvol / "g").write_text("g\n")
    for i, p in enumerate(("d/e/f", "g", "d/e", "d", "")):
        _set_old(world.subvol / p if p else world.subvol, i)
    return world.snapshot()


def _adding_link(world: World, name: str) -> Path:
    """New inodes under d/e and d/e/h: the top directory and d unchanged (they keep their 2001
    times), d/e changed (given an old time of its own, so no time here is that of a receive)."""
    (world.subvol / "d" / "e" / name).write_text("new\n")
    (world.subvol / "d" / "e" / f"{name}.dir").mkdir()
    _set_old(world.subvol / "d" / "e", 10 + len(name))
    return world.snapshot()


def _backups(world: World) -> list[dict]:
    return sorted(world.listing(), key=lambda r: r["snapshot"])


def test_receive_gives_every_link_its_snapshot_s_top_directory_times(world: World) -> None:
    s1 = _first_link(world)
    s2 = _adding_link(world, "new")
    assert _times(s2)[""] == _times(s1)[""] and _times(s2)["d"] == _times(s1)["d"]  # unchanged in the source
    assert world.push().code == 0
    run = world.receive("latest")
    assert run.code == 0, run.err
    for snap in (s1, s2):
        assert _times(world.restore / snap.name) == _times(snap), snap.name

    # a later incremental on the received subvolumes (skipped: the times of s2 come from the
    # file indexes), and one whose parent's index is gone (they come from the received parent)
    s3 = _adding_link(world, "newer")
    assert world.push().code == 0
    s3_id = _backups(world)[-1]["id"]
    run = world.cli("receive", "latest", "--from", world.url, "--into", str(world.restore), "--json")
    assert run.code == 0, run.err
    assert [lk["action"] for lk in run.json()["links"]] == ["skipped", "skipped", "received"]
    for part in (world.target_dir / layout.data_prefix(s3_id)).glob("files-*"):
        part.unlink()
    s4 = _adding_link(world, "newest")
    assert world.push().code == 0
    run = world.cli("receive", "latest", "--from", world.url, "--into", str(world.restore), "--json")
    assert run.code == 0, run.err
    assert [lk["action"] for lk in run.json()["links"]] == ["skipped"] * 3 + ["received"]
    for snap in (s1, s2, s3, s4):
        received = world.restore / snap.name
        assert _times(received) == _times(snap), snap.name
        info = subvolume_info(received)
        assert info.readonly and info.received_uuid == subvolume_info(snap).uuid, snap.name


def test_restore_gives_the_top_directory_its_snapshot_s_times(world: World, tmp_path: Path) -> None:
    _first_link(world)
    s2 = _adding_link(world, "new")
    assert world.push().code == 0
    to = tmp_path / "restored"
    to.mkdir()
    run = world.cli("restore", "latest", "--from", world.url, "--to", str(to))
    assert run.code == 0, run.err
    assert _times(to / s2.name) == _times(s2)
    # the selected paths and their directories, from the file indexes
    sel = tmp_path / "selected"
    sel.mkdir()
    run = world.cli("restore", "latest", "d/e/new", "g", "--from", world.url, "--to", str(sel))
    assert run.code == 0, run.err
    assert _times(sel / s2.name, PATHS + ("d/e/new",)) == _times(s2, ("", "d", "d/e", "g", "d/e/new"))


def test_drills_compare_the_top_directory_s_times(world: World, tmp_path: Path) -> None:
    _first_link(world)
    _adding_link(world, "new")
    assert world.push().code == 0
    for extra in (("--snapshot-dir", str(world.snapdir)), ()):  # with the original, then with the indexes
        run = world.cli("verify", "--from", world.url, "latest", "--level", "restore",
                        "--scratch-dir", str(tmp_path / "drills"), "--json", *extra)
        assert run.code == 0, (extra, run.out, run.err)


def test_the_inserted_utimes_is_a_valid_command_btrfs_receive_dump_shows_last(btrfs_fs: Path) -> None:
    from btrsync.ops.receive import _LinkStream
    from btrsync.sendstream import compose

    sub = create_subvolume(btrfs_fs / "data")
    (sub / "d").mkdir()
    s1 = snapshot(sub, btrfs_fs / "s1")
    (sub / "d" / "new").write_text("x\n")
    s2 = snapshot(sub, btrfs_fs / "s2")
    stream = subprocess.run(["btrfs", "send", "-q", "-p", str(s1), str(s2)], capture_output=True,
                            check=True).stdout
    link = SimpleNamespace(backup_id="s2", parent_uuid=None)  # all _LinkStream reads of a manifest
    ls = _LinkStream(link, btrfs_fs)  # type: ignore[arg-type]
    out = b""
    for i in range(0, len(stream), 4096):  # chunks that cut commands anywhere
        out += b"".join(bytes(p) for p in ls.feed(stream[i:i + 4096]))
    assert ls.root_times is None  # the top directory is unchanged: the stream does not send its times
    st = os.lstat(s1)
    times = tuple(divmod(ns, 1_000_000_000) for ns in (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns))
    out += compose.utimes("", *times) + ls.end()  # type: ignore[arg-type]
    assert out[:-len(compose.END) - len(compose.utimes("", *times))] == stream[:-len(compose.END)]  # type: ignore[arg-type]
    events = parse(out)  # every CRC and attribute checks out
    assert [e.cmd for e in events[-2:]] == ["utimes", "end"] and events[-2].path == ""
    assert (events[-2].attrs["atime"], events[-2].attrs["mtime"], events[-2].attrs["ctime"]) == times
    dump = subprocess.run(["btrfs", "receive", "--dump"], input=out, capture_output=True, check=True)
    last = dump.stdout.decode().splitlines()[-1].split()
    assert last[0] == "utimes" and last[1] == "./s2/", dump.stdout.decode()
    assert not dump.stderr.strip(), dump.stderr
