"""``copy_from``: a job target fed by copying from another target of the job instead of pushing,
with its own retention; and the configuration check of the option."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.conftest import World
from tests.integration.test_run import configure, listing, outcome, run

pytestmark = pytest.mark.btrfs


def _jobs(world: World, offsite: Path, copy_from: str = "usb") -> None:
    jobs = f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
targets.usb = {{ retention = {{ keep_last = 3 }}, max_chain = 0 }}
targets.offsite = {{ copy_from = "{copy_from}", retention = {{ keep_last = 1 }} }}
"""
    configure(world, jobs, targets={"offsite": {"url": f"file://{offsite}"}})


@pytest.mark.slow
def test_a_copy_from_target_is_fed_from_the_disk_and_keeps_its_own_retention(world: World,
                                                                               tmp_path: Path) -> None:
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    _jobs(world, offsite)
    assert world.cli("init", "--to", "offsite").code == 0
    for hour in range(3):
        (world.subvol / f"f{hour}").write_bytes(os.urandom(150_000))
        result = run(world, "--all", now=hour)
        assert result.code == 0, result.err
        targets = {t["name"]: t for t in outcome(result)["data"]["targets"]}
        assert targets["usb"]["status"] == "ok" and targets["offsite"]["status"] == "ok", targets
        usb = listing(world, "usb")
        newest = usb[-1]["id"]
        # only the newest is copied: what the offsite's own prune removed (keep_last = 1) is not
        # brought back from the disk, which keeps 3
        assert [(b["backup_id"], b["status"], b["copied_from"]) for b in targets["offsite"]["backups"]] == \
            [(newest, "ok", "usb")]
        assert targets["offsite"]["stored_bytes"] == usb[-1]["stored_bytes"]
        assert len(usb) == hour + 1
        assert [b["id"] for b in listing(world, "offsite")] == [newest]
        assert listing(world, "offsite")[0] == usb[-1]
    dry = world.cli("run", "--all", "--dry-run", "--json", "--now", "2026-11-20T06:00:00+00:00")
    assert dry.code == 0, dry.err


def test_config_check_refuses_a_copy_from_itself_or_from_nowhere(world: World, tmp_path: Path) -> None:
    _jobs(world, tmp_path, copy_from="offsite")
    check = world.cli("config", "check")
    assert check.code == 2 and "is this target itself" in check.err, check.err
    _jobs(world, tmp_path, copy_from="nas")
    check = world.cli("config", "check")
    assert check.code == 2 and "copy_from: no [targets.nas]" in check.err, check.err
    _jobs(world, tmp_path, copy_from=f"file://{tmp_path}/")  # the same place by its URL
    check = world.cli("config", "check")
    assert check.code == 2 and "is this target itself" in check.err, check.err


@pytest.mark.slow
def test_a_copy_from_target_holds_no_local_snapshot(world: World, tmp_path: Path) -> None:
    """The off-site copy is fed from the disk: while it lags behind (not due), the host's
    snapshots are pruned as if it did not exist; only the pushed-to disk keeps its parent."""
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    jobs = f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
snapshots = {{ keep_last = 1 }}
targets.usb = {{ retention = {{ keep_last = 3 }}, max_chain = 0 }}
targets.offsite = {{ copy_from = "usb", every = "daily" }}
"""
    configure(world, jobs, targets={"offsite": {"url": f"file://{offsite}"}})
    assert world.cli("init", "--to", "offsite").code == 0
    for hour in range(3):
        (world.subvol / f"f{hour}").write_bytes(os.urandom(50_000))
        result = run(world, "--all", now=hour)
        assert result.code == 0, result.err
        job = outcome(result)["data"]
        assert job["local_prune_skipped"] is None, job
        # the disk's newest backup is the one snapshot kept; the offsite's (hour 0) pins nothing
        assert sorted(p.name for p in world.snapdir.iterdir()) == [job["snapshots"][0]]
    assert len(listing(world, "offsite")) == 1 and len(listing(world, "usb")) == 3
