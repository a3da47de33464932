"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--out benchmarks/results]``.

Needs root (loopback btrfs, ``btrfs send/receive``, dropping caches), btrfs-progs, zstd and
openssl; btrbk and restic are compared when installed.  Exit status: 0 when every benchmark ran
and every correctness check passed, 1 otherwise (never because of speed), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_catalog,
    bench_copy,
    bench_distant,
    bench_files,
    bench_incremental,
    bench_memory,
    bench_mount,
    bench_parser,
    bench_push,
    bench_restore,
    bench_s3,
    bench_s3rss,
    bench_scale,
    bench_storage,
    bench_throttle,
    bench_verify,
    report,
    run_guard,
)
from benchmarks.common import (
    REPO,
    BenchResult,
    Config,
    GiB,
    full_config,
    leftover_loops,
    leftover_mounts,
    machine_info,
    quick_config,
    workspace,
)

# execution order (restore reuses push's backups); the report follows the numbering of README
BENCHMARKS = {
    "push": (1, bench_push, "Full push of a dataset to a directory target"),
    "restore": (3, bench_restore, "Restore of the full backup into btrfs"),
    "incremental": (2, bench_incremental, "Incremental push after a small change"),
    "memory": (4, bench_memory, "Peak RSS of push and receive against the stream size"),
    "scale": (5, bench_scale, "Planning and prune decisions for 100,000 backups"),
    "throttle": (6, bench_throttle, "Throttle accuracy"),
    "parser": (7, bench_parser, "Send-stream parser throughput (parse + CRC32C, one core)"),
    "catalog": (8, bench_catalog, "Catalog at scale: commit, list, table, plan, prune (directory, S3)"),
    "verify": (9, bench_verify, "Verification throughput against restic check --read-data"),
    "files": (10, bench_files, "File index: ls of 100,000 files, one file out of a 1 GiB backup"),
    "s3": (11, bench_s3, "Push and restore over S3 (SeaweedFS on loopback), peak RSS"),
    "s3rss": (12, bench_s3rss, "Peak RSS of an S3 push against the stream size (full mode only)"),
    "copy": (15, bench_copy, "btrsync copy of the full backup into a repository of another key"),
    "mount": (14, bench_mount, "btrsync mount: first byte deep in a large tree, bytes read for one file"),
    "distant": (16, bench_distant, "A small daily incremental over S3 with 50 ms a request: btrsync against one upload"),
    "storage": (13, bench_storage, "Storage over 120+ dated days under one GFS policy: tree, linear, btrfs2s3, restic"),
}
NEEDS_DISK = {"quick": 3 * GiB, "full": 24 * GiB}
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data, 1-2 repetitions (CI; < 2 min)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                   help="results directory [default: benchmarks/results]")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    p.add_argument("--reps", type=int, help="repetitions per contender [quick 2, full 3]")
    p.add_argument("--profile", action="store_true",
                   help="also record one btrsync push and restore with py-spy (profile-*.txt/svg)")
    p.add_argument("--no-sweep", action="store_true", help="skip the PushSettings sweep (full mode)")
    p.add_argument("--no-drop-caches", action="store_true", help="keep the page cache between runs")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                   help="where the sparse loopback images go (a disk, not tmpfs) [default: /var/tmp]")
    p.add_argument("--keep", action="store_true", help="keep the (unmounted) work directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks need root (loop devices, btrfs send/receive, drop_caches)", file=sys.stderr)
        return 2
    missing = [t for t in ("btrfs", "mkfs.btrfs", "losetup", "zstd", "openssl") if not shutil.which(t)]
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install -y btrfs-progs zstd openssl)",
              file=sys.stderr)
        return 2
    only = list(BENCHMARKS) if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    over = {"out": args.out.resolve(), "workdir": args.workdir, "keep": args.keep,
            "profile": args.profile, "drop_caches": not args.no_drop_caches}
    if args.reps:
        over["reps"] = args.reps
    cfg: Config = quick_config(**over) if args.quick else full_config(**over)
    if args.no_sweep:
        cfg = dataclasses.replace(cfg, sweep=False)
    free = shutil.disk_usage(cfg.workdir).free
    if free < NEEDS_DISK[cfg.mode]:
        print(f"{cfg.workdir} has {free / GiB:.1f} GiB free; the {cfg.mode} run needs "
              f"{NEEDS_DISK[cfg.mode] / GiB:.0f} GiB (use --workdir)", file=sys.stderr)
        return 2

    meta: dict[str, Any] = {"mode": cfg.mode, "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(), "git": _git_head(), "drop_caches": cfg.drop_caches,
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}}
    log(f"{cfg.mode} run: {', '.join(only)}; {cfg.reps} repetitions; results in {cfg.out}")
    results: list[BenchResult] = []
    problems: list[str] = []
    base: str | None = None
    try:
        with workspace(cfg) as ws:
            base = f"{ws.base}/"  # only our own loop devices and mounts are checked afterwards
            log(f"workspace {ws.base}: src {ws.src}, dst {ws.dst}, rst {ws.rst}")
            for key in [k for k in BENCHMARKS if k in only]:
                results.append(_run_one(key, ws, cfg))
    except Exception:  # noqa: BLE001 - a broken workspace is reported, not raised
        problems.append(f"workspace: {traceback.format_exc()}")
    if base:
        leftovers = leftover_loops(base) + leftover_mounts(base)
        if leftovers:
            problems.append(f"loop devices or mounts left behind: {leftovers}")
        else:
            log(f"cleanup verified: no loop device or mount under {base} is left")
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["seconds"] = round(time.monotonic() - T0, 1)
    meta["loadavg_end"] = os.getloadavg()
    meta["problems"] = problems

    results.sort(key=lambda r: BENCHMARKS.get(r.key, (99,))[0])
    doc = report.to_json(results, meta)
    cfg.out.mkdir(parents=True, exist_ok=True)
    report.write_json(doc, cfg.out / "latest.json")
    report.write_json(doc, cfg.out / f"{cfg.mode}.json")
    png = report.write_png(results, meta, cfg.out / "throughput.png")
    if png:
        shutil.copyfile(cfg.out / "throughput.png", cfg.out / f"throughput-{cfg.mode}.png")
    print(report.render(results, meta))
    bars = doc["bars"]
    if bars:
        print("\nperformance bars (informational, never the exit status):")
        for b in bars:
            verdict = {True: "MET", False: "MISSED", None: "n/a"}[b["met"]]
            value = "-" if b["value"] is None else f"{b['value']:.3f}"
            print(f"  {verdict:<6} {b['benchmark']}: {b['name']} = {value} {b['unit']} "
                  f"(need {b['op']} {b['limit']:g})")
    for warning in run_guard.warnings(results, cfg.mode):  # never the exit status
        print(f"\nWARNING (CPU regression guard): {warning}")
    print(f"\nresults: {cfg.out / 'latest.json'}" + (f", {cfg.out / 'throughput.png'}" if png else
                                                     " (no chart: pip install matplotlib)"))
    failed = doc["failed_checks"] + [f"{k} crashed" for k in doc["crashed"]] + problems
    for f in failed:
        print(f"FAILED: {f.splitlines()[0] if f else f}", file=sys.stderr)
    log(f"done in {meta['seconds']:.0f} s: {'FAILED' if failed else 'ok'}")
    return 1 if failed else 0


def _run_one(key: str, ws, cfg: Config) -> BenchResult:  # noqa: ANN001
    _, module, title = BENCHMARKS[key]
    log(f"{key}: start")
    t0 = time.monotonic()
    try:
        res = module.run_bench(ws, cfg, log)
    except Exception as exc:  # noqa: BLE001 - one crash must not hide the other benchmarks
        res = BenchResult(key, title, error=f"{type(exc).__name__}: {exc}")
        res.notes.append(traceback.format_exc())
        log(f"{key}: CRASHED: {type(exc).__name__}: {exc}")
    res.seconds = time.monotonic() - t0
    log(f"{key}: done in {res.seconds:.1f} s")
    return res


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
