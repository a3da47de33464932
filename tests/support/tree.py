"""Deterministic file trees that exercise everything btrfs send/receive must carry, and a comparer.

* :func:`populate` fills a directory from a seed: regular, empty, big and sparse files, reflinks
  (whole-file and partial clones), hardlinks across directories, symlinks (relative, absolute,
  dangling), a fifo, binary ``user.*`` xattrs, special modes (setuid, setgid, sticky), foreign
  owners, odd names (space, newline, unicode, leading dash, 255 bytes), deep nesting, an empty dir,
  and explicit nanosecond mtimes on everything.
* :func:`mutate` turns generation ``g`` into ``g + 1`` (renames, deletions, overwrites, appends,
  truncations, link and reflink changes, xattr/mode/owner changes, retargeted symlinks, new files),
  deterministically from ``(seed, generation)``.
* :func:`describe` reduces a tree to a plain dict of what send/receive preserves; :func:`compare`
  lists the differences between two descriptions.

What btrfs send/receive preserves, as established on real btrfs (kernel 6.18, btrfs-progs 6.2) by
``tests/unit/test_tree_support.py`` and by sweeping dozens of seeds over eight generations:

* Preserved, full and incremental, so :func:`describe` reports it: file type, full ``st_mode``
  (setuid/setgid/sticky included, but see below), uid/gid, size, content, nanosecond mtimes of
  files, symlinks, fifos and directories, symlink targets (dangling and absolute too), every xattr
  with binary values, hardlink groups, sparse layout (SEEK_DATA/SEEK_HOLE ranges, even unaligned).
* Never described: inode numbers, ctime, atime, ``st_nlink``, ``st_dev`` (not preserved by design;
  hardlinks are described as groups of paths instead); a directory's ``st_size`` (btrfs
  bookkeeping fully determined by its entries); the top-level ``.snapshots`` directory.
* Dropped: the mtime of the top directory (``"."``). Incremental receive creates and renames
  temporary ``o<ino>-<gen>-<n>`` entries there, and the stream only re-sends the top directory's
  utimes when the directory itself changed, so its mtime often ends up as the time of receive.
* Not produced by :func:`mutate` (a btrfs limitation, not a btrsync one): changing the owner of a
  setuid/setgid file while keeping its mode. The incremental stream then carries only ``chown``,
  which clears the set-id bits on the receiving side, and no ``chmod`` to restore them
  (``test_btrfs_loses_setuid_on_incremental_chown`` asserts it, and fails once btrfs fixes it). Full sends are fine
  (``chown`` is always followed by ``chmod``).
* Best effort only: extent sharing (``reflinks``). btrfs send emits a clone only when it finds a
  usable source and otherwise writes the data: it never clones exactly one block taken from file
  offset 0 (:func:`describe` discounts such blocks), it may pick a source referring to another
  part of a compressed extent and then write, and once one such write happened in an earlier
  incremental stream the receiver holds two physical copies where the source has one, so later
  pairwise sharing can differ. Even full sends of mutated trees (partial references into shared
  extents) come out with slightly different sharing. Sends of freshly :func:`populate`-d trees
  reproduce the relation exactly; after :func:`mutate`, compare with ``ignore=SEND_BEST_EFFORT``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import shutil
import stat
import struct
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, NamedTuple

# ioctl numbers (linux/fs.h, linux/fiemap.h)
FICLONE = 0x40049409
FICLONERANGE = 0x4020940D
FS_IOC_FIEMAP = 0xC020660B

FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_ENCODED = 0x8
FIEMAP_EXTENT_DATA_INLINE = 0x200

_FIEMAP_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2x reserved64, flags, 3x rsv
_FIEMAP_BATCH = 256

KiB = 1024
MiB = 1024 * KiB
BLOCK = 4 * KiB

EXCLUDED_TOP_LEVEL = ".snapshots"

# Attributes btrfs send reproduces only on a best-effort basis (see the module docstring).
SEND_BEST_EFFORT = frozenset({"reflinks"})

# Owners other than root that a restore must reproduce exactly.
OWNERS = [(1000, 1000), (12345, 54321), (0, 0), (65534, 65534)]
SETID_BITS = stat.S_ISUID | stat.S_ISGID
FILE_MODES = [0o600, 0o644, 0o640, 0o755, 0o700, 0o4755, 0o2755, 0o444]

# A fixed epoch window for mtimes: 2020-09-13 .. roughly one year later, with nanoseconds.
_MTIME_BASE_NS = 1_600_000_000 * 10**9
_MTIME_SPAN_NS = 365 * 86_400 * 10**9

WORDS = (
    "btrfs send receive snapshot subvolume extent reflink clone hole sparse inode xattr "
    "chunk manifest restore verify retention parent incremental generation"
).split()


# ==================================================================================================
# Small filesystem primitives


def _mkdir(path: Path, mode: int = 0o755) -> Path:
    """Create a directory with an exact mode (independent of the umask)."""
    path.mkdir()
    os.chmod(path, mode)
    return path


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Create (or replace the content of) a regular file with an exact mode."""
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` without truncating, creating the file if needed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _clone(src: Path, dst: Path) -> None:
    """Make ``dst`` a reflink copy of all of ``src`` (FICLONE)."""
    with open(src, "rb") as s, open(dst, "wb") as d:
        fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    shutil.copymode(src, dst)


def _clone_range(src: Path, src_offset: int, length: int, dst: Path, dst_offset: int) -> None:
    """Share ``length`` bytes of ``src`` at ``dst_offset`` in ``dst`` (FICLONERANGE, block-aligned)."""
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            arg = struct.pack("=qQQQ", s.fileno(), src_offset, length, dst_offset)
            fcntl.ioctl(fd, FICLONERANGE, arg)
        finally:
            os.close(fd)


def _set_owner_and_mode(path: Path, uid: int, gid: int, mode: int) -> None:
    """chown, then chmod: chown clears setuid/setgid, so the order matters."""
    os.chown(path, uid, gid, follow_symlinks=False)
    if not path.is_symlink():
        os.chmod(path, mode)


def _text(rng: random.Random, words: int) -> bytes:
    return (" ".join(rng.choice(WORDS) for _ in range(words)) + "\n").encode()


def _mixed_content(rng: random.Random, size: int, chunk: int = 64 * KiB) -> bytes:
    """``size`` bytes alternating (randomly) between compressible text and random noise."""
    parts = []
    for _ in range(0, size, chunk):
        if rng.random() < 0.5:
            phrase = _text(rng, 12)
            parts.append((phrase * (chunk // len(phrase) + 1))[:chunk])
        else:
            parts.append(rng.randbytes(chunk))
    return b"".join(parts)[:size]


def _random_mtime_ns(rng: random.Random) -> int:
    return _MTIME_BASE_NS + rng.randrange(_MTIME_SPAN_NS)


def _set_mtimes(paths: list[Path], rng: random.Random) -> None:
    """Give each path a deterministic atime/mtime, deepest first so parents keep theirs."""
    for path in sorted(set(paths), key=lambda p: (-len(p.parts), str(p))):
        if os.path.lexists(path):
            ns = _random_mtime_ns(rng)
            os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _walk(root: Path) -> Iterator[Path]:
    """Every path under ``root`` (not ``root`` itself), parents before children, sorted, no
    symlinks followed, top-level ``.snapshots`` skipped."""
    stack = [root]
    while stack:
        current = stack.pop()
        with os.scandir(current) as it:
            entries = sorted(it, key=lambda e: e.name, reverse=True)
        for entry in entries:
            if current == root and entry.name == EXCLUDED_TOP_LEVEL:
                continue
            path = Path(entry.path)
            yield path
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)


def _rel(root: Path, path: Path) -> str:
    return "." if path == root else path.relative_to(root).as_posix()


# ==================================================================================================
# populate


def populate(root: Path, seed: int) -> None:
    """Fill ``root`` (an existing, preferably empty, directory on btrfs) deterministically from ``seed``.

    Needs root privileges (chown, setuid bits) and a filesystem with reflink support.
    """
    rng = random.Random(seed)
    _populate_regular(root, rng)
    _populate_sparse(root, rng)
    _populate_reflinks(root, rng)
    _populate_hardlinks(root, rng)
    _populate_symlinks(root)
    _populate_special(root)
    _populate_modes_and_owners(root, rng)
    _populate_xattrs(root, rng)
    _populate_odd_names(root, rng)
    _populate_deep(root, rng)
    _mkdir(root / "empty-dir")
    _populate_random_files(root, rng)
    _set_mtimes([root, *_walk(root)], rng)


def _populate_regular(root: Path, rng: random.Random) -> None:
    """Small text files, an empty file, and an 8 MiB file of mixed (in)compressible content."""
    docs = _mkdir(root / "docs")
    _write(docs / "readme.txt", _text(rng, 40))
    _write(docs / "notes.md", _text(rng, 400))
    _write(docs / "empty.txt", b"")
    data = _mkdir(root / "data")
    _write(data / "big.bin", _mixed_content(rng, 8 * MiB))


def _populate_sparse(root: Path, rng: random.Random) -> None:
    """Files with holes at the start, in the middle, at the end, and an unaligned layout."""
    sparse = _mkdir(root / "sparse")
    start = sparse / "hole-start.bin"
    _write(start, b"")
    os.truncate(start, 1 * MiB)
    _pwrite(start, 1 * MiB - 64 * KiB, rng.randbytes(64 * KiB))

    middle = sparse / "hole-middle.bin"
    _write(middle, rng.randbytes(128 * KiB))
    _pwrite(middle, 2 * MiB - 128 * KiB, rng.randbytes(128 * KiB))

    end = sparse / "hole-end.bin"
    _write(end, rng.randbytes(64 * KiB))
    os.truncate(end, 3 * MiB)

    unaligned = sparse / "unaligned.bin"
    _write(unaligned, b"")
    _pwrite(unaligned, 5000, rng.randbytes(100))
    _pwrite(unaligned, 300_001, rng.randbytes(3000))
    os.truncate(unaligned, 500_003)


def _populate_reflinks(root: Path, rng: random.Random) -> None:
    """A whole-file clone of the big file and a file sharing only part of it."""
    data = root / "data"
    _clone(data / "big.bin", data / "big.clone")
    partial = data / "partial.clone"
    _write(partial, rng.randbytes(1 * MiB))
    _clone_range(data / "big.bin", 2 * MiB, 1 * MiB, partial, 1 * MiB)
    _pwrite(partial, 2 * MiB, _text(rng, 100))


def _populate_hardlinks(root: Path, rng: random.Random) -> None:
    """One inode with three names in two directories, and a hardlinked pair inside one directory."""
    links = _mkdir(root / "links")
    _write(links / "hard-a", _text(rng, 50))
    os.link(links / "hard-a", links / "hard-b")
    os.link(links / "hard-a", root / "docs" / "hard-c")
    _write(root / "data" / "pair-1", rng.randbytes(20 * KiB))
    os.link(root / "data" / "pair-1", root / "data" / "pair-2")


def _populate_symlinks(root: Path) -> None:
    """Relative, absolute, dangling and directory symlinks."""
    links = root / "links"
    os.symlink("../docs/readme.txt", links / "relative")
    os.symlink("/usr/share/common-licenses/Apache-2.0", links / "absolute")
    os.symlink("does/not/exist", links / "dangling")
    os.symlink("../data", links / "to-dir")


def _populate_special(root: Path) -> None:
    """A fifo (no device nodes: they need no more from send/receive than a fifo does)."""
    special = _mkdir(root / "special")
    os.mkfifo(special / "fifo", 0o640)
    os.chmod(special / "fifo", 0o640)


def _populate_modes_and_owners(root: Path, rng: random.Random) -> None:
    """Files and dirs with special modes and non-root owners (chown before chmod)."""
    modes = _mkdir(root / "modes")
    for name, mode in [("private", 0o600), ("exec", 0o755), ("setuid", 0o4755),
                       ("setgid", 0o2755), ("readonly", 0o444)]:
        _write(modes / name, _text(rng, 10), mode)
    _mkdir(modes / "setgid-dir", 0o2775)
    _mkdir(modes / "sticky-dir", 0o1777)
    _write(modes / "sticky-dir" / "inside", _text(rng, 5))

    owners = _mkdir(root / "owners")
    _set_owner_and_mode(_write(owners / "user-1000", _text(rng, 5)), 1000, 1000, 0o640)
    _set_owner_and_mode(_write(owners / "odd-ids", _text(rng, 5)), 12345, 54321, 0o4750)
    _set_owner_and_mode(_mkdir(owners / "dir-1000"), 1000, 1000, 0o2750)
    os.symlink("user-1000", owners / "link-odd-ids")
    os.chown(owners / "link-odd-ids", 12345, 54321, follow_symlinks=False)
    os.chown(modes / "setgid-dir", 0, 1000)
    os.chmod(modes / "setgid-dir", 0o2775)


def _populate_xattrs(root: Path, rng: random.Random) -> None:
    """Binary ``user.*`` xattrs (including an empty value) on files and a directory."""
    os.setxattr(root / "docs" / "readme.txt", "user.comment", b"hello \x00\xff binary")
    os.setxattr(root / "docs" / "readme.txt", "user.empty", b"")
    os.setxattr(root / "docs", "user.dir-attr", rng.randbytes(32))
    os.setxattr(root / "data" / "big.bin", "user.checksum", rng.randbytes(64))
    os.setxattr(root / "links" / "hard-a", "user.shared-by-links", b"one inode")
    os.setxattr(root / "modes" / "setuid", "user.big", rng.randbytes(2000))


def _populate_odd_names(root: Path, rng: random.Random) -> None:
    """Names with a space, a newline, unicode, a leading dash, and the maximal 255 bytes."""
    odd = _mkdir(root / "odd names")
    for name in ["with space", "new\nline", "ünïcødé-名前-😀", "-leading-dash", "x" * 255,
                 "tab\there", " leading-space", "trailing-dot."]:
        _write(odd / name, _text(rng, 3))
    long_unicode = "é" * 127 + "z"  # 127 * 2 + 1 = 255 bytes in UTF-8
    assert len(long_unicode.encode()) == 255
    _mkdir(odd / long_unicode)
    _write(odd / long_unicode / "inside", b"")


def _populate_deep(root: Path, rng: random.Random) -> None:
    """A chain of 24 nested directories with a file at the bottom."""
    path = root / "deep"
    _mkdir(path)
    for depth in range(24):
        path = _mkdir(path / f"level-{depth:02d}")
    _write(path / "leaf.txt", _text(rng, 8))


def _populate_random_files(root: Path, rng: random.Random) -> None:
    """A dozen-odd files of random sizes (some inline, some multi-extent) in random places."""
    dirs = sorted(p for p in _walk(root) if stat.S_ISDIR(p.lstat().st_mode))
    for i in range(rng.randint(10, 16)):
        size = rng.choice([0, 1, 100, 2047, 4096, 5000, 65536, 300_000])
        _write(rng.choice(dirs) / f"random-{i:02d}.dat", rng.randbytes(size),
               rng.choice([0o644, 0o600, 0o755]))


# ==================================================================================================
# mutate


class _Mutation:
    """One generation's worth of changes; remembers what it touched to give those fresh mtimes."""

    def __init__(self, root: Path, seed: int, generation: int) -> None:
        self.root = root
        self.generation = generation
        self.rng = random.Random(f"{seed}:{generation}")
        self.touched: list[Path] = []
        self.counter = 0

    # -- listing (always sorted, so choices are deterministic) --------------------------------

    def entries(self) -> list[Path]:
        return sorted(_walk(self.root))

    def files(self, min_size: int = 0, max_size: int | None = None) -> list[Path]:
        out = []
        for p in self.entries():
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_size >= min_size and (
                    max_size is None or st.st_size <= max_size):
                out.append(p)
        return out

    def dirs(self) -> list[Path]:
        return [p for p in self.entries() if stat.S_ISDIR(p.lstat().st_mode)]

    def symlinks(self) -> list[Path]:
        return [p for p in self.entries() if p.is_symlink()]

    def pick(self, candidates: list[Path]) -> Path | None:
        return self.rng.choice(candidates) if candidates else None

    def new_name(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-g{self.generation}-{self.counter}"

    def touch(self, *paths: Path) -> None:
        """Record paths whose mtime (or whose parent's mtime) changed."""
        for p in paths:
            self.touched.append(p)
            if p != self.root:
                self.touched.append(p.parent)

    # -- the changes -------------------------------------------------------------------------

    def overwrite_middle_of_biggest(self) -> None:
        files = self.files(min_size=1 * MiB)
        if not files:
            return
        big = max(files, key=lambda p: (p.stat().st_size, str(p)))
        size = big.stat().st_size
        length = self.rng.choice([4 * KiB, 64 * KiB, 200 * KiB + 123])
        offset = self.rng.randrange(size // 4, size // 2)
        _pwrite(big, offset, self.rng.randbytes(length))
        self.touch(big)

    def append(self) -> None:
        target = self.pick(self.files(max_size=1 * MiB))
        if target:
            with open(target, "ab") as f:
                f.write(_text(self.rng, self.rng.randint(1, 3000)))
            self.touch(target)

    def truncate(self) -> None:
        target = self.pick(self.files(min_size=1))
        if target:
            os.truncate(target, self.rng.randrange(target.stat().st_size))
            self.touch(target)

    def extend_with_hole(self) -> None:
        target = self.pick(self.files(max_size=1 * MiB))
        if target:
            size = target.stat().st_size
            _pwrite(target, size + 256 * KiB, self.rng.randbytes(8 * KiB))
            self.touch(target)

    def rename_file(self) -> None:
        source = self.pick(self.files() + self.symlinks())
        dest_dir = self.pick(self.dirs())
        if source and dest_dir:
            dest = dest_dir / self.new_name("moved")
            os.rename(source, dest)
            self.touch(source, dest)

    def rename_dir(self) -> None:
        source = self.pick(self.dirs())
        if not source:
            return
        targets = [d for d in self.dirs() if d != source and source not in d.parents]
        dest_parent = self.pick(targets + [source.parent])
        dest = dest_parent / self.new_name("dir")
        os.rename(source, dest)
        self.touch(source, dest)

    def delete_file(self) -> None:
        target = self.pick(self.files(max_size=4 * MiB) + self.symlinks())
        if target:
            target.unlink()
            self.touch(target)

    def delete_small_dir(self) -> None:
        small = [d for d in self.dirs() if sum(1 for _ in _walk(d)) <= 3]
        target = self.pick(small)
        if target:
            shutil.rmtree(target)
            self.touch(target)

    def add_hardlink(self) -> None:
        source = self.pick(self.files())
        dest_dir = self.pick(self.dirs())
        if source and dest_dir:
            dest = dest_dir / self.new_name("hardlink")
            os.link(source, dest)
            self.touch(dest)

    def remove_one_hardlink_name(self) -> None:
        target = self.pick([p for p in self.files() if p.lstat().st_nlink > 1])
        if target:
            target.unlink()
            self.touch(target)

    def add_reflinks(self) -> None:
        source = self.pick(self.files(min_size=64 * KiB))
        dest_dir = self.pick(self.dirs())
        if source and dest_dir:
            dest = dest_dir / self.new_name("reflink")
            _clone(source, dest)
            self.touch(dest)
            size = source.stat().st_size
            if size >= 2 * BLOCK:
                partial = dest_dir / self.new_name("partial-reflink")
                # Own data first, more than one block: btrfs send never clones a single block
                # from file offset 0 (see the module docstring), so a one-block head shared by
                # a later reflink of this file would come out as a plain write.
                _write(partial, self.rng.randbytes(3 * BLOCK))
                blocks = size // BLOCK
                start = self.rng.randrange(blocks - 1) * BLOCK
                length = min(self.rng.randint(1, 64) * BLOCK, (blocks * BLOCK) - start)
                _clone_range(source, start, length, partial, 3 * BLOCK)
                self.touch(partial)

    def change_xattrs(self) -> None:
        with_xattrs = [p for p in self.files() + self.dirs()
                       if any(n.startswith("user.") for n in os.listxattr(p))]
        target = self.pick(with_xattrs)
        if target:
            names = sorted(n for n in os.listxattr(target) if n.startswith("user."))
            os.setxattr(target, self.rng.choice(names), self.rng.randbytes(self.rng.randint(0, 300)))
            victim = self.pick([p for p in with_xattrs if p != target])
            if victim:
                os.removexattr(victim, sorted(n for n in os.listxattr(victim)
                                              if n.startswith("user."))[0])
        fresh = self.pick(self.files() + self.dirs())
        if fresh:
            os.setxattr(fresh, f"user.{self.new_name('attr')}", self.rng.randbytes(17))

    def change_modes_and_owners(self) -> None:
        for _ in range(3):
            target = self.pick(self.files())
            if target:
                uid, gid = self.rng.choice(OWNERS)
                mode = self.rng.choice(FILE_MODES)
                st = target.lstat()
                if ((uid, gid) != (st.st_uid, st.st_gid) and mode == stat.S_IMODE(st.st_mode)
                        and mode & SETID_BITS):
                    # btrfs send would carry only the chown, which clears set-id bits on the
                    # receiving side (see the module docstring): change the mode along with it.
                    mode &= ~SETID_BITS
                _set_owner_and_mode(target, uid, gid, mode)
        target = self.pick(self.dirs())
        if target:
            uid, gid = self.rng.choice(OWNERS)
            _set_owner_and_mode(target, uid, gid, self.rng.choice([0o755, 0o2775, 0o1777, 0o700]))

    def retarget_symlink(self) -> None:
        target = self.pick(self.symlinks())
        if target:
            target.unlink()
            os.symlink(self.rng.choice(["../docs", "/etc/hostname", "nowhere",
                                                "/".join(["long"] * 80)]), target)
            self.touch(target)

    def add_files(self) -> None:
        dirs = self.dirs()
        for _ in range(self.rng.randint(2, 5)):
            path = self.rng.choice(dirs) / self.new_name("new")
            size = self.rng.choice([0, 10, 3000, 70_000, 1 * MiB + 17])
            _write(path, _mixed_content(self.rng, size), self.rng.choice([0o644, 0o600, 0o755]))
            self.touch(path)
        fifo = self.rng.choice(dirs) / self.new_name("fifo")
        os.mkfifo(fifo, 0o600)
        os.chmod(fifo, 0o600)
        self.touch(fifo)
        new_dir = _mkdir(self.rng.choice(dirs) / self.new_name("newdir"), 0o750)
        _write(new_dir / "content", _text(self.rng, 10))
        self.touch(new_dir, new_dir / "content")

    def run(self) -> None:
        steps = [
            self.overwrite_middle_of_biggest, self.append, self.truncate, self.extend_with_hole,
            self.rename_file, self.rename_dir, self.add_hardlink, self.remove_one_hardlink_name,
            self.add_reflinks, self.change_xattrs, self.change_modes_and_owners,
            self.retarget_symlink, self.add_files, self.delete_file, self.delete_small_dir,
            self.rename_file, self.append,
        ]
        for step in steps:
            step()
            # Right away: a later rename could move a touched path out of reach.
            _set_mtimes(self.touched, self.rng)
            self.touched = []


def mutate(root: Path, seed: int, generation: int) -> None:
    """Change a tree made by :func:`populate` (and earlier mutations) into its next generation.

    The changes depend only on ``(seed, generation)`` and the tree's current state, so the same
    sequence of calls always produces the same tree (mtimes included).
    """
    _Mutation(root, seed, generation).run()


# ==================================================================================================
# describe


def _file_type(mode: int) -> str:
    for test, name in [(stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "chardev"), (stat.S_ISBLK, "blockdev")]:
        if test(mode):
            return name
    return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def _xattrs(path: Path) -> dict[str, str]:
    """All xattrs (name -> hex value), not following symlinks."""
    return {
        name: os.getxattr(path, name, follow_symlinks=False).hex()
        for name in sorted(os.listxattr(path, follow_symlinks=False))
    }


def data_ranges(path: Path) -> list[list[int]]:
    """The file's data regions as ``[start, end)`` pairs, found with SEEK_DATA / SEEK_HOLE."""
    ranges: list[list[int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append([start, end])
            offset = end
    finally:
        os.close(fd)
    return ranges


class Extent(NamedTuple):
    """One extent as FS_IOC_FIEMAP reports it (byte offsets and length, FIEMAP_EXTENT_* flags)."""

    logical: int
    physical: int
    length: int
    flags: int


def _unpack_extent(buf: bytearray, index: int) -> Extent:
    fields = _FIEMAP_EXTENT.unpack_from(buf, _FIEMAP_HEADER.size + index * _FIEMAP_EXTENT.size)
    logical, physical, length, _rsv1, _rsv2, flags = fields[:6]
    return Extent(logical, physical, length, flags)


def fiemap(path: Path) -> list[Extent]:
    """All extents of a file, via FS_IOC_FIEMAP (flushing delayed allocation first)."""
    extents: list[Extent] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        while True:
            buf = bytearray(_FIEMAP_HEADER.size + _FIEMAP_BATCH * _FIEMAP_EXTENT.size)
            _FIEMAP_HEADER.pack_into(buf, 0, start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0,
                                     _FIEMAP_BATCH, 0)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
            mapped = _FIEMAP_HEADER.unpack_from(buf, 0)[3]
            batch = [_unpack_extent(buf, i) for i in range(mapped)]
            extents += batch
            if not batch or batch[-1].flags & FIEMAP_EXTENT_LAST:
                break
            start = batch[-1].logical + batch[-1].length
    finally:
        os.close(fd)
    return extents


def physical_extents(path: Path) -> list[tuple[int, int, int]]:
    """``(file offset, physical start, physical end)`` of the file's on-disk extents.

    Inline extents (stored in metadata, never shared) and extents without a known location are
    skipped. A compressed extent is reported by btrfs with its disk start but its *logical* length,
    which would overlap the next extent on disk, so it is reduced to its start byte: two files
    share a compressed extent exactly when they report the same start.
    """
    ranges = []
    for ext in fiemap(path):
        if ext.flags & (FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC):
            continue
        if ext.flags & FIEMAP_EXTENT_ENCODED:
            ranges.append((ext.logical, ext.physical, ext.physical + 1))
        else:
            ranges.append((ext.logical, ext.physical, ext.physical + ext.length))
    return ranges


def _subtract(ranges: list[tuple[int, int]], cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` minus every interval in ``cuts`` (all half-open ``[start, end)``)."""
    for cut_start, cut_end in cuts:
        pieces = []
        for start, end in ranges:
            if end <= cut_start or start >= cut_end:
                pieces.append((start, end))
                continue
            if start < cut_start:
                pieces.append((start, cut_start))
            if end > cut_end:
                pieces.append((cut_end, end))
        ranges = pieces
    return ranges


def _reliably_shared_ranges(
        extents_by_inode: dict[Any, list[tuple[int, int, int]]]) -> dict[Any, list[tuple[int, int]]]:
    """Physical ranges per inode, less the first block of every file's data at offset 0.

    btrfs send never emits a clone of exactly one block taken from file offset 0 of its source
    (kernel ``clone_range``: such a clone may fail on a receiver that inlines the block); it
    writes the data instead, so sharing that rests on such a block does not survive a send.
    """
    first_blocks = [(start, start + BLOCK)
                    for extents in extents_by_inode.values()
                    for logical, start, _end in extents if logical == 0]
    return {inode: _subtract([(s, e) for _l, s, e in extents], first_blocks)
            for inode, extents in extents_by_inode.items()}


def _sharing_pairs(extents_by_inode: dict[Any, list[tuple[int, int]]]) -> set[tuple[Any, Any]]:
    """Pairs of inodes whose physical ranges overlap (a sweep over all ranges sorted by start)."""
    events = sorted((s, e, key) for key, ranges in extents_by_inode.items() for s, e in ranges)
    active: list[tuple[int, Any]] = []
    pairs: set[tuple[Any, Any]] = set()
    for start, end, key in events:
        active = [(e, k) for e, k in active if e > start]
        for _e, other in active:
            if other != key:
                pairs.add((key, other))
                pairs.add((other, key))
        active.append((end, key))
    return pairs


def describe(root: Path) -> dict[str, dict[str, Any]]:
    """A comparable description of the tree under ``root``, keyed by relative POSIX path.

    Every entry has ``type``, ``mode`` (full ``st_mode``), ``uid``, ``gid``, ``mtime_ns`` and
    ``xattrs`` (name -> hex). Non-directories add ``size``; regular files add ``sha256``,
    ``data_ranges`` (SEEK_DATA/SEEK_HOLE) and ``reflinks`` (other paths sharing a physical extent,
    hardlink siblings excluded); hardlinked files add ``hardlinks`` (the other names of the inode);
    symlinks add ``target``. The root itself is described as ``"."``. Symlinks are never followed.
    """
    entries: dict[str, dict[str, Any]] = {}
    names_by_inode: dict[tuple[int, int], list[str]] = {}
    extents_by_inode: dict[tuple[int, int], list[tuple[int, int, int]]] = {}

    for path in [root, *_walk(root)]:
        rel = _rel(root, path)
        st = path.lstat()
        kind = _file_type(st.st_mode)
        entry: dict[str, Any] = {
            "type": kind, "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns, "xattrs": _xattrs(path),
        }
        if path == root:
            # Incremental receive makes temporary "o<ino>-<gen>-<n>" entries in the subvolume's
            # top directory and the stream does not always end with its utimes: not preserved.
            del entry["mtime_ns"]
        if kind != "dir":
            entry["size"] = st.st_size
        if kind == "symlink":
            entry["target"] = os.readlink(path)
        if kind == "file":
            inode = (st.st_dev, st.st_ino)
            first_name = inode not in names_by_inode
            names_by_inode.setdefault(inode, []).append(rel)
            entry["sha256"] = _sha256(path)
            entry["data_ranges"] = data_ranges(path)
            if first_name:
                extents_by_inode[inode] = physical_extents(path)
        entries[rel] = entry

    shared = _sharing_pairs(_reliably_shared_ranges(extents_by_inode))
    _add_link_relations(entries, names_by_inode, shared)
    return dict(sorted(entries.items()))


def _add_link_relations(entries: dict[str, dict[str, Any]],
                        names_by_inode: dict[tuple[int, int], list[str]],
                        shared: set[tuple[Any, Any]]) -> None:
    """Fill in ``hardlinks`` and ``reflinks`` from inode-level facts, expressed as paths only."""
    partners: dict[Any, set[Any]] = {}
    for a, b in shared:
        partners.setdefault(a, set()).add(b)
    for inode, names in names_by_inode.items():
        sharing_names = sorted(n for other in partners.get(inode, ()) for n in names_by_inode[other])
        for name in names:
            if len(names) > 1:
                entries[name]["hardlinks"] = sorted(n for n in names if n != name)
            entries[name]["reflinks"] = sharing_names


# ==================================================================================================
# compare


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], *,
            ignore: Collection[str] = ()) -> list[str]:
    """Human-readable differences between two :func:`describe` results; empty when equal.

    Each line reads ``'<path>': <attribute>: <first> != <second>`` or ``only in first|second:
    '<path>'``. Attributes named in ``ignore`` (e.g. ``{"reflinks"}``) are not compared.
    """
    diffs = [f"only in first: {path!r}" for path in sorted(a.keys() - b.keys())]
    diffs += [f"only in second: {path!r}" for path in sorted(b.keys() - a.keys())]
    for path in sorted(a.keys() & b.keys()):
        ea, eb = a[path], b[path]
        for key in sorted((ea.keys() | eb.keys()) - set(ignore)):
            va, vb = ea.get(key, "<absent>"), eb.get(key, "<absent>")
            if va != vb:
                if key == "mode" and isinstance(va, int) and isinstance(vb, int):
                    va, vb = oct(va), oct(vb)
                diffs.append(f"{path!r}: {key}: {_short(va)} != {_short(vb)}")
    return diffs
