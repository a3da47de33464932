"""Immutable backups end to end (docs/immutable.md): S3 Object Lock on moto's S3 server (which
implements it) and a push host whose key may not delete, through the B2-rules proxy."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import World, add_target
from tests.integration.test_resume import _killed_push
from tests.support import tree
from tests.support.motoserver import MotoServer, moto_server
from tests.targets.factories_s3 import fresh_b2_proxy, seaweed, seaweed_settings

pytestmark = [pytest.mark.btrfs, pytest.mark.remote]

RETENTION = """
[retention]
default_profile = "std"

[retention.profiles.std]
backups = { keep_daily = 10, keep_monthly = 6 }
"""


def locks(moto: MotoServer, bucket: str, prefix: str) -> dict[str, tuple[str | None, datetime | None]]:
    """Key (without the prefix) -> (lock mode, retain-until) of every btrsync object there."""
    client = moto.client()
    found = {}
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", []):
        head = client.head_object(Bucket=bucket, Key=obj["Key"])
        until = head.get("ObjectLockRetainUntilDate")
        found[obj["Key"][len(prefix) + 1:]] = (head.get("ObjectLockMode"), until.astimezone(UTC) if until else None)
    return found


def plant_stray_segment(world: World, client: Any, bucket: str, *, lock: bool = False) -> str:
    """A segment past the durable prefix of the interrupted push (as parallel segment uploads leave
    them), so that the resume has something to delete; returns its key."""
    [backup_id] = {k.split("/")[1] for k in world.data_files() if k.startswith("data/")}
    key = f"data/{backup_id}/000099"
    extra = ({"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=1)}
             if lock else {})
    client.put_object(Bucket=bucket, Key=f"repo/{key}", Body=b"stray",
                      ContentMD5=base64.b64encode(hashlib.md5(b"stray").digest()).decode(), **extra)
    return key


def locked_world(world: World, request: pytest.FixtureRequest, tmp_path: Path, mode: str,
                 **extra: str) -> tuple[MotoServer, str]:
    moto = moto_server(request)
    bucket = moto.create_bucket(locked=True)
    # moto answers a request in tens of milliseconds and every object of a backup gets a lock of
    # its own: segments of 4 MiB (not the world's 256 KiB) keep a backup at a handful of objects
    add_target(world, "vault", f"s3://{bucket}/repo", moto.settings(tmp_path, object_lock=mode, **extra),
               chunk_size="1M", segment_size="4M")
    return moto, bucket


def test_a_push_writes_every_object_locked_and_prune_explains_what_it_may_not_delete(
        world: World, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    moto, bucket = locked_world(world, request, tmp_path, "compliance")
    world.config.write_text(world.config.read_text() + RETENTION)
    tree.populate(world.subvol, 7)
    world.snapshot()
    tree.mutate(world.subvol, 7, 1)
    world.snapshot()
    run = world.push("--json")
    assert run.code == 0, run.err
    first, second = world.listing()
    held = locks(moto, bucket, "repo")
    backup_objects = {k: v for k, v in held.items() if k.startswith(("data/", "backups/"))}
    assert len(backup_objects) >= 4 and {mode for mode, _ in backup_objects.values()} == {"COMPLIANCE"}
    soon = datetime.now(UTC) + timedelta(days=7) - timedelta(minutes=5)
    assert all(until is not None and until >= soon for _, until in backup_objects.values())
    # the month's first backup is kept ~6 months by the policy, and its child is sent on it
    assert held[f"backups/{first['id']}/manifest"][1] > datetime.now(UTC) + timedelta(days=120)
    assert held["btrsync-repo.json"] == (None, None)
    run = world.cli("prune", "--from", world.url, "--keep-last", "1", "--dry-run", "--json")
    assert run.code == 0, run.err  # a dry run tells the same
    assert [d["reasons"][0].startswith("object lock: ") for d in run.json()] == [True, False]
    run = world.cli("prune", "--from", world.url, "--keep-last", "1", "--json")
    assert run.code == 0, run.err  # a refusal is explained, not a failure
    [older] = [d for d in run.json() if d["id"] == first["id"]]
    assert older["action"] == "keep" and older["reasons"][0].startswith("object lock: ")
    assert "compliance lock until" in older["reasons"][0]
    assert [b["id"] for b in world.listing()] == [first["id"], second["id"]]


def test_prune_deletes_what_has_expired_and_extends_what_the_policy_keeps_longer(
        world: World, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A linear chain (no policy date at upload) is locked for the margin alone (0 s here);
    once that has passed, prune deletes what the policy drops and extends the lock of what it
    keeps to the policy's date."""
    moto, bucket = locked_world(world, request, tmp_path, "governance", object_lock_margin="0s")
    tree.populate(world.subvol, 8)
    for g in range(3):
        if g:
            tree.mutate(world.subvol, 8, g)
        world.snapshot()
    assert world.push("--chain", "linear", "--max-chain", "0").code == 0  # three fulls
    ids = [b["id"] for b in world.listing()]
    assert all(until is not None and until < datetime.now(UTC) + timedelta(minutes=5)
               for _, until in locks(moto, bucket, "repo").values() if _ is not None)
    time.sleep(2.5)  # the locks of 0 s margin expire (whole seconds on the store)
    world.config.write_text(world.config.read_text() + RETENTION)
    run = world.cli("prune", "--from", world.url, "--keep-last", "1", "--json")
    assert run.code == 0, run.err
    assert [d["action"] for d in run.json()] == ["delete", "delete", "keep"]
    assert [b["id"] for b in world.listing()] == ids[2:]
    run = world.cli("prune", "--from", world.url, "--json")  # the configured policy: daily and monthly
    assert run.code == 0, run.err
    manifest = locks(moto, bucket, "repo")[f"backups/{ids[2]}/manifest"]
    assert manifest[0] == "GOVERNANCE" and manifest[1] is not None
    assert manifest[1] > datetime.now(UTC) + timedelta(days=5)


def test_object_lock_on_a_server_without_it_fails_closed(world: World, request: pytest.FixtureRequest,
                                                         tmp_path: Path) -> None:
    """Careless operator: object_lock on SeaweedFS (no Object Lock).  init refuses with exit 2 and
    says why; nothing is written."""
    settings = seaweed_settings(request, tmp_path, object_lock="compliance")
    url = f"s3://btrsync-test/it-{uuid.uuid4().hex[:12]}"
    text = world.config.read_text() + "\n[targets.vault]\n" + f'url = "{url}"\n' + "".join(
        f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in settings.items())
    world.config.write_text(text)
    run = world.cli("init", "--to", "vault")
    assert run.code == 2, run.err
    assert "object_lock" in run.err and "Object Lock" in run.err
    assert seaweed(request).client().list_objects_v2(Bucket="btrsync-test", Prefix=url[len("s3://btrsync-test/"):]
                                                     ).get("KeyCount", 0) == 0


def test_a_push_host_without_delete_permission_pushes_and_resumes(world: World, request: pytest.FixtureRequest,
                                                                  tmp_path: Path) -> None:
    """Least privilege: the push host's B2 key lacks deleteFiles.  A push killed mid-way resumes,
    status and verify work; what it could not delete (old lease versions) is left for a clean
    run elsewhere with a delete-capable key."""
    proxy = fresh_b2_proxy(request)
    bucket = seaweed(request).create_bucket(f"btrsync-nodelete-{uuid.uuid4().hex[:8]}", versioned=True)
    settings = seaweed_settings(request, tmp_path, via_proxy=True)
    add_target(world, "b2", f"s3://{bucket}/repo", settings, chunk_size="1M", segment_size="6M")
    try:
        proxy.capabilities.discard("deleteFiles")
        _killed_push(world, size_mib=30)
        # a segment past the durable prefix (parallel segment uploads leave them): the resume deletes it
        stray = plant_stray_segment(world, seaweed(request).client(), bucket)
        run = world.push("--json")
        assert run.code == 0, run.err
        assert "not deleted" in run.err and "btrsync clean" in run.err
        [backup] = run.json()["backups"]
        assert backup["resumed_bytes"] > 0
        assert world.cli("status", "--json").code == 0
        run = world.cli("verify", "--from", world.url, "--level", "catalog", "--json")
        assert run.code == 0, run.err
        assert f"DeleteObject /{bucket}/repo/{stray}" in proxy.denied
        assert all(d.startswith("DeleteObject ") for d in proxy.denied)
        assert world.receive("latest").code == 0
        name = world.snapshots[0].name
        assert (world.restore / name / "big.bin").read_bytes() == (world.snapdir / name / "big.bin").read_bytes()
    finally:
        proxy.capabilities.add("deleteFiles")
    run = world.cli("clean", "--from", world.url, "--json")  # elsewhere, with a delete-capable key
    assert run.code == 0, run.err


def test_run_on_a_push_host_without_delete_permission_degrades_its_prune(
        world: World, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """``btrsync run`` prunes after pushing; with a key that may not delete (no deleteFiles) the
    prune is refused by the store: the run still succeeds, and says why nothing was deleted."""
    from tests.integration.test_run import at, configure

    proxy = fresh_b2_proxy(request)
    bucket = seaweed(request).create_bucket(f"btrsync-nodelete-{uuid.uuid4().hex[:8]}", versioned=True)
    b2 = {"url": f"s3://{bucket}/repo", "chain": "linear", **seaweed_settings(request, tmp_path, via_proxy=True)}
    tree.populate(world.subvol, 9)
    configure(world, f"""
[jobs.data]
subvolumes = ["{world.subvol}"]
snapshot_dir = "{world.snapdir}"
snapshots = {{ keep_last = 3 }}
targets.b2 = {{ retention = {{ keep_last = 1 }}, max_chain = 0 }}
""", targets={"b2": b2})
    world.set_push(chunk_size="1M", segment_size="4M")
    assert world.cli("init", "--to", "b2").code == 0
    try:
        proxy.capabilities.discard("deleteFiles")
        for hour in range(3):
            if hour:
                tree.mutate(world.subvol, 9, hour)
            result = world.cli("run", "--all", "--json", "--now", at(hour))
            assert result.code == 0, result.err
        assert proxy.denied and all(d.startswith("DeleteObject ") for d in proxy.denied)
        assert "run prune of" in result.err and "where the key may" in result.err
    finally:
        proxy.capabilities.add("deleteFiles")
    run = world.cli("prune", "--from", "b2", "--keep-last", "1", "--json")  # elsewhere, delete-capable
    assert run.code == 0, run.err
    assert [d["action"] for d in run.json()] == ["keep"]
    assert world.cli("clean", "--from", "b2").code == 0


@pytest.mark.slow
def test_a_killed_push_on_a_locked_bucket_leaves_locked_orphans_clean_reports_and_a_push_resumes(
        world: World, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    moto, bucket = locked_world(world, request, tmp_path, "compliance")
    world.set_push(segment_size="6M")
    _killed_push(world, size_mib=30)
    stray = plant_stray_segment(world, moto.client(), bucket, lock=True)
    run = world.cli("clean", "--from", world.url, "--json")
    assert run.code == 0, run.err  # a locked orphan is reported, not an error
    orphans = [i for i in run.json()["items"] if i["kind"] == "orphaned data"]
    assert orphans and all(i["action"].startswith("kept: ") and "compliance lock until" in i["action"]
                           for i in orphans)
    run = world.push("--json")
    assert run.code == 0, run.err
    [backup] = run.json()["backups"]
    assert backup["resumed_bytes"] > 0
    assert all(mode == "COMPLIANCE" for key, (mode, _) in locks(moto, bucket, "repo").items()
               if key.startswith(("data/", "backups/")))
    assert stray in locks(moto, bucket, "repo")  # locked: the resume could not delete it, and went on
    assert world.receive("latest").code == 0
    name = world.snapshots[0].name
    assert (world.restore / name / "big.bin").read_bytes() == (world.snapdir / name / "big.bin").read_bytes()


FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def skewed(world: World, offset: str, *args: str) -> subprocess.CompletedProcess[str]:
    """btrsync in a process whose clock runs ``offset`` (libfaketime) off the real one."""
    if not FAKETIME.exists():
        if os.environ.get("CI"):
            pytest.fail("libfaketime is missing (Debian package libfaketime; scripts/bootstrap installs it)")
        pytest.skip("libfaketime is not installed (Debian package libfaketime)")
    env = {**os.environ, "LD_PRELOAD": str(FAKETIME), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
            "--key-file", str(world.key), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_a_skewed_host_clock_locks_by_the_store_clock_or_is_refused(
        world: World, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Careless operator: a host clock off the store's.  A few minutes: the retain-until dates
    still come from the store's clock.  Days: the push is refused (a host ahead would lock
    compliance backups too long, for good) and nothing is written."""
    moto, bucket = locked_world(world, request, tmp_path, "compliance")
    tree.populate(world.subvol, 10)
    world.snapshot()
    push = ("push", str(world.subvol), "--snapshot-dir", str(world.snapdir), "--to", world.url)
    proc = skewed(world, "+3d", *push)
    assert proc.returncode == 1, proc.stderr
    assert "clock is 3 days ahead of" in proc.stderr and "NTP" in proc.stderr
    assert not [k for k in locks(moto, bucket, "repo") if k.startswith(("data/", "backups/"))]
    started = datetime.now(UTC)
    proc = skewed(world, "-10m", *push)
    assert proc.returncode == 0, proc.stderr
    held = {k: until for k, (_, until) in locks(moto, bucket, "repo").items() if k.startswith(("data/", "backups/"))}
    assert held
    # from the store's clock: a lock from this host's would end 10 minutes early
    assert all(until is not None and until >= started + timedelta(days=7) for until in held.values())
