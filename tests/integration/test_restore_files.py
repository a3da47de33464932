"""btrsync restore (user space, any filesystem) against btrfs receive of the same chain.

Real streams from a loopback btrfs: trees of ``tests.support.tree`` (hard links, reflinks,
sparse files, xattrs, fifos, odd names) over three generations (renames, deletions, overwrites,
new reflinks). Each chain is received with ``btrsync receive`` (btrfs) and restored with
``btrsync restore`` onto ext4 (a loop image) and tmpfs; the trees must be equal path by path
(content, holes, modes, owners, xattrs, link targets, hard-link groups, mtimes). Extent sharing
cannot exist on ext4/tmpfs and is best effort for btrfs send anyway: not compared. Also protocol
2 with compressed extents (zstd, zlib, lzo), the --overwrite/--skip-existing rules, and hostile
streams, sealed with the key so every tag and hash is right, refused with exit 4 without a byte
written outside the restore directory.
"""

from __future__ import annotations

import errno
import json
import os
import random
import struct
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import pytest

from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import generate_key_file, load_key_file
from btrsync.sendstream import parser
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import CONFIG, World
from tests.support import tree
from tests.support.loopfs import create_subvolume
from tests.support.otherfs import loop_ext4, tmpfs, user_xattrs_supported
from tests.support.repack import repack
from tests.unit.sendstream import streams as S

pytestmark = pytest.mark.btrfs

SEED = 31


def _generations(world: World, count: int, seed: int = SEED) -> None:
    tree.populate(world.subvol, seed)
    world.snapshot()
    for g in range(1, count):
        tree.mutate(world.subvol, seed, g)
        world.snapshot()


def _restore(world: World, backup: str, to: Path, *extra: str):
    return world.cli("restore", backup, "--from", world.url, "--to", str(to), *extra)


def _ignored(to: Path) -> set[str]:
    """What the restore filesystem cannot hold: extent sharing (not on ext4/tmpfs, and best
    effort for btrfs send anyway), and user.* xattrs where the kernel does not allow them."""
    ignore = set(tree.SEND_BEST_EFFORT)
    reason = user_xattrs_supported(to)
    if reason is not None:
        ignore.add("xattrs")
        print(f"not comparing xattrs on {to}: {reason}")
    return ignore


def _extents_or_none(path: Path) -> list[tuple[int, int, int]]:
    """tmpfs has no FIEMAP: no extents (sharing is not compared on these filesystems anyway)."""
    try:
        return _physical_extents(path)
    except OSError as exc:
        if exc.errno != errno.EOPNOTSUPP:
            raise
        return []


_physical_extents = tree.physical_extents


def describe(root: Path) -> dict:
    with mock.patch.object(tree, "physical_extents", _extents_or_none):
        return tree.describe(root)


def _same(received: Path, restored: Path, ignore: set[str]) -> None:
    diffs = tree.compare(describe(received), describe(restored), ignore=ignore)
    assert diffs == [], "\n".join(diffs[:40])


@pytest.fixture
def other_filesystems(tmp_path: Path) -> Iterator[dict[str, Path]]:
    with ExitStack() as stack:
        yield {"ext4": stack.enter_context(loop_ext4(tmp_path / "otherfs")),
               "tmpfs": stack.enter_context(tmpfs(tmp_path / "otherfs"))}


@pytest.mark.slow
def test_restore_onto_ext4_and_tmpfs_equals_btrfs_receive(world: World, other_filesystems: dict[str, Path]) -> None:
    """Three generations (full + 2 incrementals); every link's restore equals its btrfs receive."""
    _generations(world, 3)
    assert world.push().code == 0
    assert world.receive("latest").code == 0
    names = [s.name for s in world.snapshots]
    for fs, mnt in other_filesystems.items():
        ignore = _ignored(mnt)
        run = _restore(world, "latest", mnt, "--json")
        assert run.code == 0, run.err
        doc = run.json()
        assert [lk["kind"] for lk in doc["links"]] == ["full", "incremental", "incremental"]
        assert doc["path"] == str(mnt / names[-1]) and doc["notes"] == [], doc["notes"]
        _same(world.restore / names[-1], mnt / names[-1], ignore)
        assert sorted(os.listdir(mnt)) == sorted([names[-1], *(["lost+found"] if fs == "ext4" else [])])
    # an older link: only its prefix of the chain is replayed
    mnt = other_filesystems["tmpfs"]
    run = _restore(world, names[1], mnt, "--json")
    assert run.code == 0, run.err
    assert len(run.json()["links"]) == 2
    _same(world.restore / names[1], mnt / names[1], _ignored(mnt))


def test_clones_from_the_parent_read_the_parents_bytes(world: World, tmp_path: Path) -> None:
    """An incremental reflinks an old file into a new one, then overwrites, renames and deletes
    the old one: btrfs send clones from the *parent's* path, which the restore must pin."""
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
    tree._clone(sv / "keep", sv / "keep-copy")
    (sv / "keep").unlink()
    world.snapshot()
    assert world.push().code == 0
    assert world.receive("latest").code == 0
    to = tmp_path / "to"
    to.mkdir()
    run = _restore(world, "latest", to, "--json")
    assert run.code == 0, run.err
    inc = run.json()["links"][1]
    assert inc["parent_clones"] >= 2 and inc["preserved_bytes"] > 0, inc
    name = world.snapshots[-1].name
    assert (to / name / "copy").read_bytes() == old
    _same(world.restore / name, to / name, set(tree.SEND_BEST_EFFORT))


@pytest.mark.parametrize("compression", ["zstd", "zlib", "lzo"])
@pytest.mark.slow
def test_compressed_extents_of_protocol_2(btrfs_factory, tmp_path: Path, capsys, compression: str) -> None:
    """A source mounted compress=ALG sends ENCODED_WRITE commands; they are decompressed."""
    src = btrfs_factory("1G", label="src", mount_options=[f"compress={compression}"])
    restore_fs = btrfs_factory("1G", label="restore")
    create_subvolume(src / "data")
    (src / ".snapshots").mkdir()
    (tmp_path / "target").mkdir()
    generate_key_file(tmp_path / "key")
    (tmp_path / "config.toml").write_text(CONFIG)
    world = World(src, restore_fs, tmp_path / "target", tmp_path / "key", tmp_path / "config.toml",
                  tmp_path / "state", capsys)
    world.init()
    _generations(world, 2, seed=3)
    assert world.push().code == 0
    [full, inc] = world.listing()
    assert world.receive("latest").code == 0
    with tmpfs(tmp_path / "otherfs") as mnt:
        run = _restore(world, "latest", mnt, "--json")
        assert run.code == 0, run.err
        name = world.snapshots[-1].name
        _same(world.restore / name, mnt / name, _ignored(mnt))
    encoded = _count_encoded(world, full["id"])
    assert encoded > 0, "the stream has no ENCODED_WRITE: protocol 2 with compressed data was not used"


def _count_encoded(world: World, backup_id: str) -> int:
    repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    raws: list[bytes] = []
    repack(repo, backup_id, lambda r: raws.extend(r) or r)  # reads (and rewrites, unchanged) the stream
    return sum(1 for ev in parser.parse(b"".join(raws)) if ev.cmd == "encoded_write")


# --- the destination already exists ------------------------------------------------------------


def test_existing_destination_refuse_overwrite_skip(world: World, tmp_path: Path) -> None:
    (world.subvol / "a").write_bytes(b"from the backup\n")
    (world.subvol / "d").mkdir()
    (world.subvol / "d" / "new").write_bytes(b"new\n")
    (world.subvol / "d" / "both").write_bytes(b"backup's version\n")
    world.snapshot()
    assert world.push().code == 0
    name = world.snapshots[0].name
    to = tmp_path / "to"
    (to / name / "d").mkdir(parents=True)
    (to / name / "a").write_bytes(b"mine\n")
    (to / name / "d" / "both").write_bytes(b"my version\n")
    (to / name / "only-mine").write_bytes(b"x")
    os.utime(to / name / "d", ns=(1, 1_000_000_000))

    run = _restore(world, "latest", to)
    assert run.code == 2 and "already exists" in run.err and "--overwrite" in run.err
    assert (to / name / "a").read_bytes() == b"mine\n"

    run = _restore(world, "latest", to, "--skip-existing", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["kept"] == 2 and doc["added"] == 1, doc  # a and d/both kept; d/new added
    assert (to / name / "a").read_bytes() == b"mine\n"
    assert (to / name / "d" / "both").read_bytes() == b"my version\n"
    assert (to / name / "d" / "new").read_bytes() == b"new\n"
    assert (to / name / "only-mine").exists()
    assert (to / name / "d").stat().st_mtime_ns == 1_000_000_000  # existing directories keep their times

    run = _restore(world, "latest", to, "--overwrite")
    assert run.code == 0, run.err
    assert sorted(os.listdir(to / name)) == ["a", "d"]
    assert (to / name / "a").read_bytes() == b"from the backup\n"
    assert sorted(os.listdir(to)) == [name]  # no work directory left behind

    assert _restore(world, "latest", to, "--overwrite", "--skip-existing").code == 2
    assert _restore(world, "latest", tmp_path / "missing").code == 2


def test_leftovers_of_an_interrupted_restore_are_replaced(world: World, tmp_path: Path) -> None:
    (world.subvol / "f").write_bytes(b"1")
    world.snapshot()
    assert world.push().code == 0
    name = world.snapshots[0].name
    to = tmp_path / "to"
    to.mkdir()
    stale = to / f".btrsync-restore.{name}"
    (stale / "tree" / "junk").mkdir(parents=True)
    (stale / "btrsync-restore.json").write_text("{}")
    assert _restore(world, "latest", to).code == 0
    assert sorted(os.listdir(to)) == [name]
    foreign = to / f".btrsync-restore.{name}"
    foreign.mkdir()
    run = _restore(world, "latest", to, "--overwrite")
    assert run.code == 2 and "not a btrsync restore" in run.err


# --- hostile streams ----------------------------------------------------------------------------


def _v1(cmd: str, **attrs: object) -> bytes:
    enc = []
    for key, value in attrs.items():
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        elif isinstance(value, int):
            value = struct.pack("<Q", value)
        enc.append((key, value))
    return S.cmd_attrs(cmd, enc, version=1)


def _stream(snapshot_uuid: str, name: str, middle: list[bytes]) -> bytes:
    head = S.cmd_attrs("subvol", [("path", name.encode()), ("uuid", uuid.UUID(snapshot_uuid).bytes),
                                  ("ctransid", struct.pack("<Q", 9))], version=1)
    return S.header(1) + head + b"".join(middle) + S.end()


def _hostile_cases(outside: Path, snapshot_uuid: str) -> dict[str, tuple[str, list[bytes]]]:
    target = str(outside / "file")
    return {
        "dotdot": ("mkfile", [_v1("mkfile", path="../escaped", ino=300)]),
        "dotdot-deep": ("rename", [_v1("mkfile", path="o300-1-0", ino=300),
                                   _v1("rename", path="o300-1-0", path_to="a/../../escaped")]),
        "absolute": ("mkfile", [_v1("mkfile", path=str(outside / "planted"), ino=300)]),
        "symlink-dir": ("mkfile", [_v1("symlink", path="evil", ino=300, path_link=str(outside)),
                                   _v1("mkfile", path="evil/planted", ino=301)]),
        "symlink-write": ("write", [_v1("symlink", path="evil", ino=300, path_link=target),
                                    _v1("write", path="evil", file_offset=0, data=b"owned")]),
        "symlink-truncate": ("truncate", [_v1("symlink", path="evil", ino=300, path_link=target),
                                          _v1("truncate", path="evil", size=0)]),
        "symlink-renamed-dir": ("mkdir", [_v1("symlink", path="o300-1-0", ino=300, path_link=str(outside)),
                                          _v1("rename", path="o300-1-0", path_to="innocent"),
                                          _v1("mkdir", path="innocent/sub", ino=301)]),
        "symlink-xattr": ("set_xattr", [_v1("symlink", path="evil", ino=300, path_link=str(outside)),
                                        _v1("set_xattr", path="evil/file", xattr_name="user.x", xattr_data=b"1")]),
        "hardlink-out": ("link", [_v1("link", path="stolen", path_link="../outside/file")]),
        "clone-through-symlink": ("clone", [
            _v1("symlink", path="evil", ino=300, path_link=target),
            _v1("mkfile", path="copy", ino=301),
            S.cmd_attrs("clone", [("path", b"copy"), ("file_offset", struct.pack("<Q", 0)),
                                  ("clone_len", struct.pack("<Q", 8)),
                                  ("clone_uuid", uuid.UUID(snapshot_uuid).bytes),
                                  ("clone_ctransid", struct.pack("<Q", 1)), ("clone_path", b"evil"),
                                  ("clone_offset", struct.pack("<Q", 0))], version=1)]),
        "nul": ("mkfile", [_v1("mkfile", path="a\0b", ino=300)]),
    }


def _snapshot_tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    out: dict[str, tuple[int, bytes | str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, os.readlink(p) if p.is_symlink()
                                         else p.read_bytes() if p.is_file() else b"")
    return out


def test_hostile_streams_are_refused_and_nothing_is_written_outside(world: World, tmp_path: Path) -> None:
    (world.subvol / "f").write_bytes(b"x")
    world.snapshot()
    assert world.push().code == 0
    [backup] = world.listing()
    repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    m = repo.load_manifest(backup["id"])
    outside = tmp_path / "outside"  # a sentinel next to the restore directory
    outside.mkdir()
    (outside / "file").write_bytes(b"sentinel")
    os.utime(outside, ns=(5, 5))
    before = _snapshot_tree(tmp_path / "outside")
    to = tmp_path / "to"
    to.mkdir()
    for case, (cmd, commands) in _hostile_cases(outside, m.snapshot_uuid).items():
        data = _stream(m.snapshot_uuid, m.snapshot, commands)
        repack(repo, backup["id"], lambda _raws, data=data: [data[i:i + 50] for i in range(0, len(data), 50)])
        run = _restore(world, backup["id"], to, "--json")
        assert run.code == 4, (case, run.code, run.out, run.err)
        error = json.loads(run.out)["error"] if run.out.strip() else run.err
        assert cmd in str(error), (case, error)
        assert os.listdir(to) == [], (case, os.listdir(to))  # the partial restore is removed
        assert _snapshot_tree(outside) == before, case
        assert outside.stat().st_mtime_ns == 5, case
        assert not (tmp_path / "escaped").exists() and not (tmp_path / "stolen").exists(), case
