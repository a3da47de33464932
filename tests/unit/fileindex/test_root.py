"""A backup's top directory as the push records it (fileindex/root.py) is what the replay of its
chain's file indexes makes of it, link after link; a malformed record is never taken."""

from __future__ import annotations

import pytest

from btrsync.fileindex import store
from btrsync.fileindex.root import XATTR_LIMIT, RootTracker, from_record, record
from btrsync.fileindex.tree import new_root
from tests.unit.fileindex.test_tree import FULL, INC, _repo, _tree, ev

LINKS = [
    [ev("subvol", "s", uuid=FULL, ctransid=1), ev("mkdir", "o257-1-0", ino=257), ev("rename", "o257-1-0", path_to="d"),
     ev("chown", "d", uid=7, gid=7), ev("chmod", "d", mode=0o700),
     ev("utimes", "d", atime=(5, 0), mtime=(5, 0), ctime=(5, 0)),
     ev("chown", "", uid=1234, gid=5678), ev("chmod", "", mode=0o40750),  # the mode's type bits go
     ev("set_xattr", "", xattr_name="system.posix_acl_default", xattr_data=b"\x02\x00"),
     ev("set_xattr", "", xattr_name="user.gone", xattr_data=b"x"), ev("set_xattr", "d", xattr_name="user.d", xattr_data=b"d"),
     ev("utimes", "", atime=(-10, 1), mtime=(1_000_000_000, 987_654_321), ctime=(3, 0)), ev("end", None)],
    [ev("snapshot", "s", uuid=INC, ctransid=2, clone_uuid=FULL, clone_ctransid=1), ev("mkfile", "o258-2-0", ino=258),
     ev("rename", "o258-2-0", path_to="f"), ev("utimes", "", atime=(20, 0), mtime=(21, 22), ctime=(21, 22)),
     ev("remove_xattr", "", xattr_name="user.gone"),
     ev("end", None)],
    [ev("snapshot", "s", uuid=INC, ctransid=3, clone_uuid=INC, clone_ctransid=2),
     ev("chmod", "f", mode=0o600), ev("end", None)],  # nothing of the top directory
]


def test_the_recorded_top_directory_is_the_replayed_one_link_after_link() -> None:
    recorded = None
    for n in range(len(LINKS)):
        tracker = RootTracker(new_root() if n == 0 else from_record(recorded))
        tracker.add_many(LINKS[n])
        recorded = tracker.record()
        replayed = _tree(*LINKS[:n + 1]).root.inode
        got = from_record(recorded)
        assert got is not None
        assert (got.mode, got.uid, got.gid, got.atime, got.mtime, got.xattrs) == (
            replayed.mode, replayed.uid, replayed.gid, replayed.atime, replayed.mtime, replayed.xattrs), n
    assert recorded == {"mode": 0o750, "uid": 1234, "gid": 5678, "atime": [20, 0], "mtime": [21, 22],
                        "xattrs": {"system.posix_acl_default": "0200"}}


def test_the_index_writer_records_it_only_when_it_knows_where_it_started() -> None:
    for seed, expect in ((new_root(), True), (None, False)):
        w = store.IndexWriter("b-1", FULL, None, "t0", root=seed)
        w.add_many(LINKS[0][:5])
        w.add(LINKS[0][6])  # one at a time as well (btrsync index)
        w.finish(stream_bytes=999, commands=6)
        info = w.upload(_repo())
        assert ("root" in info) is expect
        if expect:
            assert info["root"] == record(new_root()) | {"uid": 1234, "gid": 5678}


@pytest.mark.parametrize("bad", [
    None, [], "x", {}, {"mode": 0o755, "uid": 0},  # missing a field
    {"mode": 0o10000, "uid": 0, "gid": 0, "atime": None, "mtime": None, "xattrs": {}},  # not permission bits
    {"mode": 0o755, "uid": -1, "gid": 0, "atime": None, "mtime": None, "xattrs": {}},
    {"mode": 0o755, "uid": True, "gid": 0, "atime": None, "mtime": None, "xattrs": {}},
    {"mode": 0o755, "uid": 0, "gid": 1 << 32, "atime": None, "mtime": None, "xattrs": {}},
    {"mode": "755", "uid": 0, "gid": 0, "atime": None, "mtime": None, "xattrs": {}},
    {"mode": 0o755, "uid": 0, "gid": 0, "atime": [1, 1_000_000_000], "mtime": None, "xattrs": {}},
    {"mode": 0o755, "uid": 0, "gid": 0, "atime": None, "mtime": [1, 2, 3], "xattrs": {}},
    {"mode": 0o755, "uid": 0, "gid": 0, "atime": None, "mtime": ["1", 2], "xattrs": {}},
    {"mode": 0o755, "uid": 0, "gid": 0, "atime": None, "mtime": None},  # no xattrs: not known
    {"mode": 0o755, "uid": 0, "gid": 0, "atime": None, "mtime": None, "xattrs": {"user.x": "zz"}},
    {"mode": 0o755, "uid": 0, "gid": 0, "atime": None, "mtime": None, "xattrs": []},
])
def test_a_malformed_record_is_not_taken(bad: object) -> None:
    assert from_record(bad) is None


def test_times_before_1970_are_times() -> None:
    got = from_record({"mode": 0o755, "uid": 0, "gid": 0, "atime": [-5, 1], "mtime": None, "xattrs": {}})
    assert got is not None and got.atime == (-5, 1) and got.mtime is None and got.ino == 256


def test_a_top_directory_with_large_xattrs_is_not_recorded() -> None:
    tracker = RootTracker(new_root())
    tracker.add_many([ev("set_xattr", "", xattr_name="user.big", xattr_data=bytes(XATTR_LIMIT))])
    assert tracker.record() is None  # manifests stay small; the mount replays this chain instead
