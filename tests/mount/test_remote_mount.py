"""``btrsync mount`` of a repository on S3 (SeaweedFS on loopback): the target is read by several
FUSE threads and several rebuilds at once, each with its own read-path workers."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from tests.integration.conftest import World, add_target
from tests.mount.test_mount import _backup_dir, _describe
from tests.support import tree
from tests.targets.factories_s3 import TEST_BUCKET, seaweed_settings

pytestmark = [pytest.mark.btrfs, pytest.mark.slow, pytest.mark.remote]


def test_a_mount_of_an_s3_repository_reads_as_its_snapshots(request, world: World, mounter, tmp_path) -> None:
    settings = seaweed_settings(request, tmp_path)
    add_target(world, "remote", f"s3://{TEST_BUCKET}/mount-{uuid.uuid4().hex[:12]}", settings,
               chunk_size="256k", segment_size="2M")
    tree.populate(world.subvol, 11)
    world.snapshot()
    tree.mutate(world.subvol, 11, 1)
    world.snapshot()
    run = world.push()
    assert run.code == 0, run.err
    m = mounter(world, "--read-window", "1M")
    for snap in world.snapshots:
        diffs = tree.compare(tree.describe(snap), _describe(_backup_dir(m.mountpoint, snap)),
                             ignore=tree.SEND_BEST_EFFORT)
        assert not diffs, "\n".join(diffs[:20])
    # a fresh mount, read by four threads at once
    m2 = mounter(world)
    snap = world.snapshots[-1]
    files = [p for p in snap.rglob("*") if p.is_file() and not p.is_symlink()]
    bad: list[str] = []

    def reader(order: list) -> None:
        for p in order:
            if (_backup_dir(m2.mountpoint, snap) / p.relative_to(snap)).read_bytes() != p.read_bytes():
                bad.append(str(p))

    threads = [threading.Thread(target=reader, args=(files[i::2] if i < 2 else files[::-1],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad and m2.proc.poll() is None
    assert os.listdir(m2.mountpoint) == ["data"]
