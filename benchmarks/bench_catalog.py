"""Benchmark 8: the catalog at scale, on a directory target and on SeaweedFS (S3 on 127.0.0.1).

Two synthetic repositories, built with the library (no btrfs, no chunk data):

* **10,000 backups** (quick: 500): format-2 manifest headers of 4 subvolumes, a snapshot every 6
  hours each, chains of a full and up to 30 incrementals (correct parent ids and uuids), realistic
  sizes, segment and chunk counts and table pins;
* **one 10 TB backup** (quick: 20,000 chunks): 2,500,000 chunk records of 4 MiB chunks in 78,125
  segment indexes of 32 records (128 MiB segments), written with ``write_index`` while a
  ``TableDigest`` accumulates, then the header is committed (segment data objects are absent:
  only the catalog is measured).

Measured, each in a child process of its own (``python -m benchmarks.catalog_child``), so
each command's peak RSS (its own ``VmHWM``, read at its end) is not hidden by another's:

* **commit** (10 TB case): the header build + seal + put after the whole chunk table was written;
  the child also reports the table writing (the per-segment index puts of a push) and its RSS;
  the commit's own peak is taken after resetting the high-water mark (``/proc/self/clear_refs``);
* **table**: ``table_records`` of the 10 TB backup, the whole chunk table a restore streams;
* **list**: what ``btrsync list`` does (open, state bind, ``catalog()`` with the catalog cache,
  state record, rows with chain status);
* **plan**: ``catalog()`` + ``ops.push.plan_for`` (local snapshots are fakes: ``list_snapshots``
  is patched, since the snapshots are not the figure);
* **prune**: ``prune_backups(..., dry_run=True)`` with a GFS policy.

Each command runs **cold** (a fresh state directory, so an empty ``CatalogCache``; the page cache
is dropped first) and then **warm** (the same state directory again).  Requests are counted by a
``Target`` wrapper (verbs: get/stat/list/put/delete, GETs split by object kind; manifest GETs are
the "new-object" GETs a warm catalog should not need) and, on S3, at the HTTP level (botocore's
``before-send`` event, per operation).  When the target's listing carries no ``ObjectInfo.version``
(the cache then cannot trust anything), ``list`` also runs with versions *simulated by the
benchmark* (``sim`` rows), as a projection of what the cache will give once the targets fill it.
Finally one new backup is committed and ``list`` runs warm again: its manifest GETs are the new
objects.  Nothing here fails on speed or request counts; checks cover only that the synthetic
catalog reads back as built.

The timed part of a command starts once its target object exists (an S3 client loading botocore's
service model is not a catalog cost) and covers ``Repository.open`` (probe, marker) and the
command.  Quick mode leaves out list/plan/prune of the one-backup catalog (the same code as for
many backups) to stay within CI's budget.  ``python -m benchmarks.bench_catalog [--quick]`` runs
this benchmark alone (it needs no loop devices).

The modules: ``catalog_synth`` (the synthetic catalog and its sizes), ``catalog_counting``
(request counting), ``catalog_child`` (one measured command), ``catalog_flow`` (build, run the
children, collect the rows), this one (the result: checks, bars, the table; running it alone).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.catalog_flow import _Flow, _s3_specs, _spec_dir, run_flow
from benchmarks.catalog_synth import CHUNK_SIZE, MAX_DEPTH, PER_SEGMENT, SIZES, SUBVOLUMES, Sizes

LIMIT_S = 5.0  # warm, per command
LIMIT_MB = 300  # peak RSS, 10^6 bytes


def render_rows(rows: list[dict[str, Any]], sizes: Sizes) -> str:
    head = ["target", "catalog", "command", "phase", "s", "peak MB", "GETs", "manifest GETs", "index GETs",
            "LISTs", "HTTP requests"]
    label = {"backups": f"{sizes.backups:,} backups", "table": f"1 backup, {sizes.chunks:,} chunks"}
    out = []
    for r in rows:
        http = r["requests"].get("http")
        out.append([r["target"], label[r["case"]], r["command"], r["phase"], f"{r['seconds']:.3f}",
                    f"{r['vm_hwm'] / 1e6:.1f}", str(r["gets"]), str(r["manifest_gets"]), str(r["index_gets"]),
                    str(r["lists"]), "-" if not http else " ".join(f"{k} {v}" for k, v in http.items())])
    widths = [max(len(x) for x in col) for col in zip(head, *out, strict=True)]
    fmt = lambda row: "  ".join(x.ljust(w) if i < 4 or i == 10 else x.rjust(w)  # noqa: E731
                                for i, (x, w) in enumerate(zip(row, widths, strict=True)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, out)])


def run_bench(ws: Any, cfg: Any, log: Callable[[str], None]) -> Any:
    from benchmarks.common import Bar, BenchResult, drop_caches
    from btrsync.crypto.keys import generate_key_file

    sizes = SIZES[cfg.mode]
    res = BenchResult("catalog", f"Catalog at scale: {sizes.backups:,} backups and one backup of "
                                 f"{sizes.chunks:,} chunks ({sizes.chunks * CHUNK_SIZE / 1e12:.2f} TB)")
    root = Path(ws.base) / "catalog"
    root.mkdir(parents=True, exist_ok=True)
    key_file = root / "bench.key"
    key = generate_key_file(key_file)
    drop = drop_caches if getattr(cfg, "drop_caches", True) else None
    res.metrics["sizes"] = {"backups": sizes.backups, "chunks": sizes.chunks, "chunk_size": CHUNK_SIZE,
                            "per_segment": PER_SEGMENT, "subvolumes": len(SUBVOLUMES), "max_depth": MAX_DEPTH}
    rows: list[dict[str, Any]] = []
    flows: list[tuple[str, Callable[[str], dict[str, Any]]]] = [("dir", lambda c: _spec_dir(root / f"dir-{c}"))]
    server, s3_spec, why = _s3_specs(root, log)
    if s3_spec is not None:
        flows.append(("s3", s3_spec))
    else:
        res.notes.append(f"S3 (SeaweedFS) not measured: {why}")
    try:
        for name, spec_for in flows:
            flow = _Flow(name, root / name, key_file, log, drop)
            res.metrics.setdefault("setup", {})[name] = run_flow(flow, spec_for, sizes, key, res)
            rows += flow.rows
    finally:
        if server is not None:
            server.stop()
    res.metrics["rows"] = rows
    label = {"backups": f"{sizes.backups:,} backups", "table": f"{sizes.chunks:,} chunks"}
    for r in rows:
        res.runs.setdefault(f"{r['target']} {label[r['case']]} {r['command']} {r['phase']}", []).append(
            {"seconds": r["seconds"], "cpu_seconds": r["cpu_s"]})
    _bars(res, rows, sizes, Bar)
    res.notes.append("per command (child process each; s = open + command, peak = the child's VmHWM; "
                     "'sim' = listing versions simulated by the benchmark):\n" + render_rows(rows, sizes))
    return res


def _bars(res: Any, rows: list[dict[str, Any]], sizes: Sizes, bar: Any) -> None:
    def find(target: str, case: str, command: str, phase: str) -> dict[str, Any] | None:
        return next((r for r in rows if (r["target"], r["case"], r["command"], r["phase"]) ==
                     (target, case, command, phase)), None)

    for target in dict.fromkeys(r["target"] for r in rows):
        for case, commands in (("backups", ("list", "plan", "prune")), ("table", ("table", "list", "plan", "prune"))):
            what = f"{sizes.backups:,} backups" if case == "backups" else f"{sizes.chunks:,}-chunk backup"
            for command in commands:
                r = find(target, case, command, "warm")
                if r is not None:
                    res.bars.append(bar(f"{target}, {what}: {command} warm", r["seconds"], LIMIT_S, "<=", "s"))
            r = find(target, case, "commit", "once")
            if r is not None:
                res.bars.append(bar(f"{target}, {what}: commit (header build + seal + put)", r["seconds"],
                                    LIMIT_S, "<=", "s",
                                    f"table of {r['indexes']:,} indexes written in {r['table_s']:.1f} s"))
            peak = max((r for r in rows if r["target"] == target and r["case"] == case),
                       key=lambda r: r["vm_hwm"], default=None)
            if peak is not None:
                res.bars.append(bar(f"{target}, {what}: peak RSS of any command", peak["vm_hwm"] / 1e6, LIMIT_MB,
                                    "<=", "MB", f"{peak['command']} {peak['phase']}"))
        r = find(target, "backups", "list", "warm")
        if r is not None:
            note = ("the listing carries no ObjectInfo.version, so the cache trusts nothing"
                    if r["requests"].get("listed with version", 0) == 0 else "")
            res.bars.append(bar(f"{target}, {sizes.backups:,} backups: warm list manifest GETs", r["manifest_gets"],
                                0, "<=", "GETs", note))
        r = find(target, "backups", "list", "warm sim")
        if r is not None:
            res.notes.append(f"{target}: with listing versions (simulated), a warm list of {sizes.backups:,} "
                             f"backups takes {r['seconds']:.3f} s with {r['manifest_gets']} manifest GETs "
                             f"(real listing: {find(target, 'backups', 'list', 'warm')['manifest_gets']})")  # type: ignore[index]


# --- standalone: python -m benchmarks.bench_catalog [--quick] -------------------------------------


def _standalone(argv: list[str]) -> int:
    """Run this benchmark alone, without the loopback workspace of run.py (it needs none)."""
    import argparse
    import shutil
    import tempfile

    from benchmarks import report
    from benchmarks.common import full_config, quick_config

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_catalog")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    p.add_argument("--json", type=Path, help="write the result as JSON here")
    a = p.parse_args(argv)
    cfg = quick_config() if a.quick else full_config()
    base = Path(tempfile.mkdtemp(prefix="btrsync-bench-catalog-", dir=a.workdir))
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    class _WS:
        pass

    ws = _WS()
    ws.base = base  # type: ignore[attr-defined]
    try:
        res = run_bench(ws, cfg, log)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res.seconds = time.monotonic() - t0
    meta = {"mode": cfg.mode, "machine": {"nproc": os.cpu_count(), "cpu": "-", "kernel": os.uname().release,
                                          "btrfs_progs": "-"}, "drop_caches": cfg.drop_caches}
    print(report.render([res], meta))
    if a.json:
        report.write_json(report.to_json([res], meta), a.json)
    return 1 if res.failed_checks else 0


if __name__ == "__main__":
    sys.exit(_standalone(sys.argv[1:]))
