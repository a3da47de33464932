"""Which backups a copy moves: chains parents first, links already there, damage on either side,
and what a copy_from target wants (its retention, not what its prune removed)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Catalog, DamagedManifest
from btrsync.errors import DamageError, UsageError
from btrsync.ops.copy.plan import check_distinct, plan_copy, wanted_by_policy
from btrsync.retention import Policy

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)


def m(n: int, parent: int | None = None, *, sub: str = "data", uuid: str | None = None, depth: int = 0) -> Manifest:
    when = T0 + timedelta(days=n)
    name = f"{sub}.{when:%Y%m%dT%H%M%SZ}"
    return Manifest(
        backup_id=f"{name}-{n:08x}", host="h", subvolume=sub, source_path=f"/{sub}", snapshot=name,
        snapshot_time=when, snapshot_uuid=uuid or f"uuid-{sub}-{n}", parent_uuid=None if parent is None else
        f"uuid-{sub}-{parent}", parent_id=None if parent is None else f"{sub}.{T0 + timedelta(days=parent):%Y%m%dT%H%M%SZ}-{parent:08x}",
        depth=depth, send={}, compression={"level": 3}, encryption={}, chunk_size=4, chunk_count=1,
        table={"attempt": "a", "digest": "d"}, stream_bytes=100 * (n + 1), stored_bytes=10 * (n + 1), segments=1,
        started=when, finished=when)


CHAIN = [m(0), m(1, 0, depth=1), m(2, 1, depth=2)]


def ids(ms: list[Manifest]) -> list[str]:
    return [x.backup_id for x in ms]


def test_a_backup_comes_with_its_chain_parents_first() -> None:
    plan = plan_copy(Catalog(list(CHAIN)), Catalog(), ["data@latest"], "A", "B")
    assert ids(plan.copy) == ids(CHAIN) and plan.present == []
    assert plan.bytes == sum(x.stored_bytes for x in CHAIN)


def test_links_already_there_are_present_and_not_copied() -> None:
    plan = plan_copy(Catalog(list(CHAIN)), Catalog(CHAIN[:2]), [CHAIN[2].backup_id], "A", "B")
    assert ids(plan.copy) == [CHAIN[2].backup_id] and ids(plan.present) == ids(CHAIN[:2])


def test_all_copies_each_backup_once_and_names_the_unusable() -> None:
    orphan = m(5, 4, depth=1)  # its parent is gone: broken
    damaged = DamagedManifest("data.x-00000009", "backups/data.x-00000009/manifest", "tag mismatch")
    plan = plan_copy(Catalog([*CHAIN, orphan], [damaged]), Catalog(), None, "A", "B")
    assert ids(plan.copy) == ids(CHAIN)
    assert set(plan.unusable) == {orphan.backup_id, damaged.backup_id}


def test_damage_in_an_asked_for_chain_is_damage() -> None:
    with pytest.raises(DamageError):
        plan_copy(Catalog(CHAIN[1:]), Catalog(), [CHAIN[2].backup_id], "A", "B")


def test_the_same_id_of_another_snapshot_on_the_destination_is_refused() -> None:
    impostor = m(0, uuid="someone-else")
    with pytest.raises(DamageError, match="not the same backup"):
        plan_copy(Catalog(list(CHAIN)), Catalog([impostor]), ["data@latest"], "A", "B")


def test_a_damaged_manifest_of_that_id_on_the_destination_is_never_overwritten() -> None:
    damaged = DamagedManifest(CHAIN[0].backup_id, f"backups/{CHAIN[0].backup_id}/manifest", "tag mismatch")
    with pytest.raises(DamageError, match="damaged manifest"):
        plan_copy(Catalog(list(CHAIN)), Catalog([], [damaged]), ["data@latest"], "A", "B")


def test_links_there_broken_only_for_a_lost_ancestor_are_healed_by_copying_it_again() -> None:
    # the destination lost the full (an operator's delete, a prune that raced a copy): its two
    # children there are restorable again once it is copied, and are not copied themselves
    plan = plan_copy(Catalog(list(CHAIN)), Catalog(CHAIN[1:]), ["data@latest"], "A", "B")
    assert ids(plan.copy) == [CHAIN[0].backup_id] and ids(plan.present) == ids(CHAIN[1:])


def test_a_link_there_but_not_restorable_for_another_reason_is_refused() -> None:
    # the destination's link names a parent the source's does not: a copied parent would not heal it
    other_parent = dataclasses.replace(CHAIN[1], parent_uuid="uuid-data-elsewhere")
    with pytest.raises(DamageError, match="not restorable there"):
        plan_copy(Catalog(list(CHAIN)), Catalog([other_parent]), ["data@latest"], "A", "B")
    # and one whose parent is not restorable there either is not healed by its child's copy
    with pytest.raises(DamageError, match="not restorable there"):
        plan_copy(Catalog(list(CHAIN)), Catalog([CHAIN[0], other_parent, CHAIN[2]]), ["data@latest"], "A", "B")


def test_the_same_repository_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="same repository"):
        check_distinct("r1", "r1", "file:///a", "file:///a/")
    check_distinct("r1", "r2", "file:///a", "file:///b")


def test_copy_from_wants_what_its_policy_keeps_not_what_its_prune_removed() -> None:
    fulls = [m(n) for n in range(4)]
    keep_last_1 = Policy(keep_last=1)
    wanted = wanted_by_policy(Catalog(fulls), Catalog([fulls[2]]), {"data"}, lambda sub: keep_last_1,
                              T0 + timedelta(days=5))
    assert wanted == [fulls[3].backup_id]
    everything = wanted_by_policy(Catalog(fulls), Catalog([fulls[2]]), {"data"}, lambda sub: None,
                                  T0 + timedelta(days=5))
    assert everything == ids([fulls[0], fulls[1], fulls[3]])
    assert wanted_by_policy(Catalog(fulls), Catalog(), {"home"}, lambda sub: None, T0) == []


def test_copy_from_decides_for_each_host_apart_as_prune_does() -> None:
    # a NAS two hosts push "data" to, copied on: the destination's prune keeps a history per host,
    # so the copy must want each host's (pooled, one backup a day would be all one host's)
    mine = [m(n) for n in range(3)]
    theirs = [dataclasses.replace(m(n, uuid=f"uuid-g-{n}"), host="g", backup_id=f"g-{n}",
                                  snapshot_time=T0 + timedelta(days=n, hours=1)) for n in range(3)]
    daily = Policy(keep_daily=7)
    wanted = wanted_by_policy(Catalog(mine + theirs), Catalog(), {"data"}, lambda sub: daily,
                              T0 + timedelta(days=3))
    assert sorted(wanted) == sorted(ids(mine + theirs))
    # and what one host's prune removed there is not brought back because the other host is newer
    wanted = wanted_by_policy(Catalog(mine + theirs), Catalog([mine[2], theirs[2]]), {"data"},
                              lambda sub: Policy(keep_last=1), T0 + timedelta(days=3))
    assert wanted == []
