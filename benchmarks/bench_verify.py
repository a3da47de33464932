"""Benchmark 9: verification throughput on the data of benchmark 1, against restic.

* ``btrsync verify --level data`` (in-process ``verify()``): every chunk read back, xxh3 of the
  frame, AES-GCM tag, zstd -d, size and xxh3 of the raw bytes;
* ``btrsync verify --level stream``: the same, plus the send stream through the parser;
* ``restic check --read-data`` of a restic repository of the same snapshot (made untimed).

The page cache is dropped before each run. Ratios are of wall time for the same source data.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from benchmarks import bench_restore
from benchmarks.common import BenchResult, Config, Contender, Workspace, alternate, run
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.ops.verify import Options, verify
from btrsync.targets.local import LocalTarget

RESTIC = "restic check --read-data"
STREAM = "btrsync verify --level stream"


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("verify", "Verification of the full backup (read back and check)",
                      work_label="send stream bytes")
    shared = bench_restore._ensure_backups(ws, cfg, log)
    repo = Repository.open(LocalTarget(shared["btrsync_target"]), load_key_file(ws.key_file))
    (manifest,) = repo.manifests()
    res.work_bytes = manifest.stream_bytes

    def level(name: str) -> Callable[[int], None]:
        def go(rep: int) -> None:
            report = verify(repo, None, Options(level=name))
            if not report.ok or report.bytes_read != manifest.stored_bytes:
                raise RuntimeError(f"verify --level {name}: {report.summary()}")
        return go

    contenders = [Contender("btrsync", level("data")), Contender(STREAM, level("stream"))]
    if shutil.which("restic"):
        env = {**os.environ, "RESTIC_PASSWORD_FILE": str(ws.pass_file)}
        restic_repo, cache = shared["out"] / "restic-verify", ws.base / "restic-cache-verify"
        log("  verify: restic init + backup of the snapshot (untimed)")
        run(["restic", "-r", str(restic_repo), "--cache-dir", str(cache), "init"], env=env)
        run(["restic", "-r", str(restic_repo), "--cache-dir", str(cache), "backup", "--host", "bench",
             str(shared["snapshot"])], env=env)
        contenders.append(Contender(RESTIC, lambda rep: run(
            ["restic", "-r", str(restic_repo), "--cache-dir", str(cache), "check", "--read-data"], env=env)
            and None))
    else:
        res.notes.append("restic is not installed (apt-get install -y restic): its row is missing")
    alternate(res, contenders, cfg.reps, drop=cfg.drop_caches, log=log)
    if shutil.which("restic"):
        res.metrics["time_ratio_vs_restic_check"] = res.ratio(RESTIC)
    res.metrics["stream_vs_data"] = res.ratio(STREAM)
    return res
