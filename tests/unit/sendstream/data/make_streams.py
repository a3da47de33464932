"""Record the small real send streams the parser's unit tests and fuzzers use (needs root + btrfs).

    sudo .venv/bin/python -m tests.unit.sendstream.data.make_streams

A small tree (text and random files, a compressible file, a reflink, a hardlink, a sparse file,
xattrs, a fifo, a symlink, odd names, owners and modes) on a loopback btrfs mounted with
compress=zstd; snapshot, change, snapshot again; then full and incremental streams with
protocol 1, and with protocol 2 and --compressed-data (ENCODED_WRITE commands). Written as
``<name>.stream.zst`` next to this file.
"""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import tempfile
from pathlib import Path

import zstandard

from tests.support.loopfs import create_subvolume, loop_btrfs, snapshot

HERE = Path(__file__).parent
FICLONE = 0x40049409


def build(root: Path, rng: random.Random) -> None:
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_bytes(b"btrfs send stream fixture\n" * 20)
    (root / "docs" / "compressible.txt").write_bytes(b"all work and no play " * 12000)
    (root / "random.bin").write_bytes(rng.randbytes(70_000))
    with open(root / "random.bin", "rb") as s, open(root / "docs" / "clone.bin", "wb") as d:
        fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    os.link(root / "docs" / "readme.txt", root / "hard link")
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(600_000)
        f.write(rng.randbytes(5000))
    os.setxattr(root / "docs" / "readme.txt", "user.note", b"bin\x00\xff\ndata")
    os.setxattr(root / "docs", "user.empty", b"")
    os.mkfifo(root / "fifo")
    os.symlink("docs/readme.txt", root / "link")
    odd = root / "odd names"
    odd.mkdir()
    for name in ("with space", "new\nline", "ünïcødé", "-dash", "tab\there", "x" * 255):
        (odd / name).write_bytes(name.encode()[:20])
    os.chown(odd / "with space", 1000, 1000)
    os.chmod(odd / "-dash", 0o4755)


def change(root: Path, rng: random.Random) -> None:
    with open(root / "random.bin", "r+b") as f:
        f.seek(20_000)
        f.write(rng.randbytes(9000))
    os.rename(root / "odd names" / "with space", root / "docs" / "moved here")
    (root / "odd names" / "tab\there").unlink()
    os.removexattr(root / "docs" / "readme.txt", "user.note")
    os.setxattr(root / "docs" / "readme.txt", "user.new", b"value")
    with open(root / "docs" / "compressible.txt", "ab") as f:
        f.write(b"and then some more " * 5000)
    os.truncate(root / "sparse", 700_000)
    os.chmod(root / "docs", 0o700)
    (root / "new-dir").mkdir()
    (root / "new-dir" / "file").write_bytes(b"new")


def send(args: list[str], out: Path) -> None:
    subprocess.run(["btrfs", "send", "-q", *args, "-f", str(out)], check=True)


def main() -> None:
    rng = random.Random(2026)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work, \
            loop_btrfs(Path(work), "512M", "fixtures", mount_options=["compress=zstd"]) as mnt:
        sv = create_subvolume(mnt / "sv")
        build(sv, rng)
        s1 = snapshot(sv, mnt / "snap-1")
        change(sv, rng)
        s2 = snapshot(sv, mnt / "snap-2")
        tmp = Path(work)
        streams = {
            "v1-full": ["--proto", "1", str(s1)],
            "v1-incremental": ["--proto", "1", "-p", str(s1), str(s2)],
            "v2-compressed-full": ["--proto", "2", "--compressed-data", str(s1)],
            "v2-compressed-incremental": ["--proto", "2", "--compressed-data", "-p", str(s1), str(s2)],
        }
        for name, args in streams.items():
            raw = tmp / f"{name}.stream"
            send(args, raw)
            (HERE / f"{name}.stream.zst").write_bytes(
                zstandard.ZstdCompressor(level=19).compress(raw.read_bytes()))
            print(name, raw.stat().st_size)


if __name__ == "__main__":
    main()
