"""Benchmark 2: incremental push after a small change to a large tree of small files.

A tree of ``inc_files`` small text files is snapshotted (A) and backed up by every tool, untimed;
then a typical day's change is made (0.2 % rewritten, 0.2 % appended, 100 added, 50 deleted, 20
renamed) and snapshotted (B).  Timed, page cache dropped before each run:

* btrsync ``push()`` of B onto a target holding A's full (a reflink copy of that target per run);
* ``btrfs send -p A B > /dev/null`` (the physical limit);
* the btrbk-style pipeline ``btrfs send -p A B | zstd -3 -T0 | openssl enc ...`` into a file;
* ``restic backup`` of B onto a repository holding A (a reflink copy per run, with A's cache).
  restic sees both snapshots through a bind mount at one fixed path, so it picks A's snapshot as
  the parent and skips unchanged files by metadata, as it does in daily use.

MiB/s in the chart is the size of the tree divided by the time taken to bring the backup up to
date (an "effective" rate: how much data one run protects per second).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.bench_push import send_flags
from benchmarks.common import (
    BenchResult,
    Config,
    Contender,
    Workspace,
    alternate,
    make_small_tree,
    reflink_copy,
    remove_tree,
    repo_at,
    run,
    sh,
    small_change,
    subvol_create,
    tree_bytes,
)
from btrsync.crypto.keys import load_key_file
from btrsync.ops.push.run import push
from btrsync.ops.push.settings import PushSettings
from btrsync.snapshots.store import create_snapshot

PIPELINE = "send -p | zstd -3 -T0 | openssl"
RAW = "btrfs send -p > /dev/null"
RESTIC = "restic backup (2nd, incremental)"


def restic_available() -> bool:
    return shutil.which("restic") is not None


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    res = BenchResult("incremental", f"Incremental push after a small change ({cfg.inc_files:,} files)",
                      work_label="tree bytes")
    key = load_key_file(ws.key_file)
    settings = PushSettings()
    out = ws.dst / "inc"
    out.mkdir()
    log(f"  incremental: writing {cfg.inc_files:,} small files")
    subvol = subvol_create(ws.src / "tree")
    res.metrics["tree"] = make_small_tree(subvol, cfg.inc_files)
    snapdir = ws.src / ".snapshots-tree"
    snapdir.mkdir()
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    snap_a = create_snapshot(subvol, snapdir, t0)

    # untimed: the full backups every tool starts from
    base = out / "btrsync-base"
    base.mkdir()
    (full,) = push(subvol, snapdir, repo_at(base, key), settings).results
    res.check("btrsync full of A", full.status == "ok" and full.kind == "full", str(full.error or ""))
    use_restic = restic_available()
    mnt = ws.base / "restic-src"  # one fixed path for both snapshots (restic finds its parent by path)
    mnt.mkdir()
    env = {**os.environ, "RESTIC_PASSWORD_FILE": str(ws.pass_file)}
    if use_restic:
        log("  incremental: restic init + first backup (untimed)")
        run(["restic", "-r", str(out / "restic-base"), "--cache-dir", str(ws.base / "restic-cache-base"),
             "init"], env=env)
        run(["mount", "--bind", str(snap_a.path), str(mnt)])
        try:
            first = _restic_backup(out / "restic-base", ws.base / "restic-cache-base", mnt, env)
        finally:
            run(["umount", str(mnt)])
        res.metrics["restic_first_backup"] = first
    else:
        res.notes.append("restic is not installed (apt-get install -y restic): its row is missing")

    res.metrics["change"] = small_change(subvol, cfg.inc_files)
    snap_b = create_snapshot(subvol, snapdir, t0 + timedelta(hours=1))
    res.work_bytes, files = tree_bytes(snap_b.path)
    res.metrics["tree_bytes"], res.metrics["tree_files"] = res.work_bytes, files

    # -- btrsync
    def bs_dir(rep: int) -> Path:
        return out / f"btrsync-{rep}"

    def bs_run(rep: int) -> dict[str, Any]:
        result = push(subvol, snapdir, repo_at(bs_dir(rep), key), settings)
        (r,) = result.results
        if r.status != "ok" or r.kind != "incremental":
            raise RuntimeError(f"btrsync incremental push: {r.kind} {r.status} {r.error}")
        return {"stream_bytes": r.stream_bytes, "stored_bytes": r.stored_bytes}

    # -- pipeline and raw send
    pipe_file = out / "pipeline.btrfs.zst.enc"

    def pipe_run(rep: int) -> dict[str, Any]:
        sh(f"btrfs send -q {send_flags()} -p {snap_a.path} {snap_b.path} | zstd -3 -T0 -q -c | "
           f"openssl enc -aes-256-ctr -pass file:{ws.pass_file} -pbkdf2 > {pipe_file} && sync {pipe_file}")
        return {"stored_bytes": pipe_file.stat().st_size}

    def raw_run(rep: int) -> None:
        sh(f"btrfs send -q {send_flags()} -p {snap_a.path} {snap_b.path} > /dev/null")

    contenders = [
        Contender("btrsync", bs_run, before=lambda rep: reflink_copy(base, bs_dir(rep)),
                  after=lambda rep: remove_tree(bs_dir(rep))),
        Contender(RAW, raw_run),
        Contender(PIPELINE, pipe_run, after=lambda rep: pipe_file.unlink()),
    ]

    # -- restic
    if use_restic:
        def rs_paths(rep: int) -> tuple[Path, Path]:
            return out / f"restic-{rep}", ws.base / f"restic-cache-{rep}"

        def rs_before(rep: int) -> None:
            repo, cache = rs_paths(rep)
            reflink_copy(out / "restic-base", repo)
            run(["cp", "-a", str(ws.base / "restic-cache-base"), str(cache)])
            run(["mount", "--bind", str(snap_b.path), str(mnt)])

        def rs_run(rep: int) -> dict[str, Any]:
            return _restic_backup(*rs_paths(rep), mnt, env)

        def rs_after(rep: int) -> None:
            subprocess.run(["umount", str(mnt)], check=False)
            for p in rs_paths(rep):
                remove_tree(p)

        contenders.append(Contender(RESTIC, rs_run, before=rs_before, after=rs_after))

    try:
        alternate(res, contenders, cfg.reps, drop=cfg.drop_caches, log=log)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)

    bs = res.runs["btrsync"][-1]
    res.metrics["btrsync_stream_bytes"] = bs["stream_bytes"]
    res.metrics["btrsync_stored_bytes"] = bs["stored_bytes"]
    res.check("btrsync's incremental stream is small", bs["stream_bytes"] < res.work_bytes / 5,
              f"{bs['stream_bytes']} stream bytes for a {res.work_bytes} byte tree")
    if use_restic:
        rs = res.runs[RESTIC][-1]
        res.check("restic used A as parent (most files unmodified)",
                  rs.get("files_unmodified", 0) >= 0.9 * files,
                  f"new {rs.get('files_new')} changed {rs.get('files_changed')} "
                  f"unmodified {rs.get('files_unmodified')} of {files}")
        res.metrics["time_ratio_vs_restic"] = res.ratio(RESTIC)
    res.metrics["time_ratio_vs_pipeline"] = res.ratio(PIPELINE)
    return res


def _restic_backup(repo: Path, cache: Path, path: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = run(["restic", "-r", str(repo), "--cache-dir", str(cache), "backup", "--json",
                "--host", "bench", str(path)], env=env)
    summary: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("message_type") == "summary":
            summary = msg
    keys = ("files_new", "files_changed", "files_unmodified", "data_added", "total_duration")
    return {k: summary.get(k) for k in keys}
