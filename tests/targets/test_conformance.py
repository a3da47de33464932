"""One suite, every target: the contract of btrsync.targets.base.Target."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta

import pytest

from btrsync.targets.base import Target
from btrsync.targets.errors import InvalidKey, NotFound, RangeError

PART = 256 * 1024


def _blob(n: int, seed: int = 0) -> bytes:
    return (os.urandom(16) * (n // 16 + 1))[:n] if n else b""


def _parts(data: bytes, size: int = PART) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 3 * PART])
def test_put_then_get_round_trips(target: Target, size: int) -> None:
    """What goes in comes out, byte for byte, at the part-size boundaries."""
    data = _blob(size)
    info = target.put("a/b/obj", _parts(data))
    assert info.size == size
    assert target.read("a/b/obj") == data


def test_get_range_returns_slice(target: Target) -> None:
    """Ranged reads return exactly the requested slice (middle, tail, exact end)."""
    data = bytes(range(256)) * 40
    target.put("r", [data])
    assert target.read("r", offset=10, length=100) == data[10:110]
    assert target.read("r", offset=5000) == data[5000:]
    assert target.read("r", offset=len(data)) == b""
    assert target.read("r", offset=len(data) - 7, length=7) == data[-7:]


def test_get_past_end_raises_range_error(target: Target) -> None:
    """A range beyond the object is an error, not a short read."""
    target.put("r", [b"x" * 10])
    with pytest.raises(RangeError):
        target.read("r", offset=5, length=6)
    with pytest.raises(RangeError):
        target.read("r", offset=11)


def test_stat_reports_size_of_stored_object(target: Target) -> None:
    """stat gives the stored size."""
    target.put("s/t", [b"abc", b"de"])
    assert target.stat("s/t").size == 5


@pytest.mark.parametrize("verb", ["stat", "get", "delete"])
def test_missing_object_raises_not_found(target: Target, verb: str) -> None:
    """stat, get and delete of a missing key raise NotFound."""
    with pytest.raises(NotFound):
        if verb == "stat":
            target.stat("nope")
        elif verb == "get":
            target.read("nope")
        else:
            target.delete("nope")


def test_list_is_sorted_and_complete(target: Target) -> None:
    """list returns every key once, sorted, with sizes."""
    keys = [f"k/{i:04d}" for i in range(1200)][::-1][::17]  # 71, put in reverse order (over ssh each is an rsync)
    for k in keys:
        target.put(k, [k.encode()])
    expected = sorted(keys)
    listed = list(target.list())
    assert [o.key for o in listed] == expected
    assert all(o.size == len(o.key) for o in listed)


def test_a_put_tells_the_version_a_listing_shows(target: Target) -> None:
    """Where a put returns the object's version (the catalog cache stores a committed manifest
    under it), the next listing shows exactly that version; a rewrite changes it."""
    first = target.put_bytes("backups/x/manifest", b"one")
    [listed] = target.list("backups/")
    if first.version is None:
        pytest.skip(f"{type(target).__name__}: its puts tell no version")
    assert listed.version == first.version
    second = target.put_bytes("backups/x/manifest", b"two")
    [again] = target.list("backups/")
    assert again.version == second.version != first.version


def test_list_filters_by_prefix(target: Target) -> None:
    """Only keys that start with the prefix are listed, across directory levels."""
    for k in ["backups/a-1/manifest", "backups/a-12/manifest", "backups/b/manifest", "data/a-1/000000", "top"]:
        target.put(k, [b"x"])
    assert [o.key for o in target.list("backups/a-1")] == ["backups/a-1/manifest", "backups/a-12/manifest"]
    assert [o.key for o in target.list("backups/a-1/")] == ["backups/a-1/manifest"]
    assert [o.key for o in target.list("data/")] == ["data/a-1/000000"]
    assert [o.key for o in target.list("zzz")] == []
    assert len(list(target.list(""))) == 5


def test_failed_put_leaves_no_object(target: Target) -> None:
    """An exception from the parts iterator mid-way leaves nothing visible."""

    def parts():
        yield b"x" * PART
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        target.put("half/written", parts())
    assert list(target.list()) == []
    with pytest.raises(NotFound):
        target.stat("half/written")


def test_failed_overwrite_keeps_old_object(target: Target) -> None:
    """A failed put over an existing key leaves the old object intact."""
    target.put("o", [b"old"])

    def parts():
        yield b"new"
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        target.put("o", parts())
    assert target.read("o") == b"old"


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/../b", "sp ace", "a/.", "x.tmp-1", "ü"])
def test_invalid_keys_are_rejected_before_io(target: Target, key: str) -> None:
    """Keys are validated before any target sees them."""
    with pytest.raises(InvalidKey):
        target.put(key, [b"x"])
    with pytest.raises(InvalidKey):
        target.stat(key)
    assert list(target.list()) == []


def test_put_overwrites_existing_key(target: Target) -> None:
    """A second put replaces the object."""
    target.put("o", [b"first"])
    target.put("o", [b"second!"])
    assert target.read("o") == b"second!"
    assert target.stat("o").size == 7


def test_concurrent_puts_of_distinct_keys(target: Target) -> None:
    """Up to capabilities.connections threads may put distinct keys at once."""
    n = max(2, target.capabilities.connections)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            target.put(f"c/{i}", [bytes([i]) * 1000] * 3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(n):
        assert target.read(f"c/{i}") == bytes([i]) * 3000


def test_delete_then_stat_raises_not_found(target: Target) -> None:
    """A deleted object is gone, and its siblings are not."""
    target.put("d/1", [b"1"])
    target.put("d/2", [b"2"])
    target.delete("d/1")
    with pytest.raises(NotFound):
        target.stat("d/1")
    assert [o.key for o in target.list()] == ["d/2"]


def test_discard_removes_what_is_there_and_ignores_what_is_not(target: Target) -> None:
    target.put("d/1", [b"1"])
    target.put("d/2", [b"2"])
    target.discard("d/1")
    target.discard("d/never")
    with pytest.raises(NotFound):
        target.stat("d/1")
    assert [o.key for o in target.list()] == ["d/2"]


def test_discard_if_removes_only_what_the_caller_wants_gone(target: Target) -> None:
    """discard_if hands the caller the object's head (up to limit + 1 bytes) and removes the object
    only when the caller says so: the release of an upload lease that may have been taken over."""
    target.put("locks/a.lease", [b"mine"])
    target.put("locks/b.lease", [b"theirs"])
    target.put("locks/big.lease", [b"x" * 100])
    heads: list[bytes] = []

    def mine(head: bytes) -> bool:
        heads.append(head)
        return head == b"mine"

    assert target.discard_if("locks/a.lease", mine, 16) is True
    assert target.discard_if("locks/b.lease", mine, 16) is False
    assert target.discard_if("locks/never.lease", mine, 16) is False
    assert target.discard_if("locks/big.lease", lambda head: heads.append(head) or False, 16) is False
    assert heads == [b"mine", b"theirs", b"x" * 17]
    with pytest.raises(NotFound):
        target.stat("locks/a.lease")
    assert [o.key for o in target.list("locks/")] == ["locks/b.lease", "locks/big.lease"]


def test_the_target_clock_stamps_what_it_writes(target: Target) -> None:
    """stat and list say when the target wrote an object, on the clock clock() reads.  Upload
    leases are judged by it (catalog/lease.py), so a writer's wrong clock misleads no clean."""
    before = target.clock()
    target.put("locks/x.lease", [b"{}"])
    after = target.clock()
    assert before is not None and after is not None
    # every target here runs on this machine: its clock is ours (a time zone slip would be hours)
    assert abs(before - datetime.now(UTC)) < timedelta(minutes=1)
    slack = timedelta(seconds=2)  # S3 times are whole seconds
    modified = target.stat("locks/x.lease").modified
    assert modified is not None and before - slack <= modified <= after + slack
    [listed] = target.list("locks/")
    assert listed.modified is not None and abs(listed.modified - modified) < slack
    assert [o.key for o in target.list()] == ["locks/x.lease"] and target.leftovers() == []


def test_first_files_sees_what_the_location_holds(target: Target) -> None:
    """init wants an empty location: first_files sees objects (and, where a target can, any file)."""
    assert target.first_files() == []
    target.put("a/b", [b"x"])
    assert target.first_files() == ["a/b"]
