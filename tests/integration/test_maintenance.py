"""clean and usage against a directory target on real btrfs."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from btrsync.catalog.lease import Lease
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.ops.clean import clean
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import World
from tests.integration.test_resume import _killed_push
from tests.support import tree

pytestmark = pytest.mark.btrfs


@pytest.mark.slow
def test_clean_removes_leftovers_of_a_killed_push_and_nothing_else(world: World) -> None:
    (world.subvol / "first").write_text("kept\n")
    world.snapshot()
    assert world.push().code == 0
    _killed_push(world)
    (world.target_dir / "data" / "x-1").mkdir(parents=True)
    (world.target_dir / "data" / "x-1" / "000000.tmp-abc").write_bytes(b"half")
    dry = world.cli("clean", "--from", world.url, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    kinds = {i["kind"] for i in dry.json()["items"]}
    assert {"orphaned data", "temporary file"} <= kinds
    assert all(i["action"] == "would remove" for i in dry.json()["items"])
    before = world.data_files()
    run = world.cli("clean", "--from", world.url, "--json")
    assert run.code == 0 and run.json()["freed_bytes"] > 0
    after = world.data_files()
    assert after != before
    assert [f for f in after if f.startswith("data/")] == [
        f for f in before if f.startswith(f"data/{world.listing()[0]['id']}/")]
    assert world.receive("latest").code == 0


def test_clean_keeps_the_data_of_an_upload_in_progress(world: World) -> None:
    target = LocalTarget(world.target_dir)
    (world.subvol / "f").write_text("x")
    world.snapshot()
    assert world.push().code == 0
    target.put_bytes("data/inflight-1/000000", b"being written")
    with Lease(target, "inflight-1"):
        run = world.cli("clean", "--from", world.url, "--json")
        assert run.code == 0
        assert [i["action"] for i in run.json()["items"]] == ["kept: upload in progress"]
        assert target.stat("data/inflight-1/000000").size == 13
    run = world.cli("clean", "--from", world.url, "--json")
    assert [i["action"] for i in run.json()["items"]] == ["removed"]


@pytest.mark.slow
def test_usage_adds_up_per_subvolume_and_chain(world: World) -> None:
    tree.populate(world.subvol, 2)
    for g in range(1, 4):
        world.snapshot()
        tree.mutate(world.subvol, 2, g)
    assert world.push("--max-chain", "1").code == 0
    listing = world.listing()
    run = world.cli("usage", "--from", world.url, "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["stored_bytes"] == sum(b["stored_bytes"] for b in listing)
    [sv] = doc["subvolumes"]
    assert sv["subvolume"] == "data" and sv["backups"] == 3
    assert [c["backups"] for c in sv["chains"]] == [2, 1]
    assert doc["free_bytes"] > 0 and doc["uncommitted_bytes"] == 0
    table = world.cli("usage", "--from", world.url)
    assert "total stored" in table.out and table.code == 0


class _PushStartsMidClean(LocalTarget):
    """The directory target, with another host's push of backup ``inflight-2`` starting (its
    lease written, as a push does before its first byte) right after clean listed the data."""

    def __init__(self, root: object, lease_holder: list[Lease]) -> None:
        super().__init__(root)  # type: ignore[arg-type]
        self._holder = lease_holder

    def leftovers(self):  # type: ignore[no-untyped-def]
        found = super().leftovers()
        if not self._holder:
            lease = Lease(LocalTarget(self.root), "inflight-2")
            lease.__enter__()
            self._holder.append(lease)
        return found


def test_clean_keeps_the_data_of_a_push_that_starts_while_it_runs(world: World) -> None:
    """clean read the leases first and listed the data after: a push starting in between (on
    another host) had its fresh segments taken for orphans and deleted, and went on to commit a
    backup that could not be restored.  Leases are now read after the listings, and once more
    right before each backup's data is deleted."""
    (world.subvol / "f").write_text("x")
    world.snapshot()
    assert world.push().code == 0
    LocalTarget(world.target_dir).put_bytes("data/inflight-2/000000", b"resumed segment")
    holder: list[Lease] = []
    try:
        result = clean(Repository.open(_PushStartsMidClean(world.target_dir, holder), load_key_file(world.key)))
        assert holder, "the push never started"
        assert [(i.key, i.action) for i in result.items] == [("data/inflight-2/000000", "kept: upload in progress")]
        assert LocalTarget(world.target_dir).stat("data/inflight-2/000000").size == 15
    finally:
        for lease in holder:
            lease.__exit__(None, None, None)


class _ResumeStartsMidClean(LocalTarget):
    """The directory target, with a resume of backup ``resumed-1`` starting (taking over its stale
    lease) right after clean deleted the data of that backup's dead attempt."""

    def __init__(self, root: object, lease_holder: list[Lease]) -> None:
        super().__init__(root)  # type: ignore[arg-type]
        self._holder = lease_holder

    def delete(self, key: str) -> None:
        super().delete(key)
        if key.startswith("data/resumed-1/") and not self._holder:
            lease = Lease(LocalTarget(self.root), "resumed-1")
            lease.__enter__()
            self._holder.append(lease)


def test_clean_does_not_delete_a_stale_lease_a_resume_took_over_meanwhile(world: World) -> None:
    """clean deleted every lease it had read as stale, without looking again: a resume that took one
    over in between lost it, and with it the guard over the segments it was about to upload."""
    (world.subvol / "f").write_text("x")
    world.snapshot()
    assert world.push().code == 0
    target = LocalTarget(world.target_dir)
    target.put_bytes("data/resumed-1/000000", b"dead attempt")
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    target.put_bytes("locks/resumed-1.lease", json.dumps(
        {"backup_id": "resumed-1", "parent_id": None, "host": "other-host", "pid": 1, "boot_id": "b",
         "token": "dead", "refreshed": hour_ago.isoformat()}).encode())
    os.utime(world.target_dir / "locks/resumed-1.lease", (hour_ago.timestamp(), hour_ago.timestamp()))
    holder: list[Lease] = []
    try:
        result = clean(Repository.open(_ResumeStartsMidClean(world.target_dir, holder), load_key_file(world.key)))
        assert holder, "the resume never started"
        assert [(i.key, i.action) for i in result.items] == [
            ("data/resumed-1/000000", "removed"), ("locks/resumed-1.lease", "kept: upload in progress")]
        assert json.loads(target.read("locks/resumed-1.lease"))["token"] == holder[0].token
    finally:
        for lease in holder:
            lease.__exit__(None, None, None)


def test_clean_keeps_the_data_of_a_lease_it_cannot_read_until_the_operator_removes_it(world: World) -> None:
    """A lease this btrsync cannot parse (a newer version's, or damaged) counted as dead: clean
    deleted the data of what may be a running push, and the lease.  Both now stay, and clean says
    which lease to delete if no push of that backup runs; then the next clean removes the data."""
    (world.subvol / "f").write_text("x")
    world.snapshot()
    assert world.push().code == 0
    target = LocalTarget(world.target_dir)
    target.put_bytes("data/inflight-3/000000", b"uploading")
    target.put_bytes("locks/inflight-3.lease", b'{"format": 99, "holder": "a future btrsync"}')
    run = world.cli("clean", "--from", world.url, "--json")
    assert run.code == 0, run.err
    actions = {i["key"]: i["action"] for i in run.json()["items"]}
    assert set(actions) == {"data/inflight-3/000000", "locks/inflight-3.lease"}, actions
    assert all(a.startswith("kept: its upload lease locks/inflight-3.lease cannot be read") for a in actions.values())
    assert target.stat("data/inflight-3/000000").size == 9 and target.stat("locks/inflight-3.lease").size > 0

    target.delete("locks/inflight-3.lease")  # what the message says to do
    run = world.cli("clean", "--from", world.url, "--json")
    assert [(i["key"], i["action"]) for i in run.json()["items"]] == [("data/inflight-3/000000", "removed")]
