"""Benchmark 16: a small daily incremental to a distant store, and the restore of the chain.

A day's incremental of a small tree is a few hundred KiB: to B2 or S3 on another continent its time
is round trips, not bytes.  SeaweedFS on loopback behind the B2-rules proxy
(``tests/support/b2proxy.py``), which holds every request ``LATENCY`` seconds (50 ms: about a round
trip from Europe to B2's us-west region), alternated, each run sending the day's new snapshot:

* ``btrsync push --to distant`` (the CLI, a whole process: start-up, planning on the catalog, the
  lease, send, the checks before the commit, the commit, the lease's release);
* ``btrfs send -p PREV NEW | zstd -3 -T0 | openssl enc | boto3 upload_fileobj`` through the same
  proxy (``benchmarks/s3pipe.py --b2``): one object a day and nothing else (no catalog, no lease,
  no check before a commit, nothing that can tell later whether the chain is whole).

Then the worst day, through the same proxy: the whole chain (the full and every day since) restored
into an empty directory of a btrfs, ``btrsync receive latest`` against the pipeline's objects
downloaded and applied one after another (``s3pipe down | openssl -d | zstd -d | btrfs receive``),
each ending with ``sync -f DIR``.

Recorded per run: wall time, the requests the proxy saw, and the round trips the run waited for in
turn (requests that arrived while no other request was in flight).  Page cache kept: the day's
change is in memory on a real host too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import bench_push
from benchmarks.bench_s3 import BUCKET, PhasedResult, seaweed_at, seaweed_missing
from benchmarks.common import (
    BenchResult,
    Config,
    Contender,
    Workspace,
    alternate,
    cli_argv,
    make_small_tree,
    run,
    sh,
    subvol_create,
)

LATENCY = 0.05  # seconds the proxy holds each request
PIPE = "push: send -p | zstd | openssl | boto3 upload"
RESTORE_PIPE = "restore: boto3 download | openssl -d | zstd -d | receive, each day"
FILES = {"quick": 1000, "full": 5000}


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = PhasedResult("distant", f"A small daily incremental over S3 at {LATENCY * 1000:.0f} ms a request, "
                       "and the chain's restore", work_label="incremental stream bytes")
    if (missing := seaweed_missing()) is not None:
        res.notes.append(missing)
        return res
    from tests.support.b2proxy import B2RulesProxy

    # a versioned bucket, as B2's always are: a lease's release deletes versions there
    with seaweed_at(ws.dst / "seaweedfs-distant", versioned=True) as server, B2RulesProxy(server.ports["s3"]) as proxy:
        _run(res, ws, cfg, log, server, proxy)
    return res


def _run(res: BenchResult, ws: Workspace, cfg: Config, log: Callable[[str], None], server: Any,
         proxy: Any) -> None:
    creds = server.account.write_credentials_file(ws.base / "s3-distant-credentials.ini", style="aws")
    conf = ws.base / "bench-distant.toml"
    conf.write_text(f'key_file = "{ws.key_file}"\nstate_dir = "{ws.base / "state-distant"}"\n\n'
                    f'[targets.distant]\nurl = "s3://{BUCKET}/daily"\nendpoint = "{proxy.endpoint}"\n'
                    f'credentials_file = "{creds}"\n')
    cli = [*cli_argv(), "--config", str(conf)]
    files = FILES[cfg.mode]
    log(f"  distant: a tree of {files:,} small files, its full sent by both (untimed)")
    subvol = subvol_create(ws.src / "daily")
    res.metrics["tree"] = make_small_tree(subvol, files)
    snapdir, pipedir = ws.src / ".snapshots-daily", ws.src / ".snapshots-daily-pipe"
    snapdir.mkdir()
    pipedir.mkdir()
    day0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    days = [0]
    upload = (f"zstd -3 -T0 -q -c | openssl enc -aes-256-ctr -pass file:{ws.pass_file} -pbkdf2 | "
              f"{sys.executable} -m benchmarks.s3pipe --b2 up {proxy.endpoint} {creds} {BUCKET}")
    send = f"btrfs send -q {bench_push.send_flags()}"

    def new_day() -> int:
        days[0] += 1
        n = days[0]
        (subvol / f"day-{n:03d}.txt").write_bytes(os.urandom(16 << 10))
        (subvol / "journal.log").open("a").write(f"day {n}\n" * 200)
        return n

    def btrsync_snapshot(n: int) -> None:
        run([*cli, "snapshot", "create", str(subvol), "--snapshot-dir", str(snapdir),
             "--timestamp", (day0 + timedelta(days=n)).isoformat()])

    def pipe_snapshot(n: int) -> Path:
        path = pipedir / f"day-{n:03d}"
        run(["btrfs", "subvolume", "snapshot", "-r", str(subvol), str(path)])
        return path

    run([*cli, "init", "--to", "distant"])
    btrsync_snapshot(0)
    run([*cli, "push", str(subvol), "--snapshot-dir", str(snapdir), "--to", "distant"])
    pipe_snapshot(0)
    sh(f"{send} {pipedir / 'day-000'} | {upload} pipe/day-000")
    pipe_prev = [pipedir / "day-000"]
    pipe_next: list[Path] = []

    def counted(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        proxy.reset()
        proxy.latency = LATENCY
        try:
            out = fn()
        finally:
            proxy.latency = 0.0
        alone = sum(1 for _seen, others in proxy.alongside if not others)
        return {**out, "requests": len(proxy.seen), "round_trips": alone, "refused": list(proxy.rejected)}

    def bs_before(rep: int) -> None:
        btrsync_snapshot(new_day())

    def bs_run(rep: int) -> dict[str, Any]:
        def push() -> dict[str, Any]:
            done = run([*cli, "push", str(subvol), "--snapshot-dir", str(snapdir), "--to", "distant", "--json"])
            (backup,) = json.loads(done.stdout)["backups"]
            if backup["kind"] != "incremental":
                raise RuntimeError(f"btrsync sent a {backup['kind']}, not an incremental")
            return {"stream_bytes": backup["stream_bytes"]}
        return counted(push)

    def pipe_before(rep: int) -> None:
        pipe_next[:] = [pipe_snapshot(new_day())]

    def pipe_run(rep: int) -> dict[str, Any]:
        prev, new = pipe_prev[0], pipe_next[0]

        def upload_day() -> dict[str, Any]:
            sh(f"{send} -p {prev} {new} | {upload} pipe/{new.name}")
            return {}
        out = counted(upload_day)
        pipe_prev[:] = [new]
        return out

    contenders = [Contender("push: btrsync", bs_run, before=bs_before),
                  Contender(PIPE, pipe_run, before=pipe_before)]
    alternate(res, contenders, cfg.reps, drop=False, log=log)
    res.work_bytes = int(res.median("push: btrsync", "stream_bytes") or 0)

    # -- the worst day: the whole chain back, into an empty place
    into = ws.rst / "distant"
    into.mkdir()
    days = sorted(p.name for p in pipedir.iterdir())
    download = (f"{sys.executable} -m benchmarks.s3pipe --b2 down {proxy.endpoint} {creds} {BUCKET}")
    decode = f"openssl enc -d -aes-256-ctr -pass file:{ws.pass_file} -pbkdf2 | zstd -d -q -c"

    def empty_into(rep: int) -> None:
        for sub in sorted(into.iterdir()):
            run(["btrfs", "subvolume", "delete", str(sub)])

    def bs_restore(rep: int) -> dict[str, Any]:
        def receive() -> dict[str, Any]:
            run([*cli, "receive", "latest", "--from", "distant", "--into", str(into)])
            run(["sync", "-f", str(into)])
            return {}
        return counted(receive)

    def pipe_restore(rep: int) -> dict[str, Any]:
        def receive_each_day() -> dict[str, Any]:
            for day in days:
                sh(f"{download} pipe/{day} | {decode} | btrfs receive -q {into}")
            run(["sync", "-f", str(into)])
            return {}
        return counted(receive_each_day)

    log(f"  distant: restoring the chain of {len(days)} backups")
    alternate(res, [Contender("restore: btrsync", bs_restore, before=empty_into),
                    Contender(RESTORE_PIPE, pipe_restore, before=empty_into)], cfg.reps, drop=False, log=log)
    res.metrics["latency_s"] = LATENCY
    res.metrics["chain_links"] = len(days)
    for tool in ("push: btrsync", PIPE, "restore: btrsync", RESTORE_PIPE):
        res.metrics[f"{tool}: requests"] = res.median(tool, "requests")
        res.metrics[f"{tool}: round trips"] = res.median(tool, "round_trips")
    refused = [r for tool in res.runs.values() for rec in tool for r in rec.get("refused", [])]
    res.check("the B2-rules proxy refused nothing", not refused, "; ".join(refused[:3]))
