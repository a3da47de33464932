"""The file index without btrfs: records round-trip through the sealed store format, the tree
replay follows renames (directories included), hard links and unlinks across links, and an
index that names paths outside the tree or through a symlink is damage."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from btrsync.errors import DamageError
from btrsync.fileindex import records, store
from btrsync.fileindex.tree import FileTree, parent_clone_paths
from btrsync.sendstream.format import Event
from btrsync.targets.memory import MemoryTarget

FULL, INC = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def ev(cmd: str, path: str | None, offset: int = 0, **attrs) -> Event:
    return Event(cmd, path, attrs, offset, 10)


def recs(*events: Event) -> list[list]:
    return [records.decode(records.encode(e)) for e in events]


def test_records_keep_everything_but_data() -> None:
    e = ev("write", "d/f", 100, file_offset=4096, data_offset=140, data_len=3, data=b"abc")
    [r] = recs(e)
    assert r == ["write", 100, 10, "d/f", {"file_offset": 4096, "data_offset": 140, "data_len": 3}]
    [r] = recs(ev("set_xattr", "odd\udcff", xattr_name="user.x", xattr_data=b"\x00\xff"),)
    assert r[3] == "odd\udcff" and r[4]["xattr_data"] == "00ff"
    [r] = recs(ev("utimes", "", atime=(1, 2), mtime=(3, 4), ctime=(5, 6)))
    assert r[4]["mtime"] == [3, 4]


def _tree(*links: list[Event]) -> FileTree:
    t = FileTree(with_ops=True)
    for n, link in enumerate(links):
        rs, parent = recs(*link), None if n == 0 else FULL
        t.apply_link(rs, where=f"link {n}", uuid=FULL if n == 0 else INC, parent_uuid=parent,
                     parent_clone_paths=parent_clone_paths(rs, parent))
    return t


def test_renames_links_and_unlinks_across_links() -> None:
    full = [ev("subvol", "s", uuid=FULL, ctransid=1), ev("mkdir", "o257-1-0", ino=257),
            ev("rename", "o257-1-0", path_to="dir"), ev("mkfile", "o258-1-0", ino=258),
            ev("rename", "o258-1-0", path_to="dir/a"), ev("write", "dir/a", 50, file_offset=0, data_offset=60,
                                                          data_len=5),
            ev("link", "dir/b", path_link="dir/a"), ev("chmod", "dir/a", mode=0o640),
            ev("utimes", "dir/a", atime=(1, 0), mtime=(2, 5), ctime=(2, 5)), ev("end", None)]
    inc = [ev("snapshot", "s", uuid=INC, ctransid=2, clone_uuid=FULL, clone_ctransid=1),
           ev("rename", "dir", path_to="moved"),
           ev("unlink", "moved/b"), ev("truncate", "moved/a", size=3), ev("mkfile", "o259-2-0", ino=259),
           ev("rename", "o259-2-0", path_to="moved/c"),
           ev("clone", "moved/c", file_offset=0, clone_len=3, clone_uuid=FULL, clone_path="dir/a", clone_offset=0),
           ev("end", None)]
    t = _tree(full)
    entries = {e.path: e for e in t.entries()}
    assert entries["dir/a"].nlink == 2 and entries["dir/b"].ino == 258 and entries["dir/a"].size == 5
    assert entries["dir/a"].mode == 0o640 and entries["dir/a"].mtime_ns == 2_000_000_005
    t = _tree(full, inc)
    entries = {e.path: e for e in t.entries()}
    assert set(entries) == {"", "moved", "moved/a", "moved/c"}
    assert entries["moved/a"].nlink == 1 and entries["moved/a"].size == 3 and entries["moved/c"].size == 3
    a, c = t.lookup("moved/a").inode, t.lookup("moved/c").inode
    assert [op[2] for op in a.ops] == ["w", "t"]
    [clone] = c.ops
    assert clone[2] == "c" and clone[3] is a and clone[4] is True  # from the parent, pinned at link start
    assert t.pins[1] == [a]


@pytest.mark.parametrize("hostile", [
    [ev("mkfile", "../escape", ino=300)],
    [ev("symlink", "d", ino=300, path_link="/etc"), ev("mkfile", "d/passwd", ino=301)],
    [ev("write", "nowhere", file_offset=0, data_offset=0, data_len=1)],
])
def test_paths_outside_the_tree_or_through_symlinks_are_damage(hostile: list[Event]) -> None:
    with pytest.raises(DamageError):
        _tree([ev("subvol", "s", uuid=FULL, ctransid=1), *hostile])


def _repo() -> SimpleNamespace:
    from btrsync.crypto.frames import Binding
    from btrsync.crypto.keys import MasterKey

    return SimpleNamespace(binding=Binding(MasterKey(bytes(range(32))), "42"), target=MemoryTarget())


def _manifest(**over) -> SimpleNamespace:
    doc = {"backup_id": "b-1", "snapshot_uuid": FULL, "parent_uuid": None, "format": 2,
           "table": {"attempt": "t0"}, "stream_bytes": 999, "files": None}
    return SimpleNamespace(**{**doc, **over})


def test_store_round_trip_and_what_it_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "PART_SIZE", 64)  # several parts
    repo = _repo()
    w = store.IndexWriter("b-1", FULL, None, "t0")
    events = [ev("mkfile", f"f{i}", i, ino=i) for i in range(50)]
    for e in events:
        w.add(e)
    w.finish(stream_bytes=999, commands=50)
    info = w.upload(repo)
    assert info["parts"] > 1 and info["records"] == 50
    m = _manifest(files=info)
    data, _ = store.read_compressed(repo, m)
    assert [r[3] for r in store.iter_records(data, m)] == [f"f{i}" for i in range(50)]
    # another attempt's index, another size of stream: damage
    for other in (_manifest(table={"attempt": "t1"}), _manifest(stream_bytes=1000)):
        with pytest.raises(DamageError):
            list(store.iter_records(data, other))
    # the last part dropped, or a part moved to another key: damage
    keys = sorted(repo.target.objects)
    last = repo.target.objects.pop(keys[-1])
    with pytest.raises(DamageError):
        store.read_compressed(repo, m)
    repo.target.objects[keys[-1]] = repo.target.objects[keys[0]]
    with pytest.raises(DamageError):
        store.read_compressed(repo, m)
    repo.target.objects[keys[-1]] = last
    # no index at all, for a manifest that names none: the advice to run 'btrsync index'
    with pytest.raises(store.NoFileIndex):
        store.read_compressed(_repo(), _manifest())
