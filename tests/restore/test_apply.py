"""The user-space applier without btrfs: real recorded streams (v1, and v2 with zstd-compressed
extents, of the same two snapshots) restore to equal trees in any chunking; hand-made hostile
streams are refused without touching anything outside; clones from the parent read the parent's
bytes; the LZO1X decoder on hand-made streams."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import zstandard

from btrsync.errors import DamageError
from btrsync.restore import RestoreError
from btrsync.restore.apply import Applier, StreamBytes, scan_parent_clones
from btrsync.restore.meta import Notes
from btrsync.restore.decompress import DecompressError, _btrfs_lzo, decompress, lzo1x_decompress
from btrsync.restore.paths import PathRefused, Tree, split
from btrsync.sendstream import parser
from tests.unit.sendstream import streams as S

DATA = Path(__file__).parent.parent / "unit" / "sendstream" / "data"
U_FULL, U_INC = uuid.UUID(int=1), uuid.UUID(int=2)


def load(name: str) -> bytes:
    with open(DATA / f"{name}.stream.zst", "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f.read()).read()


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


class Restore:
    """A work directory with tree/ in it, and an applier."""

    def __init__(self, base: Path) -> None:
        base.mkdir()
        (base / "tree").mkdir()
        self.base = base
        self.work_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        tree_fd = os.open(base / "tree", os.O_RDONLY | os.O_DIRECTORY)
        self.tree = Tree(tree_fd)
        os.close(tree_fd)
        self.notes = Notes()
        self.applier = Applier(self.tree, self.work_fd, self.notes)

    def link(self, data: bytes, size: int = 65536, clones: bool = False) -> None:
        first = parser.parse(data)[0]
        parent = str(first.attrs["clone_uuid"]) if first.cmd == "snapshot" else None
        found = scan_parent_clones(chunks(data, size), parent, "test") if clones and parent else None
        self.applier.apply_link(chunks(data, size), backup_id="b", snapshot_uuid=str(first.attrs["uuid"]),
                                parent_uuid=parent, parent_clones=found)

    def close(self) -> None:
        self.tree.close()
        os.close(self.work_fd)


def snapshot_of(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        content = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
        xattrs = {} if p.is_symlink() else {n: os.getxattr(p, n) for n in os.listxattr(p)}
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink,
                                         content, xattrs)
    return out


@pytest.mark.parametrize("size", [1 << 20, 65537, 4096, 7])
def test_recorded_streams_restore_alike_in_any_chunking(tmp_path: Path, size: int) -> None:
    """v1 and v2-compressed streams of the same snapshots give the same trees; the result does
    not depend on where chunks end (data carried over chunk boundaries)."""
    trees = []
    for kind in ("v1", "v2-compressed"):
        r = Restore(tmp_path / kind)
        r.link(load(f"{kind}-full"), size)
        r.link(load(f"{kind}-incremental"), size, clones=True)
        r.close()
        assert r.notes.as_list() == []
        trees.append(snapshot_of(tmp_path / kind / "tree"))
    assert trees[0] == trees[1]
    got = trees[0]
    assert got["docs/moved here"][1:3] == (1000, 1000)
    assert got["hard link"][4] == 2 and got["docs/readme.txt"][6] == {"user.new": b"value"}
    assert got["odd names/-dash"][0] & 0o7777 == 0o4755
    assert os.stat(tmp_path / "v1" / "tree" / "sparse").st_blocks * 512 < 100_000  # holes stayed holes


def test_window_serves_data_that_began_in_an_earlier_chunk() -> None:
    w = StreamBytes()
    w.add(b"0123456789")
    assert bytes(w.get(2, 3)) == b"234"
    w.consumed(6)  # a command ended at 6: 6789 is carried
    w.add(b"abcdef")
    assert bytes(w.get(7, 5)) == b"789ab" and bytes(w.get(10, 2)) == b"ab"
    w.consumed(6)  # no command ended in this chunk: all of it is carried
    w.add(b"XYZ")
    assert bytes(w.get(6, 13)) == b"6789abcdefXYZ"
    with pytest.raises(DamageError):
        w.get(5, 2)


def test_split_refuses_what_could_leave_the_root() -> None:
    assert split("a/b c/d") == ["a", "b c", "d"] and split("", allow_root=True) == []
    for bad in ("", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\0b", "x" * 256):
        with pytest.raises(PathRefused):
            split(bad)


# --- hand-made streams ------------------------------------------------------------------------


def cmd(name: str, **attrs: object) -> bytes:
    enc = []
    for key, value in attrs.items():
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        elif isinstance(value, int):
            value = struct.pack("<Q", value)
        elif isinstance(value, uuid.UUID):
            value = value.bytes
        enc.append((key, value))
    return S.cmd_attrs(name, enc, version=1)


def full(*middle: bytes) -> bytes:
    return S.header(1) + cmd("subvol", path="s", uuid=U_FULL, ctransid=1) + b"".join(middle) + S.end()


def incremental(*middle: bytes) -> bytes:
    return (S.header(1) + cmd("snapshot", path="s2", uuid=U_INC, ctransid=2, clone_uuid=U_FULL, clone_ctransid=1)
            + b"".join(middle) + S.end())


def mkfile(path: str, data: bytes = b"") -> bytes:
    out = cmd("mkfile", path=path, ino=300)
    if data:
        out += cmd("write", path=path, file_offset=0, data=data)
    return out


def hostile(outside: str) -> dict[str, list[bytes]]:
    return {
        "dotdot": [mkfile("../escaped")],
        "dotdot-deep": [mkfile("a/../../escaped")],
        "absolute": [mkfile("/abs")],
        "symlink-dir": [cmd("symlink", path="evil", ino=300, path_link=outside), mkfile("evil/planted")],
        "symlink-write": [cmd("symlink", path="evil", ino=300, path_link=f"{outside}/file"),
                          cmd("write", path="evil", file_offset=0, data=b"owned")],
        "symlink-truncate": [cmd("symlink", path="evil", ino=300, path_link=f"{outside}/file"),
                             cmd("truncate", path="evil", size=0)],
        "renamed-symlink": [cmd("symlink", path="evil", ino=300, path_link=outside),
                            cmd("rename", path="evil", path_to="d"), cmd("mkdir", path="d/sub", ino=301)],
        "xattr": [cmd("symlink", path="evil", ino=300, path_link=outside),
                  cmd("set_xattr", path="evil/file", xattr_name="user.x", xattr_data=b"1")],
        "chmod": [cmd("symlink", path="evil", ino=300, path_link=outside), cmd("chmod", path="evil/file", mode=0o777)],
        "chown": [cmd("symlink", path="evil", ino=300, path_link=outside),
                  cmd("chown", path="evil/file", uid=1, gid=1)],
        "utimes": [cmd("symlink", path="evil", ino=300, path_link=outside),
                   cmd("utimes", path="evil/file", atime=b"\0" * 12, mtime=b"\0" * 12, ctime=b"\0" * 12)],
        "hardlink": [cmd("link", path="stolen", path_link="../outside/file")],
        "clone-source": [cmd("symlink", path="evil", ino=300, path_link=f"{outside}/file"), mkfile("copy"),
                         cmd("clone", path="copy", file_offset=0, clone_len=8, clone_uuid=U_FULL,
                             clone_ctransid=1, clone_path="evil", clone_offset=0)],
    }


@pytest.mark.parametrize("case", sorted(hostile("/x")))
def test_hostile_commands_are_refused(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_bytes(b"sentinel")
    os.utime(outside / "file", ns=(7, 7))
    os.utime(outside, ns=(7, 7))
    data = full(*hostile(str(outside))[case])
    data = parser.parse(data) and data  # well formed: refused by the applier, not the parser
    r = Restore(tmp_path / "r")
    with pytest.raises(DamageError, match="refused"):
        r.link(data, 33)
    r.close()
    assert sorted(os.listdir(outside)) == ["file"]
    st = os.stat(outside / "file")
    assert (outside / "file").read_bytes() == b"sentinel" and st.st_mtime_ns == 7 and st.st_mode & 0o777 != 0o777
    assert os.stat(outside).st_mtime_ns == 7
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "r" / "escaped").exists()


def test_a_stream_of_another_snapshot_is_refused(tmp_path: Path) -> None:
    r = Restore(tmp_path / "r")
    with pytest.raises(DamageError, match="manifest says"):
        r.applier.apply_link([full()], backup_id="b", snapshot_uuid=str(U_INC), parent_uuid=None)
    r.link(full())
    with pytest.raises(DamageError, match="parent"):  # an incremental on a parent the tree does not hold
        r.applier.apply_link([incremental()], backup_id="b", snapshot_uuid=str(U_INC), parent_uuid=str(U_INC))


def test_parent_clones_survive_overwrite_rename_and_unlink(tmp_path: Path) -> None:
    """btrfs send names the parent's path for a clone from the parent; the applier pins it
    before the link and copies its ranges aside before the stream changes the file."""
    a, b = os.urandom(8192), os.urandom(4096)
    r = Restore(tmp_path / "r")
    r.link(full(mkfile("a", a), mkfile("b", b), cmd("mkdir", path="d", ino=302)))

    def clone(dst: str, src: str, n: int) -> bytes:
        return cmd("clone", path=dst, file_offset=0, clone_len=n, clone_uuid=U_FULL, clone_ctransid=1,
                   clone_path=src, clone_offset=0)

    r.link(incremental(
        cmd("write", path="a", file_offset=0, data=b"X" * 4096),  # the source changes in place ...
        cmd("rename", path="a", path_to="d/a2"),  # ... moves ...
        cmd("unlink", path="b"),  # (another source goes away)
        mkfile("new"), clone("new", "a", 8192),  # ... and the clone must still read the old bytes
        mkfile("new-b"), clone("new-b", "b", 4096),
    ), clones=True)
    tree = tmp_path / "r" / "tree"
    assert (tree / "new").read_bytes() == a
    assert (tree / "new-b").read_bytes() == b
    assert (tree / "d" / "a2").read_bytes() == b"X" * 4096 + a[4096:]
    assert not (tree / "b").exists()
    assert sorted(os.listdir(tmp_path / "r")) == ["tree"]  # pins removed
    r.close()


def test_an_unscanned_parent_clone_is_an_error(tmp_path: Path) -> None:
    r = Restore(tmp_path / "r")
    r.link(full(mkfile("a", b"x" * 4096)))
    with pytest.raises(RestoreError, match="scan"):
        r.link(incremental(mkfile("n"), cmd("clone", path="n", file_offset=0, clone_len=4096,
                                            clone_uuid=U_FULL, clone_ctransid=1, clone_path="a",
                                            clone_offset=0)), clones=False)


def test_owners_without_privileges_are_noted(tmp_path: Path) -> None:
    r = Restore(tmp_path / "r")
    r.applier.privileged = False
    r.link(full(mkfile("f", b"1"), cmd("chown", path="f", uid=4242, gid=4242)))
    if os.geteuid() == 0:
        assert os.stat(tmp_path / "r" / "tree" / "f").st_uid == 4242
    else:
        assert r.notes.counts == {"owner not set (needs root)": 1}


# --- LZO ----------------------------------------------------------------------------------------


def test_lzo1x_literals_and_matches() -> None:
    # 17 + 5 literals "abcde"; M2 match (t=0x70: length 4, distance 1 + 4 + 0) copies "abcd"; end
    stream = bytes([17 + 5]) + b"abcde" + bytes([(3 << 5) | (4 << 2), 0]) + bytes([0x11, 0, 0])
    assert lzo1x_decompress(stream, 4096) == b"abcdeabcd"
    stream = bytes([17 + 5]) + b"abcde" + bytes([(3 << 5) | (3 << 2), 0]) + bytes([0x11, 0, 0])
    assert lzo1x_decompress(stream, 4096) == b"abcdebcde"
    # an overlapping match repeats its pattern: distance 1, length 4 after "a"
    stream = bytes([17 + 1]) + b"a" + bytes([(3 << 5) | (0 << 2), 0]) + bytes([0x11, 0, 0])
    assert lzo1x_decompress(stream, 4096) == b"aaaaa"
    for bad in (stream[:-1], stream + b"\0", bytes([17 + 1]) + b"a" + bytes([(3 << 5) | (7 << 2), 9]) + stream[-3:]):
        with pytest.raises(DecompressError):
            lzo1x_decompress(bad, 4096)
    with pytest.raises(DecompressError):
        lzo1x_decompress(stream, 3)  # more output than a sector


def test_btrfs_lzo_framing_and_zero_fill() -> None:
    seg = bytes([17 + 3]) + b"xyz" + bytes([0x11, 0, 0])
    body = struct.pack("<I", len(seg)) + seg
    data = struct.pack("<I", 4 + len(body)) + body
    assert _btrfs_lzo(data, 10, 4096) == b"xyz"
    assert decompress(3, data, 10) == b"xyz" + bytes(7)
    with pytest.raises(DecompressError):
        decompress(3, struct.pack("<I", 999) + body, 10)
    with pytest.raises(DecompressError):
        decompress(9, data, 10)


UNPRIVILEGED = """
import json, os, sys
from btrsync.restore.apply import Applier
from btrsync.restore.meta import Notes
from btrsync.restore.paths import Tree
base = sys.argv[1]
data = open(os.path.join(base, "stream"), "rb").read()
work = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
os.mkdir(os.path.join(base, "tree"), 0o700)
tfd = os.open(os.path.join(base, "tree"), os.O_RDONLY | os.O_DIRECTORY)
notes = Notes()
with Tree(tfd) as tree:
    a = Applier(tree, work, notes)
    a.apply_link([data[i:i + 100] for i in range(0, len(data), 100)], backup_id="b",
                 snapshot_uuid=sys.argv[2], parent_uuid=None)
    a.finish()
print(json.dumps(notes.counts))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to switch to nobody")
def test_an_unprivileged_restore_handles_read_only_directories() -> None:
    """As nobody: a directory made read-only (0555, like Go's module cache) before its entries
    arrive still receives them; its mode is set at the end; owners are noted, not fatal."""
    top = Path(tempfile.mkdtemp(prefix="btrsync-unpriv-"))  # pytest's own directories are 0700
    try:
        _unprivileged(top)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=False)


def _unprivileged(top: Path) -> None:
    os.chmod(top, 0o755)
    base = top / "r"
    base.mkdir()
    (base / "stream").write_bytes(full(
        cmd("mkdir", path="ro", ino=301), cmd("chmod", path="ro", mode=0o555),
        mkfile("o302-1-0", b"inside"), cmd("rename", path="o302-1-0", path_to="ro/f"),
        cmd("chmod", path="ro/f", mode=0o444), cmd("chown", path="ro/f", uid=0, gid=0),
        cmd("chmod", path="", mode=0o555)))
    os.chown(base, 65534, 65534)
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", UNPRIVILEGED, str(base), str(U_FULL)],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"owner not set (needs root)": 1}
    tree = base / "tree"
    assert (tree / "ro" / "f").read_bytes() == b"inside"
    assert stat.S_IMODE(os.stat(tree / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(tree).st_mode) == 0o555
    assert os.stat(tree / "ro" / "f").st_uid == 65534
