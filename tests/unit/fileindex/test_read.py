"""Reading a file index fast without reading it wrong: the batched decoder gives the records a
line-by-line decode gives, at any block size, and refuses every damaged plaintext; the replay's
remembered directories never resolve a path to a node that was moved, replaced or removed; the
collector pause restores the collector as it found it."""

from __future__ import annotations

import gc
import json
from types import SimpleNamespace

import pytest
import zstandard

from btrsync.errors import DamageError
from btrsync.fileindex import records, store
from btrsync.fileindex.tree import FileTree, gc_paused, parent_clone_paths
from btrsync.sendstream.format import Event

FULL = "11111111-1111-1111-1111-111111111111"


def _manifest(**over) -> SimpleNamespace:
    doc = {"backup_id": "b-1", "snapshot_uuid": FULL, "parent_uuid": None, "format": 2,
           "table": {"attempt": "t0"}, "stream_bytes": 999, "files": None}
    return SimpleNamespace(**{**doc, **over})


HEADER = json.dumps({"file_index": 1, "backup_id": "b-1", "snapshot_uuid": FULL, "parent_uuid": None,
                     "attempt": "t0"}).encode() + b"\n"


def _trailer(n: int) -> bytes:
    return json.dumps({"end": True, "records": n, "commands": n, "stream_bytes": 999}).encode() + b"\n"


def _lines(n: int) -> bytes:
    evs = [Event("mkfile", f"d{i % 7}/f{i}\n\"\u00e9\udcff", {"ino": i}, i * 10, 10) for i in range(n)]
    evs.append(Event("set_xattr", "x", {"xattr_name": "user.a", "xattr_data": b"\n{"}, 0, 5))
    return records.encode_many(evs)


def _z(plain: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(plain)


@pytest.mark.parametrize("block", [1, 7, 64, 1000, 1 << 20])
def test_batched_records_equal_the_line_by_line_decode(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(store, "_BLOCK", block)
    body = _lines(300)
    want = [records.decode(line) for line in body.splitlines()]
    assert list(store.iter_records(_z(HEADER + body + _trailer(301)), _manifest())) == want
    assert list(store.iter_records(_z(HEADER + _trailer(0)), _manifest())) == []


@pytest.mark.parametrize("block", [7, 1 << 20])
@pytest.mark.parametrize("plain", [
    b"",  # nothing at all
    HEADER,  # no trailer
    HEADER + _lines(5),  # cut before the trailer
    HEADER + _lines(5) + _trailer(5),  # one record too few counted (6 written)
    HEADER + _lines(5) + _trailer(6) + b'["end",0,1,null,{}]\n',  # lines after its end
    HEADER + _lines(5) + _trailer(6) + b"\n",  # a blank line after its end
    HEADER + _lines(2) + _trailer(3) + _lines(2) + _trailer(6),  # a trailer in the middle
    HEADER + _lines(2) + b"\n" + _lines(2) + _trailer(6),  # a blank line
    HEADER + b'["mkfile",0,1,"a",{}],["mkfile",0,1,"b",{}]\n' + _trailer(2),  # two records on a line
    HEADER + b'["mkfile",0,1,"a"]\n' + _trailer(1),  # not five fields
    HEADER + b'[1,0,1,"a",{}]\n' + _trailer(1),  # a command that is no name
    HEADER + b'"mkfile"\n' + _trailer(1),  # not a list
    HEADER + b'["mkfile",0,1,"a",{}]\n' + b"[1]\n",  # a last line that is no trailer
    b"[]\n" + _trailer(0),  # a header that is no object
])
def test_damaged_plaintext_is_damage(monkeypatch: pytest.MonkeyPatch, block: int, plain: bytes) -> None:
    monkeypatch.setattr(store, "_BLOCK", block)
    with pytest.raises(DamageError):
        list(store.iter_records(_z(plain), _manifest()))


def ev(cmd: str, path: str | None, **attrs) -> list:
    return records.decode(records.encode(Event(cmd, path, attrs, 0, 10)))


def _write(path: str, n: int) -> list:
    return ev("write", path, file_offset=0, data_offset=0, data_len=n)


def test_remembered_directories_follow_renames_replacements_and_removals() -> None:
    t = FileTree()
    t.apply_link([
        ev("subvol", "s", uuid=FULL, ctransid=1),
        ev("mkdir", "d", ino=257), ev("mkdir", "d/sub", ino=258), ev("mkfile", "d/sub/a", ino=259), _write("d/sub/a", 1),
        ev("rename", "d", path_to="e"),  # the directory moves: d/sub is no more
        ev("mkdir", "d", ino=260), ev("mkdir", "d/sub", ino=261), ev("mkfile", "d/sub/a", ino=262),
        _write("d/sub/a", 2), _write("e/sub/a", 3),
        ev("mkdir", "x", ino=263), ev("mkfile", "x/b", ino=264),
        ev("rename", "x", path_to="d/sub"),  # a directory replaced by another (empty in btrfs; here not)
        _write("d/sub/b", 4),
        ev("rmdir", "e/sub"), ev("mkfile", "e/sub", ino=265), _write("e/sub", 5),  # a directory, now a file
        ev("end", None),
    ], where="link 0", uuid=FULL, parent_uuid=None)
    sizes = {e.path: (e.ino, e.size) for e in t.entries() if e.kind == "f"}
    assert sizes == {"d/sub/b": (264, 4), "e/sub": (265, 5)}
    t2 = FileTree()
    with pytest.raises(DamageError):  # a file under a directory that was moved away
        t2.apply_link([ev("subvol", "s", uuid=FULL, ctransid=1), ev("mkdir", "d", ino=257),
                       ev("mkfile", "d/a", ino=258), ev("rename", "d", path_to="e"), _write("d/a", 1)],
                      where="link 0", uuid=FULL, parent_uuid=None)


def test_the_collector_pause_restores_what_it_found() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError
    assert gc.isenabled()


@pytest.mark.parametrize("block", [7, 1 << 20])
def test_the_clone_pre_scan_finds_what_a_full_decode_finds(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(store, "_BLOCK", block)
    evs = [Event("clone", f"f{i}", {"file_offset": 0, "clone_len": 1, "clone_uuid": FULL if i % 2 else "x",
                                   "clone_path": f"src{i}", "clone_offset": 0}, i, 10) for i in range(40)]
    evs += [Event("mkfile", '"clone"', {"ino": 1}, 0, 10), Event("mkfile", "clone", {"ino": 2}, 0, 10)]
    plain = HEADER + records.encode_many(evs) + _trailer(len(evs))
    full = list(store.iter_records(_z(plain), _manifest()))
    found = list(store.records_mentioning(_z(plain), _manifest(), b'"clone"'))
    assert [r for r in full if r[0] == "clone"] == [r for r in found if r[0] == "clone"]
    assert ["mkfile", 0, 10, "clone", {"ino": 2}] in found  # a name that reads "clone" is decoded, and skipped
    assert parent_clone_paths(found, FULL) == parent_clone_paths(full, FULL) == {f"src{i}" for i in range(1, 40, 2)}
