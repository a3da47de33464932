"""Two restore drills sharing a scratch directory take turns: the second never removes the first's
live image as a leftover (both the doc test and the jobs use the default /var/tmp/btrsync-drills)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.targets.local import LocalTarget
from btrsync.ops.drill import drill, scratch_lock
from tests.integration.conftest import World

pytestmark = pytest.mark.btrfs


def _flock_waiters(path: Path) -> int:
    """How many flock requests on ``path`` the kernel holds blocked (``->`` lines of /proc/locks)."""
    st = os.stat(path)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if " -> FLOCK " in line and line.split()[-3] == ident)


def test_a_drill_waits_for_the_drill_holding_the_scratch_directory(world: World, tmp_path: Path) -> None:
    (world.subvol / "file").write_text("x\n")
    world.snapshot()
    assert world.push().code == 0
    repo = Repository.open(LocalTarget(world.target_dir), load_key_file(world.key))
    catalog = repo.catalog()
    backup = catalog.manifests[0].backup_id
    scratch = tmp_path / "drills"
    scratch.mkdir()
    live = scratch / "btrsync-drill-live.img"   # what a running drill's image looks like
    live.write_bytes(b"")
    results = []
    with scratch_lock(scratch):                 # "another drill" holds the directory
        worker = threading.Thread(target=lambda: results.append(
            drill(repo, catalog, backup, scratch, (world.snapdir,))))
        worker.start()
        deadline = time.monotonic() + 60        # until the drill is blocked on the directory's lock
        while not _flock_waiters(scratch) and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _flock_waiters(scratch) == 1, "the drill did not wait for the scratch directory"
        assert worker.is_alive() and live.exists()   # waiting: nothing of the live drill touched
    worker.join(60)
    assert not worker.is_alive()
    assert results and results[0].differences == []
    assert not live.exists()                    # once free, a dead drill's image is a leftover
    assert list(scratch.iterdir()) == []
