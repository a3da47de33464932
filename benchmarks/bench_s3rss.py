"""Benchmark 12: peak RSS of ``btrsync push --to s3://`` against the stream size (full mode only).

Issue 14 wants the S3 push under 300 MB of peak RSS at *any* stream size: parts in flight are
bounded by one budget (``btrsync/targets/s3/uploads.py``), so the peak must not grow with the stream.
For each size in ``STREAMS`` a subvolume holding one file of incompressible bytes (AES-CTR
keystream: the stream is as large as the file, every chunk goes to S3 uncompressed, which puts
the most bytes per second through the part budget) is snapshotted and pushed with the CLI to
SeaweedFS on 127.0.0.1 (``tests/support/s3server.py``, data on the target loopback filesystem);
peak RSS is the CLI process's own ``VmHWM``, polled as in benchmark 4.  The largest stream is then
received back and its file compared with the original (xxh3-128), and the receive's peak recorded.

Quick mode (CI) skips it: the point is a stream well over 1 GiB, which takes minutes here.  Run
``python -m benchmarks.run --only s3rss``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.bench_memory import run_sampled
from benchmarks.bench_s3 import seaweed_at, seaweed_missing
from benchmarks.common import (
    Bar,
    BenchResult,
    Config,
    GiB,
    MiB,
    Workspace,
    cli_argv,
    drop_caches,
    file_xxh3,
    run,
    subvol_create,
    subvol_delete,
    write_random_file,
)
from btrsync.snapshots.store import create_snapshot

BUCKET = "bench-rss"
STREAMS = (512 * MiB, 2 * GiB)
LIMIT_MB = 300


def _label(size: int) -> str:
    return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("s3rss", "Peak RSS of an S3 push against the stream size (SeaweedFS)")
    if cfg.mode == "quick":
        res.notes.append("full mode only (streams of 512 MiB and 2 GiB): skipped in quick mode")
        return res
    if (missing := seaweed_missing()) is not None:
        res.notes.append(missing)
        return res
    with seaweed_at(ws.dst / "seaweedfs-rss", BUCKET) as server:
        _run(res, ws, log, server)
    return res


def _run(res: BenchResult, ws: Workspace, log: Callable[[str], None], server: Any) -> None:
    acct = server.account
    creds = acct.write_credentials_file(ws.base / "s3rss-credentials.ini", style="aws")
    rows: list[dict[str, Any]] = []
    for size in STREAMS:
        label, tag = _label(size), f"rss-{size >> 20}M"
        conf = ws.base / f"bench-{tag}.toml"
        conf.write_text(f'key_file = "{ws.key_file}"\nstate_dir = "{ws.base / ("state-" + tag)}"\n\n'
                        f'[targets.s3]\nurl = "s3://{BUCKET}/{tag}"\nendpoint = "{acct.endpoint}"\n'
                        f'credentials_file = "{creds}"\n')
        cli = [*cli_argv(), "--config", str(conf)]
        log(f"  s3rss: {label} stream: writing incompressible data")
        subvol = subvol_create(ws.src / tag)
        digest = write_random_file(subvol / "random.bin", size)
        snapdir = ws.src / f".snapshots-{tag}"
        snapdir.mkdir()
        snap = create_snapshot(subvol, snapdir)
        run([*cli, "init", "--to", "s3"])
        drop_caches()
        pushed = run_sampled([*cli, "push", str(subvol), "--snapshot-dir", str(snapdir), "--to", "s3", "--json"])
        (backup,) = pushed.pop("output")["backups"]
        log(f"  s3rss: push {label}: peak RSS {pushed['vm_hwm_bytes'] / MiB:.1f} MiB, {pushed['seconds']:.1f} s")
        rows.append({"op": "push", "label": label, "stream_bytes": backup["stream_bytes"], **pushed})
        res.runs.setdefault(f"push {label}", []).append(dict(pushed))  # no MiB/s: sizes differ
        if size == STREAMS[-1]:
            into = ws.rst / tag
            into.mkdir()
            drop_caches()
            received = run_sampled([*cli, "receive", "latest", "--from", "s3", "--into", str(into), "--json"])
            received.pop("output")
            log(f"  s3rss: receive {label}: peak RSS {received['vm_hwm_bytes'] / MiB:.1f} MiB, "
                f"{received['seconds']:.1f} s")
            rows.append({"op": "receive", "label": label, "stream_bytes": backup["stream_bytes"], **received})
            res.check(f"{label} over S3: restored file is byte-identical",
                      file_xxh3(into / snap.path.name / "random.bin") == digest)
            subvol_delete(into / snap.path.name)
        subvol_delete(snap.path)
        subvol_delete(subvol)
    res.metrics["rows"] = rows
    pushes = [r for r in rows if r["op"] == "push"]
    growth = pushes[-1]["vm_hwm_bytes"] - pushes[0]["vm_hwm_bytes"]
    res.metrics["push_growth_bytes"] = growth
    res.bars.append(Bar("S3 push peak RSS (any stream size)", max(r["vm_hwm_bytes"] for r in pushes) / 1e6,
                        LIMIT_MB, "<=", "MB", f"{pushes[0]['label']} -> {pushes[-1]['label']}: "
                        f"{growth / MiB:+.1f} MiB"))
    res.notes.append("peak RSS (VmHWM of the CLI):\n" + "\n".join(
        f"  {r['op']:<7} {r['label']:>8}: {r['vm_hwm_bytes'] / MiB:6.1f} MiB ({r['vm_hwm_bytes'] / 1e6:5.1f} MB), "
        f"{r['seconds']:6.1f} s" for r in rows))
