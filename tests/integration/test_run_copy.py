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


@pytest.mark.slow
def test_a_copy_past_the_window_end_stops_at_a_segment_boundary_and_resumes(world: World, tmp_path: Path) -> None:
    """window_end = "stop" holds for a copy as for a push: the window closes once the copy's first
    segment is durable; the copy stops before the next one (no manifest; the target is stopped),
    and the next run resumes it from the durable segments."""
    import time
    from datetime import timedelta

    from btrsync.cli.app import App
    from btrsync.config.model import load_config
    from btrsync.jobs.runner import RunEnv, run_jobs
    from tests.integration.conftest import T0

    offsite = tmp_path / "offsite"
    offsite.mkdir()
    jobs = f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
window = ["Fri 00:00-06:00"]
window_end = "stop"
targets.usb = {{ max_chain = 0 }}
targets.offsite = {{ copy_from = "usb" }}
"""
    configure(world, jobs, targets={"offsite": {"url": f"file://{offsite}"}})
    assert world.cli("init", "--to", "offsite").code == 0
    (world.subvol / "big").write_bytes(os.urandom(1_500_000))  # > 5 segments of 256k
    inside, outside = T0, T0 + timedelta(hours=4)

    class ClosingClock:
        """Inside the window until the copy's first segment is on the offsite target."""

        def __init__(self, closes: bool) -> None:
            self.closes = closes

        def now(self):  # noqa: ANN202
            return outside if self.closes and any(offsite.glob("data/*/000000.idx")) else inside

        def monotonic(self) -> float:
            return time.monotonic()

        def sleep(self, seconds: float) -> None:
            time.sleep(seconds)

    config = load_config(world.config, explicit=True)
    app = App(world.config, True, world.key, world.state, False)

    def run_once(closes: bool):  # noqa: ANN202
        env = RunEnv(config, world.state, lambda name, write: app.repository(name, write=write), ClosingClock(closes))
        return run_jobs(env, [config.jobs.jobs["data"]]).jobs[0]

    job = run_once(closes=True)
    usb, off = job.targets
    assert usb.status == "ok" and off.status == "stopped" and "closed during the copy" in off.reason, off
    assert job.status == "partial"
    assert not any(offsite.glob("backups/*/manifest"))
    kept = [p for p in offsite.glob("data/*/0*") if not p.name.endswith(".idx")]
    assert 1 <= len(kept) < 6
    job = run_once(closes=False)
    usb, off = job.targets
    assert off.status == "ok", off
    copied, newer = off.backups  # the stopped one, then this run's
    assert copied["status"] == newer["status"] == "ok" and newer["resumed_bytes"] == 0
    assert copied["resumed_bytes"] > 0 and copied["uploaded_bytes"] + copied["resumed_bytes"] == copied["stored_bytes"]
    assert [b["id"] for b in listing(world, "offsite")] == [b["id"] for b in listing(world, "usb")]


@pytest.mark.slow
def test_a_failing_copy_from_target_does_not_keep_local_snapshots(world: World, tmp_path: Path) -> None:
    """The bucket unreachable for days: the run is partial each time, but the host's snapshots are
    still pruned (the disk, which the copy reads from, has what the bucket will get)."""
    jobs = f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
snapshots = {{ keep_last = 1 }}
targets.usb = {{ max_chain = 0 }}
targets.offsite = {{ copy_from = "usb" }}
"""
    configure(world, jobs, targets={"offsite": {"url": f"file://{tmp_path}/not-mounted"}})
    for hour in range(2):
        result = run(world, "--all", now=hour)
        assert result.code == 3, result.err
        job = outcome(result)["data"]
        assert {t["name"]: t["status"] for t in job["targets"]} == {"usb": "ok", "offsite": "failed"}
        assert job["status"] == "partial" and job["local_prune_skipped"] is None, job
        assert sorted(p.name for p in world.snapdir.iterdir()) == [job["snapshots"][0]]
