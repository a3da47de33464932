"""btrsync copy into a repository with S3 Object Lock (moto's server): each copied backup is
locked until the date the destination's policy keeps it, as a push's would be, not for the
margin alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.conftest import World
from tests.integration.test_immutable import RETENTION, locked_world, locks
from tests.support import tree

pytestmark = [pytest.mark.btrfs, pytest.mark.remote]


@pytest.mark.slow
def test_a_copy_into_a_locked_bucket_locks_each_backup_for_its_policy_date(
        world: World, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    moto, bucket = locked_world(world, request, tmp_path, "compliance")
    world.config.write_text(world.config.read_text() + RETENTION)
    disk = tmp_path / "disk"
    disk.mkdir()
    assert world.cli("init", "--to", f"file://{disk}").code == 0
    tree.populate(world.subvol, 9)
    world.snapshot()
    tree.mutate(world.subvol, 9, 1)
    world.snapshot()
    run = world.cli("push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", f"file://{disk}")
    assert run.code == 0, run.err
    run = world.cli("copy", "--all", "--from", f"file://{disk}", "--to", "vault", "--json")
    assert run.code == 0, run.err
    first, second = world.listing()
    held = locks(moto, bucket, "repo")
    objects = {k: v for k, v in held.items() if k.startswith(("data/", "backups/"))}
    assert len(objects) >= 4 and {mode for mode, _ in objects.values()} == {"COMPLIANCE"}
    # the month's first backup is kept ~6 months by the policy (and its child is sent on it):
    # locked that long from the copy on, not for the 7-day margin alone
    assert held[f"backups/{first['id']}/manifest"][1] > datetime.now(UTC) + timedelta(days=120)
    assert all(until is not None and until > datetime.now(UTC) + timedelta(days=120)
               for key, (_, until) in objects.items() if first["id"] in key)
    assert held[f"backups/{second['id']}/manifest"][1] > datetime.now(UTC) + timedelta(days=6)
