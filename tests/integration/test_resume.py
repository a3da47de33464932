"""Interrupted pushes: nothing listed, durable segments resumed after checking the new stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import btrsync
from btrsync.catalog.repository import Repository
from btrsync.catalog.segment_index import write_index
from btrsync.catalog.manifest import ChunkRecord
from btrsync.crypto.keys import load_key_file
from btrsync.targets.local import LocalTarget
from tests.integration.conftest import World

pytestmark = pytest.mark.btrfs


def _killed_push(world: World, size_mib: int = 24) -> None:
    """Start a throttled push in a child process and SIGKILL it once two segments are durable."""
    with open(world.subvol / "big.bin", "wb") as f:
        f.write(os.urandom(size_mib << 20))
    world.snapshot()
    argv = [sys.executable, "-m", "btrsync", "--config", str(world.config), "--state-dir", str(world.state),
            "--key-file", str(world.key), "push", str(world.subvol), "--snapshot-dir", str(world.snapdir),
            "--to", world.url, "--bwlimit", "4M"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    with world.lister() as keys:
        while time.monotonic() < deadline and sum(f.endswith(".idx") for f in keys()) < 2:
            time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sum(f.endswith(".idx") for f in world.data_files()) >= 2, "the push was killed too late"


def _restored_equals_original(world: World) -> None:
    assert world.receive("latest").code == 0
    name = world.snapshots[-1].name
    assert (world.restore / name / "big.bin").read_bytes() == (world.snapdir / name / "big.bin").read_bytes()


@pytest.mark.slow
def test_sigkill_leaves_nothing_listed_and_the_next_push_resumes(world: World) -> None:
    _killed_push(world)
    assert world.listing() == []
    run = world.push("--json")
    assert run.code == 0, run.err
    [backup] = run.json()["backups"]
    assert backup["resumed_bytes"] >= 2 * 3 * 65536  # two durable segments of three 64k chunks
    assert backup["uploaded_bytes"] + backup["resumed_bytes"] == backup["stored_bytes"]
    assert backup["uploaded_bytes"] < backup["stored_bytes"]
    _restored_equals_original(world)


@pytest.mark.slow
def test_a_stream_that_differs_from_the_stored_part_restarts_cleanly(world: World) -> None:
    _killed_push(world)
    repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    [bid] = {f.split("/")[1] for f in world.data_files() if f.startswith("data/")}
    idx = json.loads(repo.binding.open_index(
        f"data/{bid}/000000.idx", repo.target.read(f"data/{bid}/000000.idx")))
    rows = [ChunkRecord.from_list(r) for r in idx["chunks"]]
    forged = [ChunkRecord(r.segment, r.offset, r.stored_size, r.raw_size, r.stored_xxh3, "0" * 32) for r in rows]
    write_index(repo, bid, 0, idx["params"], forged)  # as if btrfs send now produced other bytes
    run = world.push("--json", "-v")
    assert run.code == 0, run.err
    assert "restarting backup" in run.err
    [backup] = run.json()["backups"]
    assert backup["resumed_bytes"] == 0 and backup["uploaded_bytes"] == backup["stored_bytes"]
    _restored_equals_original(world)


@pytest.mark.slow
def test_changed_settings_are_not_resumed(world: World) -> None:
    _killed_push(world)
    world.config.write_text(world.config.read_text().replace("zstd_level = 3", "zstd_level = 1"))
    run = world.push("--json")
    assert run.code == 0, run.err
    assert run.json()["backups"][0]["resumed_bytes"] == 0
    _restored_equals_original(world)


_KILLED_AT_A_BOUNDARY = """
import os, signal, sys, time
from pathlib import Path
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.ops.push.run import push
from btrsync.ops.push.settings import PushSettings
from btrsync.targets.local import LocalTarget

subvol, snapdir, target, key = (Path(a) for a in sys.argv[1:5])

def may_start(segment):
    # segments 0 and 1 are ended (every frame handed over), segment 2 not started: wait (bounded)
    # until segment 1 is durable and indexed, then die without any cleanup
    if segment == 2:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(target.glob("data/*/000001.idx")):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)

repo = Repository.open(LocalTarget(target), load_key_file(key))
push(subvol, snapdir, repo, PushSettings(chunk_size=64 << 10, segment_size=256 << 10, zstd_level=3,
                                         may_start_segment=may_start))
"""


@pytest.mark.slow
def test_a_sigkill_loses_no_durable_segment(world: World) -> None:
    """SIGKILL right after segment 1 became durable: its index is written already (it does not
    wait for segment 2), so the next push resumes both segments and sends only the rest."""
    with open(world.subvol / "big.bin", "wb") as f:
        f.write(os.urandom(4 << 20))
    world.snapshot()
    assert world.push("--dry-run").code == 0  # the repository exists (as the CLI's first push makes it)
    script = world.target_dir.parent / "killed_push.py"
    script.write_text(_KILLED_AT_A_BOUNDARY)
    child = subprocess.run([sys.executable, str(script), str(world.subvol), str(world.snapdir),
                            str(world.target_dir), str(world.key)], capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(Path(btrsync.__file__).parents[1])})
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    segments = {f: (world.target_dir / f).stat().st_size for f in world.data_files()
                if f.startswith("data/") and f[-6:].isdigit()}
    indexed = [f for f in world.data_files() if f.endswith(".idx")]
    assert sorted(f[-10:] for f in indexed) == ["000000.idx", "000001.idx"]
    durable = sum(size for f, size in segments.items() if f[-6:] in ("000000", "000001"))
    run = world.push("--json")
    assert run.code == 0, run.err
    [backup] = run.json()["backups"]
    assert backup["resumed_bytes"] == durable  # both durable segments, nothing else
    assert backup["uploaded_bytes"] == backup["stored_bytes"] - durable
    _restored_equals_original(world)


@pytest.mark.slow
def test_a_parent_removed_during_an_incremental_push_fails_it_uncommitted(world: World) -> None:
    """A prune or delete elsewhere that read the leases before this push took its own removes the
    parent while the child is sent: committed, the child could never be restored.  The push checks
    the parent right before its commit, commits nothing, says why, and the next push heals it."""
    from btrsync.catalog import layout
    from btrsync.ops.push.run import push
    from btrsync.ops.push.settings import PushSettings

    with open(world.subvol / "a.bin", "wb") as f:
        f.write(os.urandom(256 << 10))
    world.snapshot()
    first = world.push("--json")
    assert first.code == 0, first.err
    [full] = first.json()["backups"]
    with open(world.subvol / "b.bin", "wb") as f:
        f.write(os.urandom(1 << 20))
    world.snapshot()
    gone: list[int] = []

    def prune_elsewhere(segment: int) -> None:
        if segment == 1 and not gone:
            (world.target_dir / layout.manifest_key(full["backup_id"])).unlink()
            gone.append(segment)

    repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    result = push(world.subvol, world.snapdir, repo, PushSettings(chunk_size=64 << 10, segment_size=256 << 10,
                                                                  chain="linear", may_start_segment=prune_elsewhere))
    [failed] = result.results
    assert gone and failed.kind == "incremental" and failed.status == "failed", failed
    assert "was not committed: its parent" in str(failed.error), failed
    manifests = [f for f in world.data_files() if f.startswith("backups/")]
    assert manifests == [], manifests
    again = world.push("--json")
    assert again.code == 0, again.err
    # the removed full is sent again (its snapshot is still here) and the child on it
    assert [b["kind"] for b in again.json()["backups"]] == ["full", "incremental"]
