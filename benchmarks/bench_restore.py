"""Benchmark 3: restore of the full backup of benchmark 1 into a (third) loopback btrfs.

* btrsync ``receive(repo, "latest", DIR)`` (in-process, default workers): ranged reads, xxh3 of
  the frame, AES-256-GCM open, zstd -d, size + xxh3 of the raw chunk, into ``btrfs receive``;
* the pipeline's inverse: ``cat FILE | openssl enc -d ... | zstd -d | btrfs receive DIR``;
* the I/O floor: ``cat RAW | btrfs receive DIR`` of the raw send stream (benchmark 1's floor file).

Both end with ``sync -f DIR`` inside the timed region (the restored data is on disk).  The page
cache is dropped before each run; the received subvolume is deleted (and btrfs's cleaner waited
for) after each.  The first restore of each tool is compared with the original snapshot, file by
file (content, metadata, xattrs, links): a difference fails the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import bench_push, pyspy
from benchmarks.common import (
    Bar,
    BenchResult,
    Config,
    Contender,
    Workspace,
    alternate,
    drop_caches,
    measure,
    repo_at,
    sh,
    subvol_delete,
)
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.ops.push.run import push
from btrsync.ops.push.settings import PushSettings
from btrsync.ops.receive import receive
from btrsync.verify.treecompare import diff_trees
from btrsync.targets.local import LocalTarget

PIPELINE = "cat | openssl -d | zstd -d | btrfs receive"
FLOOR = "cat raw | btrfs receive (I/O floor)"


def _ensure_backups(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Benchmark 1's last outputs, or (when it was not run) one untimed backup of each kind."""
    shared = bench_push.setup(ws, cfg, log)
    if "btrsync_target" not in shared:
        target = shared["out"] / "btrsync-restore"
        target.mkdir()
        (r,) = push(shared["subvol"], shared["snapdir"], repo_at(target, load_key_file(ws.key_file)),
                    PushSettings()).results
        if r.status != "ok":
            raise RuntimeError(f"btrsync push failed: {r.error}")
        shared["btrsync_target"] = target
    raw_stream_file(shared)
    if "pipeline_file" not in shared:
        f = shared["out"] / "pipeline-restore.btrfs.zst.enc"
        sh(bench_push.pipeline_cmd(ws, shared["snapshot"], f))
        shared["pipeline_file"] = f
    return shared


def raw_stream_file(shared: dict[str, Any]) -> Path:
    """The snapshot's raw send stream on the target filesystem (the floor restores read it)."""
    if "raw_file" not in shared:
        f = shared["out"] / "raw-restore.btrfs"
        sh(f"btrfs send -q {bench_push.send_flags()} {shared['snapshot']} > {f}")
        shared["raw_file"] = f
    return Path(shared["raw_file"])


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("restore", "Restore of the full backup into btrfs", work_label="send stream bytes")
    shared = _ensure_backups(ws, cfg, log)
    key = load_key_file(ws.key_file)
    snapshot: Path = shared["snapshot"]
    repo = Repository.open(LocalTarget(shared["btrsync_target"]), key)
    (manifest,) = repo.manifests()
    res.work_bytes = manifest.stream_bytes
    workers = receive.__kwdefaults__.get("workers", 2) if receive.__kwdefaults__ else 2
    res.metrics["workers"] = workers
    into = {"btrsync": ws.rst / "btrsync", PIPELINE: ws.rst / "pipeline", FLOOR: ws.rst / "floor"}
    for d in into.values():
        d.mkdir()
    compared: set[str] = set()

    def verify(tool: str) -> None:
        if tool in compared:
            return
        compared.add(tool)
        diffs = diff_trees(snapshot, into[tool] / snapshot.name)
        res.check(f"{tool}: restored tree equals the snapshot", not diffs, "; ".join(diffs[:5]))

    def bs_run(rep: int) -> None:
        result = receive(repo, "latest", into["btrsync"])
        if [lk.action for lk in result.links] != ["received"]:
            raise RuntimeError(f"btrsync receive: {result.links}")
        sh(f"sync -f {into['btrsync']}")

    def pipe_run(rep: int) -> None:
        sh(f"cat {shared['pipeline_file']} | openssl enc -d -aes-256-ctr -pass file:{ws.pass_file} "
           f"-pbkdf2 | zstd -d -q -c | btrfs receive -q {into[PIPELINE]} && sync -f {into[PIPELINE]}")

    def floor_run(rep: int) -> None:
        sh(f"cat {shared['raw_file']} | btrfs receive -q {into[FLOOR]} && sync -f {into[FLOOR]}")

    def after(tool: str) -> Callable[[int], None]:
        def clean(rep: int) -> None:
            verify(tool)
            subvol_delete(into[tool] / snapshot.name)
        return clean

    alternate(res, [Contender("btrsync", bs_run, after=after("btrsync")),
                    Contender(PIPELINE, pipe_run, after=after(PIPELINE)),
                    Contender(FLOOR, floor_run, after=after(FLOOR))],
              cfg.reps, drop=cfg.drop_caches, log=log)
    res.metrics["time_ratio_vs_pipeline"] = res.ratio(PIPELINE)
    res.bars.append(Bar("restore time / pipeline time", res.ratio(PIPELINE), 1.0, "<=", "x"))
    res.bars.append(Bar("restore time / pipeline time (issue 14)", res.ratio(PIPELINE), 0.85, "<=", "x", "aim"))
    res.metrics["time_ratio_vs_io_floor"] = res.ratio(FLOOR)
    res.bars.append(Bar("restore time / I/O floor time (issue 14)", res.ratio(FLOOR), 1.1, "<=", "x", "aim"))
    if cfg.profile:
        drop_caches()
        with pyspy.recording(cfg.out / "profile-restore.txt", fmt="raw") as ok:
            rec = measure(lambda: bs_run(-1) if ok else None)
        subvol_delete(into["btrsync"] / snapshot.name)
        res.metrics["profile"] = {"run": rec, "threads": pyspy.summarise(cfg.out / "profile-restore.txt"),
                                  "files": ["profile-restore.txt"]}
    return res
