"""clean and usage against a directory target on real btrfs."""

from __future__ import annotations

import pytest

from btrsync.catalog.lease import Lease
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import World
from tests.integration.test_resume import _killed_push
from tests.support import tree

pytestmark = pytest.mark.btrfs


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
