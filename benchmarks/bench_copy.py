"""Benchmark 15: ``btrsync copy`` of benchmark 1's full backup into a repository of another key.

Contenders, each into a fresh directory on the target filesystem, ``sync -f`` inside the timed
region:

* ``btrsync copy`` (in-process ``copy_backups``, default workers): every chunk read through the
  read path (ranged read, xxh3 of the frame, AES-256-GCM open, zstd -d, size + xxh3), sealed
  again for the destination, segments, indexes, file index, manifest;
* ``btrsync push`` of the same snapshot to a fresh repository: sending again from the host, what
  a copy saves the host;
* ``cp -r --reflink=never`` of the source repository (the I/O floor of moving the stored bytes,
  unchecked: such a copy would not even open, its objects being bound to the source repository).

Checks: the copy moved exactly the backup's stored bytes (``moved_bytes == stored_bytes``), and
its manifest lists like the source's (id, snapshot, sizes).  The copy is restored once and
compared with the snapshot file by file.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from benchmarks import bench_restore
from benchmarks.common import Bar, BenchResult, Config, Contender, Workspace, alternate, repo_at, sh, subvol_delete
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import MasterKey, generate_key_file, load_key_file
from btrsync.ops.copy import CopySettings, copy_backups
from btrsync.ops.push.run import push
from btrsync.ops.push.settings import PushSettings
from btrsync.ops.receive import receive
from btrsync.targets.local import LocalTarget
from btrsync.verify.treecompare import diff_trees

PUSH = "btrsync push (send again from the host)"
FLOOR = "cp -r of the repository (floor)"


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("copy", "Copy of the full backup into a repository of another key", baseline="btrsync copy",
                      work_label="stored bytes")
    shared = bench_restore._ensure_backups(ws, cfg, log)
    source = Repository.open(LocalTarget(shared["btrsync_target"]), load_key_file(ws.key_file))
    (manifest,) = source.manifests()
    res.work_bytes = manifest.stored_bytes
    other_key_file = ws.base / "copy-destination.key"
    if not other_key_file.exists():
        generate_key_file(other_key_file)
    other: MasterKey = load_key_file(other_key_file)
    settings = CopySettings(workers=PushSettings().workers, segment_size=PushSettings().segment_size)
    res.metrics["workers"] = settings.workers
    out = ws.dst / "copy"
    out.mkdir(exist_ok=True)
    places = {"btrsync copy": out / "copy", PUSH: out / "push", FLOOR: out / "floor"}
    checked: set[str] = set()

    def fresh(tool: str) -> Callable[[int], None]:
        def before(rep: int) -> None:
            shutil.rmtree(places[tool], ignore_errors=True)
            if tool != FLOOR:
                places[tool].mkdir()
                repo_at(places[tool], other if tool == "btrsync copy" else load_key_file(ws.key_file))
        return before

    def copy_run(rep: int) -> dict[str, object]:
        dest = Repository.open(LocalTarget(places["btrsync copy"]), other)
        result = copy_backups(source, dest, ["latest"], settings)
        sh(f"sync -f {places['btrsync copy']}")
        totals = result.totals()
        if rep == -1 and "btrsync copy" not in checked:
            checked.add("btrsync copy")
            res.check("the copy moved exactly the backup's stored bytes",
                      totals["moved_bytes"] == totals["stored_bytes"] == manifest.stored_bytes, str(totals))
            copied = dest.manifests()
            res.check("the copy lists like the source", [m.summary() for m in copied] == [manifest.summary()])
            into = ws.rst / "copy-check"
            into.mkdir(exist_ok=True)
            receive(dest, "latest", into)
            diffs = diff_trees(Path(shared["snapshot"]), into / Path(shared["snapshot"]).name)
            res.check("the copy restores to a tree equal to the snapshot", not diffs, "; ".join(diffs[:5]))
            subvol_delete(into / Path(shared["snapshot"]).name)
        return {"moved_bytes": totals["moved_bytes"]}

    def push_run(rep: int) -> None:
        repo = Repository.open(LocalTarget(places[PUSH]), load_key_file(ws.key_file))
        (r,) = push(shared["subvol"], shared["snapdir"], repo, PushSettings()).results
        if r.status != "ok":
            raise RuntimeError(f"btrsync push failed: {r.error}")
        sh(f"sync -f {places[PUSH]}")

    def floor_run(rep: int) -> None:
        # --reflink=never: on btrfs cp would share the extents and move nothing
        sh(f"cp -r --reflink=never {shared['btrsync_target']} {places[FLOOR]} && sync -f {places[FLOOR]}")

    alternate(res, [Contender("btrsync copy", copy_run, before=fresh("btrsync copy")),
                    Contender(PUSH, push_run, before=fresh(PUSH)),
                    Contender(FLOOR, floor_run, before=fresh(FLOOR))],
              cfg.reps, drop=cfg.drop_caches, log=log)
    res.metrics["time_ratio_vs_push"] = res.ratio(PUSH)
    res.metrics["time_ratio_vs_io_floor"] = res.ratio(FLOOR)
    res.bars.append(Bar("copy time / push time", res.ratio(PUSH), 1.0, "<=", "x",
                        "a copy checks and re-seals every chunk: about a push's cost, without btrfs send"))
    return res
