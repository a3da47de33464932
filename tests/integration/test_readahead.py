"""Reading a snapshot ahead of btrfs send (btrsync/ops/push/readahead.py), on real btrfs filesystems.

What it must do: bring the data the send will read into the page cache, no further ahead than its
window, never open anything but a regular file inside the snapshot, leave compressed extents to a
``--compressed-data`` send, and stop (with its ``btrfs send --no-data``) the moment it is closed.
Page-cache residency is read with ``mincore(2)``; the snapshot's pages are dropped per file with
``POSIX_FADV_DONTNEED`` (no machine-wide ``drop_caches``).
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import psutil
import pytest

from btrsync.btrfs.send import SendOptions, SendProcess
from btrsync.ops.estimate import estimate_push, stream_size
from btrsync.ops.push import readahead
from btrsync.ops.push.readahead import SendReadAhead, disk_ranges, open_regular_beneath
from btrsync.ops.push.watch import StreamWatch
from btrsync.progress import Estimate
from btrsync.sendstream.parser import parse
from btrsync.sendstream.stats import ChangeStats
from tests.support.loopfs import create_subvolume, fresh_area, snapshot

MiB = 1 << 20
PLAIN = SendOptions()
COMPRESSED = SendOptions(proto=2, compressed_data=True)


def resident(path: Path) -> int:
    """Bytes of ``path`` in the page cache (util-linux ``fincore``: mincore(2) of a mapping)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip() or 0)


def evict(root: Path) -> None:
    """The files under ``root`` out of the page cache (written back first: clean pages only go)."""
    subprocess.run(["sync", "-f", str(root)], check=True)
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def write_files(root: Path, count: int, size: int) -> list[Path]:
    files = []
    for i in range(count):
        p = root / f"d{i % 4}" / f"f{i:03d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        files.append(p)
    return files


@pytest.fixture
def src(btrfs_pools) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    with fresh_area(btrfs_pools("src"), "data") as area:
        yield area


def read_ahead(snap: Path, options: SendOptions, parent: Path | None = None) -> SendReadAhead:
    """Run a read-ahead over the whole snapshot (the send waiting at its start), then let the send
    pass everything; the read-ahead ends by itself."""
    position = [0]
    with SendReadAhead(snap, parent, options, lambda: position[0], window=1 << 40) as ra:
        assert ra.walked.wait(60)
        position[0] = 1 << 60
        ra._thread.join(timeout=30)
        assert not ra._thread.is_alive()
    return ra


def wait_for(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_it_reads_ahead_what_the_send_will_read_and_drops_it_once_passed(src: Path) -> None:
    """The start of every extent (the send's own sequential read-ahead takes a long one on from
    there); once the send has passed a file, the pages it did not have before are gone again."""
    files = write_files(src, 24, 3 * MiB) + write_files(src / "big", 2, 24 * MiB)
    small = write_files(src / "small-files", 40, 64 * 1024)  # below DROP_FROM: cached they stay
    (src / "small").write_bytes(b"x" * 100)  # inline: nothing on the disk to read
    snap = snapshot(src, src.parent / "snap")
    snapped = [snap / f.relative_to(src) for f in files]
    evict(snap)
    assert sum(resident(f) for f in snapped) < 4 * MiB, "the files were not out of the cache to begin with"
    position = [0]
    with SendReadAhead(snap, None, PLAIN, lambda: position[0], window=1 << 40) as ra:
        assert ra.walked.wait(30)
        expected = 24 * 3 * MiB + 2 * readahead.SLICE
        assert wait_for(lambda: sum(resident(f) for f in snapped) >= expected), \
            f"{sum(resident(f) for f in snapped)} bytes in the cache of {expected} asked for"
        position[0] = 1 << 60  # the send has passed them all
        assert wait_for(lambda: not ra._thread.is_alive())
    assert ra.requested == expected + 40 * 64 * 1024 + 100  # a v1 send reads inline data through the cache
    assert ra.dropped == 26
    assert sum(resident(f) for f in snapped) < 4 * MiB
    assert sum(resident(snap / f.relative_to(src)) for f in small) >= 40 * 64 * 1024 * 9 // 10


def test_it_stays_within_its_window_of_the_send_and_skips_what_it_passed(src: Path) -> None:
    write_files(src, 16, 2 * MiB)
    snap = snapshot(src, src.parent / "snap")
    position = [0]
    with SendReadAhead(snap, None, PLAIN, lambda: position[0], window=4 * MiB) as ra:
        assert wait_for(lambda: ra.requested >= 6 * MiB, 5)
        time.sleep(0.3)
        assert ra.requested == 6 * MiB  # the files at 0, 2 and 4 MiB: 4 MiB ahead of the send
        position[0] = 16 * MiB  # the send moved on: those from 6 to 14 MiB are behind it now
        assert wait_for(lambda: ra.requested >= 12 * MiB, 5)
        time.sleep(0.3)
        assert ra.requested == 12 * MiB  # 16, 18 and 20 MiB
        position[0] = 1 << 60
        assert wait_for(lambda: not ra._thread.is_alive())
    assert ra.passed_over == 20 * MiB


def test_it_keeps_pace_with_a_real_compressed_data_send(btrfs_factory) -> None:  # type: ignore[no-untyped-def]
    """Both sides count file data by its logical length: compressed extents, whose writes carry
    far fewer bytes than they stand for, do not leave the read-ahead behind (or stuck)."""
    mnt = btrfs_factory("1G", mount_options=("compress-force=zstd",))
    src = create_subvolume(mnt / "data")
    (src / "a-log").write_bytes(b"".join(b"line %09d of a very compressible log\n" % i for i in range(1_500_000)))
    randoms = write_files(src, 24, MiB)  # incompressible: stored as they are
    snap = snapshot(src, mnt / "snap")
    evict(snap)
    watch = StreamWatch("test", full=True)
    with SendProcess(snap, None, COMPRESSED) as send, \
            SendReadAhead(snap, None, COMPRESSED, lambda: watch.stats.data_bytes, window=8 * MiB) as ra:
        for chunk in send.chunks(256 * 1024):
            watch.feed(chunk)
            time.sleep(0.005)  # a push's pace, not a /dev/null's: the read-ahead gets ahead
        send.ended()
        assert wait_for(lambda: not ra._thread.is_alive(), 5), "the read-ahead did not end with the send"
    assert ra.requested >= 20 * MiB, (ra.requested, ra.passed_over)
    assert sum(resident(snap / f.relative_to(src)) for f in randoms) < 2 * MiB  # dropped once passed


def _argv(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return []


def test_closing_stops_it_and_its_metadata_send_at_once(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "BUFFER", 10)  # it reads the metadata stream as it goes
    write_files(src, 3000, 8192)  # a metadata stream longer than the pipe holds
    snap = snapshot(src, src.parent / "snap")
    me = psutil.Process()
    ra = SendReadAhead(snap, None, PLAIN, lambda: 0, window=64 * 1024)  # waits at the first files
    with ra:
        deadline = time.monotonic() + 5
        while not ra.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ra.requested
        sends = [p for p in me.children() if "--no-data" in _argv(p)]
        assert sends, "no btrfs send --no-data was running"
        started = time.monotonic()
    assert time.monotonic() - started < 2
    assert not ra._thread.is_alive()
    psutil.wait_procs(sends, timeout=5)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in sends)


def test_only_regular_files_beneath_the_directory_are_opened(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file").write_bytes(b"data")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not ours")
    (root / "link").symlink_to(outside)
    (root / "dir" / "filelink").symlink_to("file")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    done = threading.Event()
    results: dict[str, int | None] = {}

    def probe() -> None:
        for name in ("dir/file", "link/secret", "dir/filelink", "../outside/secret", "/etc/passwd",
                     "fifo", "null", "dir", "missing"):
            results[name] = open_regular_beneath(dirfd, name)
        done.set()

    threading.Thread(target=probe, daemon=True).start()
    assert done.wait(10), "a probe blocked"
    try:
        fd = results.pop("dir/file")
        assert fd is not None
        os.close(fd)
        assert results == dict.fromkeys(results)  # every other one refused
    finally:
        os.close(dirfd)


def test_compressed_extents_are_left_to_a_compressed_data_send(btrfs_factory) -> None:  # type: ignore[no-untyped-def]
    mnt = btrfs_factory(mount_options=("compress-force=zstd",))
    src = create_subvolume(mnt / "data")
    text = b"".join(b"line %08d of a very compressible log\n" % i for i in range(200_000))  # ~8 MiB
    (src / "log").write_bytes(text)
    (src / "holey").write_bytes(b"")
    with (src / "holey").open("r+b") as f:
        f.seek(8 * MiB)
        f.write(b"end")
    snap = snapshot(src, mnt / "snap")
    fd = os.open(snap / "log", os.O_RDONLY)
    try:
        assert list(disk_ranges(fd, 0, len(text), skip_encoded=True)) == []
        assert sum(n for _, n in disk_ranges(fd, 0, len(text), skip_encoded=False)) == len(text)
    finally:
        os.close(fd)
    fd = os.open(snap / "holey", os.O_RDONLY)
    try:  # the hole has nothing to read; the last block, compressed or not, is all there is
        assert sum(n for _, n in disk_ranges(fd, 0, 8 * MiB + 3, skip_encoded=False)) <= 128 * 1024
    finally:
        os.close(fd)
    ra = read_ahead(snap, COMPRESSED)
    assert ra.requested <= 4096 and ra.passed_over >= len(text)  # only the holey file's uncompressed tail
    ra = read_ahead(snap, PLAIN)  # a v1 send reads them through the page cache: read ahead
    assert ra.requested >= len(text)


def test_an_incremental_reads_ahead_what_changed(src: Path) -> None:
    files = write_files(src, 8, MiB)
    parent = snapshot(src, src.parent / "parent")
    files[3].write_bytes(os.urandom(2 * MiB))
    (src / "new").write_bytes(os.urandom(MiB))
    snap = snapshot(src, src.parent / "snap")
    ra = read_ahead(snap, PLAIN, parent=parent)
    assert ra.requested == 3 * MiB


def test_a_subvolume_nested_in_the_snapshot_is_not_entered(src: Path) -> None:
    (src / "f").write_bytes(b"x" * 8192)
    snap = snapshot(src, src.parent / "snap", readonly=False)
    create_subvolume(snap / "nested")
    (snap / "nested" / "g").write_bytes(b"y" * 8192)
    subprocess.run(["btrfs", "property", "set", "-ts", str(snap), "ro", "true"], check=True)
    dirfd = os.open(snap, os.O_RDONLY | os.O_DIRECTORY)
    try:
        device = os.fstat(dirfd).st_dev
        opened = [open_regular_beneath(dirfd, "f", device), open_regular_beneath(dirfd, "nested/g")]
        assert None not in opened  # both regular files, the second of another subvolume
        for fd in opened:
            os.close(fd)  # type: ignore[arg-type]
        assert open_regular_beneath(dirfd, "nested/g", device) is None
    finally:
        os.close(dirfd)
        subprocess.run(["btrfs", "property", "set", "-ts", str(snap), "ro", "false"], check=True)


def test_what_the_send_may_have_read_already_is_not_asked_for_again(src: Path) -> None:
    """The push's position trails the send by up to ``lag`` (its watch's queue): a range ending
    within that stretch may have been read, and dropped, by the send; reading it again would read
    it twice.  Before the send has read anything, nothing is behind it."""
    write_files(src, 8, 2 * MiB)
    snap = snapshot(src, src.parent / "snap")
    position = [8 * MiB]
    with SendReadAhead(snap, None, PLAIN, lambda: position[0], window=1 << 40, lag=4 * MiB) as ra:
        assert ra.walked.wait(30)
        position[0] = 1 << 60
    assert (ra.requested, ra.passed_over) == (4 * MiB, 12 * MiB)  # the six files ending at 2 .. 12 MiB passed
    position = [0]
    with SendReadAhead(snap, None, PLAIN, lambda: position[0], window=1 << 40, lag=4 * MiB) as ra:
        assert ra.walked.wait(30)
        position[0] = 1 << 60
    assert ra.requested == 16 * MiB


def test_it_tells_the_estimate_what_its_own_walk_would_measure(src: Path) -> None:
    """The progress estimate takes the read-ahead's measure of the --no-data stream instead of a
    second walk; it is the very figure that walk gives."""
    write_files(src, 20, 256 * 1024)
    snap = snapshot(src, src.parent / "snap")
    told: list[int | None] = []
    with SendReadAhead(snap, None, PLAIN, lambda: 1 << 60, on_sized=told.append) as ra:
        assert ra.walked.wait(30)
    assert told == [stream_size(snap, None)] and told[0] > 5 * MiB
    done: Future[int | None] = Future()
    done.set_result(told[0] + 1)
    assert estimate_push(snap, None, [], "data", measured=done) == Estimate(told[0] + 1, "btrfs send --no-data")
    nothing: Future[int | None] = Future()
    nothing.set_result(None)  # the read-ahead had no measure: the estimate walks itself
    assert estimate_push(snap, None, [], "data", measured=nothing) == Estimate(told[0], "btrfs send --no-data")


def test_a_stream_longer_than_its_buffer_is_read_as_used_and_not_measured(
        src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "BUFFER", 3)
    write_files(src, 12, MiB)
    snap = snapshot(src, src.parent / "snap")
    told: list[int | None] = []
    position = [0]
    with SendReadAhead(snap, None, PLAIN, lambda: position[0], window=1 << 40, on_sized=told.append) as ra:
        assert ra.walked.wait(30)
        position[0] = 1 << 60
    assert told == [None] and ra.requested == 12 * MiB


def test_without_read_ahead_the_estimate_is_told_nothing_at_once(src: Path) -> None:
    told: list[int | None] = []
    with SendReadAhead(src, None, PLAIN, lambda: 0, window=0, on_sized=told.append):
        pass
    assert told == [None]


def test_both_sides_count_a_partly_referenced_compressed_extent_alike(btrfs_factory) -> None:  # type: ignore[no-untyped-def]
    """A write of part of a compressed extent carries the whole extent (``unencoded_len``) but
    stands for the file range (``unencoded_file_len``), as the --no-data stream's UPDATE_EXTENT
    does: counted by the former, the push's position ran ahead of the read-ahead's."""
    mnt = btrfs_factory(mount_options=("compress-force=zstd",))
    src = create_subvolume(mnt / "data")
    f = src / "f"
    f.write_bytes(b"abcdefgh" * 16384)  # 128 KiB, one compressed extent
    subprocess.run(["sync", "-f", str(mnt)], check=True)
    with f.open("r+b") as h:
        h.write(b"Z" * 65536)  # the second half now references half of the old extent
    snap = snapshot(src, mnt / "snap")
    real = subprocess.run(["btrfs", "send", "-q", *COMPRESSED.argv(), str(snap)], capture_output=True,
                          check=True).stdout
    events = parse(real)
    partial = [e for e in events if e.cmd == "encoded_write" and e.attrs["unencoded_len"] > e.attrs["unencoded_file_len"]]
    assert partial, "no write of part of a compressed extent: the case is not exercised"
    stats = ChangeStats()
    for ev in events:
        stats.add(ev)
    nodata = subprocess.run(["btrfs", "send", "-q", "--no-data", *COMPRESSED.argv(), str(snap)], capture_output=True,
                            check=True).stdout
    extents = sum(e.attrs["size"] for e in parse(nodata) if e.cmd == "update_extent")
    assert stats.data_bytes == extents == 128 * 1024
