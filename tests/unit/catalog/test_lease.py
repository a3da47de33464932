"""Whose clock a lease's age is read on: the target's, wherever the target keeps times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from btrsync.catalog.lease import STALE, TargetClock, read_lease, read_leases
from btrsync.targets.errors import TargetError
from btrsync.targets.memory import MemoryTarget


def _lease(bid: str, refreshed: datetime) -> bytes:
    return json.dumps({"backup_id": bid, "parent_id": None, "host": "other-host", "pid": 1, "boot_id": "b",
                       "token": "t", "refreshed": refreshed.isoformat()}).encode()


def test_a_writer_clock_behind_does_not_make_a_fresh_lease_stale() -> None:
    target, now = MemoryTarget(), datetime.now(UTC)
    target.put_bytes("locks/b.lease", _lease("b", now - timedelta(hours=3)))
    lease = read_lease(target, "locks/b.lease", now)
    assert lease is not None and lease.silent_for is not None and lease.silent_for < timedelta(seconds=5)
    assert lease.is_live(now) and "by the target's clock" in lease.describe()


def test_a_writer_clock_ahead_does_not_keep_a_dead_lease_alive() -> None:
    target, now = MemoryTarget(), datetime.now(UTC)
    target.put_bytes("locks/b.lease", _lease("b", now + timedelta(hours=3)))
    target.clock_offset = STALE + timedelta(minutes=1)  # the target's time passes; no refresh comes
    [lease] = read_leases(target, now)
    assert not lease.is_live(now)  # its writer's time, 3 h ahead of ours, is not believed
    target.clock_offset = STALE - timedelta(minutes=1)
    [lease] = read_leases(target, now)
    assert lease.is_live(now)


def test_without_target_times_the_writers_refreshed_field_decides() -> None:
    target, now = MemoryTarget(), datetime.now(UTC)
    target.objects["locks/old.lease"] = _lease("old", now - STALE - timedelta(minutes=1))  # no mtime kept
    target.objects["locks/new.lease"] = _lease("new", now - timedelta(minutes=1))
    leases = {lease.backup_id: lease for lease in read_leases(target, now)}
    assert leases["old"].silent_for is None and not leases["old"].is_live(now)
    assert leases["new"].is_live(now)


class _NoClock(MemoryTarget):
    def clock(self) -> datetime:
        raise TargetError("the clock cannot be read")


def test_a_target_clock_that_cannot_be_read_falls_back_to_the_writers() -> None:
    target, now = _NoClock(), datetime.now(UTC)
    target.put_bytes("locks/b.lease", _lease("b", now - timedelta(hours=1)))
    assert TargetClock(target).now() is None
    lease = read_lease(target, "locks/b.lease", now)
    assert lease is not None and lease.silent_for is None and not lease.is_live(now)


def test_the_target_clock_is_read_once_and_advanced_locally() -> None:
    class Counting(MemoryTarget):
        reads = 0

        def clock(self) -> datetime:
            Counting.reads += 1
            return super().clock()

    target, now = Counting(), datetime.now(UTC)
    for bid in ("a", "b", "c"):
        target.put_bytes(f"locks/{bid}.lease", _lease(bid, now))
    Counting.reads = 0
    assert len(read_leases(target, now)) == 3 and Counting.reads == 1
    assert read_leases(MemoryTarget(), now) == []  # no leases: the clock is not even asked


def test_a_lease_is_stale_only_when_both_clocks_say_so() -> None:
    """A store whose stamps come from another clock (a proxy's Date, a client-stamped mount)
    errs to keeping: the writer's own fresh time keeps the lease live."""
    target, now = MemoryTarget(), datetime.now(UTC)
    target.put_bytes("locks/b.lease", _lease("b", now - timedelta(minutes=1)))
    target.clock_offset = STALE + timedelta(minutes=5)
    [lease] = read_leases(target, now)
    assert lease.silent_for is not None and lease.silent_for > STALE and lease.is_live(now)
    target.put_bytes("locks/b.lease", _lease("b", now + timedelta(minutes=10)))  # a little ahead: believed
    target.modified["locks/b.lease"] -= STALE + timedelta(minutes=5)
    [lease] = read_leases(target, now)
    assert lease.is_live(now)


def test_a_target_clock_that_is_not_a_time_is_not_believed(caplog) -> None:  # noqa: ANN001
    class Epoch(MemoryTarget):
        def clock(self) -> datetime:
            return datetime(1970, 1, 1, tzinfo=UTC)

    target, now = Epoch(), datetime.now(UTC)
    target.put_bytes("locks/b.lease", _lease("b", now - timedelta(hours=1)))
    [lease] = read_leases(target, now)
    assert lease.silent_for is None and not lease.is_live(now)
    assert "cannot read the clock of memory://" in caplog.text and "1970-01-01" in caplog.text


def test_objects_read_whole_are_capped_whatever_stat_says() -> None:
    """A target that answers stat small and serves more (or a sparse 100 GB 'manifest') exhausted
    memory: what is read whole stops after its cap, as damage; a lease that grew is invalid."""
    import pytest

    from btrsync.catalog.reads import FILES_PART_LIMIT, read_whole
    from btrsync.errors import DamageError
    from btrsync.fileindex.store import PART_SIZE

    class Liar(MemoryTarget):
        def stat(self, key: str):  # noqa: ANN201
            info = super().stat(key)
            return type(info)(info.key, 10, info.version, info.modified)

    target, now = Liar(), datetime.now(UTC)
    target.put_bytes("backups/x/manifest", b"m" * 10_000)
    with pytest.raises(DamageError, match="more than 4096 bytes"):
        read_whole(target, "backups/x/manifest", 4096, "manifest")
    assert read_whole(target, "backups/x/manifest", 10_000, "manifest") == b"m" * 10_000
    target.put_bytes("locks/b.lease", _lease("b", now) + b" " * 5000)
    lease = read_lease(target, "locks/b.lease", now)
    assert lease is not None and not lease.valid and "more than 4096 bytes" in (lease.error or "")
    assert FILES_PART_LIMIT > PART_SIZE + 1024  # the cap follows the part size


def test_the_release_removes_its_own_lease_and_leaves_one_taken_over(caplog) -> None:  # noqa: ANN001
    """The release reads whose lease it is (one request: its age does not matter there): its own
    goes; one another holder wrote meanwhile (it took a lease gone stale over) stays."""
    from btrsync.catalog.lease import Lease, lease_key

    target = MemoryTarget()
    with Lease(target, "b1", None):
        assert lease_key("b1") in target.objects
    assert lease_key("b1") not in target.objects

    theirs = _lease("b2", datetime.now(UTC))  # another holder's token
    with Lease(target, "b2", None):
        target.objects[lease_key("b2")] = theirs
    assert target.objects.get(lease_key("b2")) == theirs and "was taken over" in caplog.text
