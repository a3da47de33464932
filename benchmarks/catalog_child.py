"""Benchmark 8's child process: one measured command (commit, table, list, plan, prune) against one
target, its own peak RSS (``VmHWM``) and request counts printed as one JSON line.

``python -m benchmarks.catalog_child ARGS_JSON`` (run by ``catalog_flow._run_child``).
"""

from __future__ import annotations

import json
import math
import random
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.catalog_counting import open_spec
from benchmarks.catalog_synth import (
    EVERY, MAX_DEPTH, PER_SEGMENT, Header, _uuid, big_header, index_params, segment_records, synthetic_headers,
)


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) * 1024
    return out


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ordered_writes(fn: Callable[[int], tuple[bytes, list[Any]]], count: int, workers: int,
                    on_done: Callable[[bytes, list[Any]], None]) -> None:
    """``fn(i)`` for i in 0..count-1 on ``workers`` threads, results handed to ``on_done`` in order,
    at most ``4 × workers`` in flight (memory stays bounded)."""
    with ThreadPoolExecutor(workers, thread_name_prefix="bench-write") as pool:
        pending: deque[Any] = deque()
        for i in range(count):
            pending.append(pool.submit(fn, i))
            if len(pending) >= 4 * workers:
                on_done(*pending.popleft().result())
        while pending:
            on_done(*pending.popleft().result())


def _child_commit(repo: Any, args: dict[str, Any]) -> dict[str, Any]:
    """Write the chunk table of the big backup (indexes, TableDigest), then commit its header."""
    from btrsync.catalog.segment_index import TableDigest, new_attempt, write_index

    h = big_header(args["chunks"])
    attempt = new_attempt()
    params = index_params(h, repo.key.key_id, attempt)
    table = TableDigest()
    segments = math.ceil(h.chunk_count / PER_SEGMENT)

    def write(seg: int) -> tuple[bytes, list[Any]]:
        records = segment_records(seg, min(PER_SEGMENT, h.chunk_count - seg * PER_SEGMENT), random.Random(seg))
        return write_index(repo, h.backup_id, seg, params, records), records

    t0 = time.perf_counter()
    _ordered_writes(write, segments, args["workers"], table.add)
    table_s = time.perf_counter() - t0
    after_table = _status()
    reset = _reset_hwm()
    t1 = time.perf_counter()
    done = Header(h.subvolume, h.snapshot, h.time, h.uuid, None, None, 0, table.stream_bytes, table.stored_bytes,
                  table.chunks, table.segments, attempt, table.hexdigest)
    manifest = done.manifest(repo.key.key_id, socket.gethostname())
    t2 = time.perf_counter()
    repo.commit(manifest)
    t3 = time.perf_counter()
    commit_status = _status()
    return {"timed_s": t3 - t1, "header_build_s": t2 - t1, "seal_put_s": t3 - t2, "table_s": table_s,
            "indexes": table.segments, "chunks": table.chunks, "stream_bytes": table.stream_bytes,
            "hwm_after_table": after_table["VmHWM"], "rss_after_table": after_table["VmRSS"],
            "commit_hwm": commit_status["VmHWM"] if reset else None,
            "manifest_bytes": len(manifest.to_json()), "backup_id": h.backup_id}


def _child_table(repo: Any, args: dict[str, Any]) -> dict[str, Any]:
    from btrsync.catalog.segment_index import table_records

    manifest = repo.load_manifest(args["backup_id"])
    n = raw = 0
    for rec in table_records(repo, manifest):
        n += 1
        raw += rec.raw_size
    return {"records": n, "raw_bytes": raw, "chunk_count": manifest.chunk_count,
            "stream_bytes": manifest.stream_bytes, "segments": manifest.segments}


def _child_list(repo: Any, args: dict[str, Any]) -> dict[str, Any]:
    """What ``btrsync list --json`` does (cli/cmd_list.py), without printing the rows."""
    from btrsync.state import State

    state = State(Path(args["state_dir"]))
    state.bind(repo.target.display_url, repo.repo_id)
    catalog = repo.catalog()
    state.record_target(repo.target.display_url, catalog.manifests, repo_id=repo.repo_id,
                        complete=not catalog.damaged)
    rows = []
    for m in catalog.manifests:
        broken = catalog.broken.get(m.backup_id)
        rows.append({**m.summary(), "status": "broken" if broken else "ok",
                     "problem": broken.reason if broken else None})
    rows += [{"id": d.backup_id, "subvolume": d.subvolume, "status": "damaged", "problem": d.error}
             for d in catalog.damaged]
    text = json.dumps(rows, indent=2)
    return {"backups": len(catalog.manifests), "damaged": len(catalog.damaged), "broken": len(catalog.broken),
            "json_bytes": len(text)}


def _fake_snapshots(headers: list[Header], subvolume: str) -> list[Any]:
    """Read-only local snapshots of ``subvolume``: those the target holds, plus one new one."""
    from btrsync.btrfs.subvolume import SubvolumeInfo
    from btrsync.snapshots.naming import parse_name
    from btrsync.snapshots.store import Snapshot

    mine = [h for h in headers if h.subvolume == subvolume]
    rng = random.Random(99)
    t = mine[-1].time + EVERY
    names = [(h.snapshot, h.uuid) for h in mine] + [(f"{subvolume}.{t:%Y%m%dT%H%M%SZ}", _uuid(rng))]
    snaps = []
    for i, (name, uid) in enumerate(names):
        path = Path("/bench/snapshots") / name
        parsed = parse_name(name)
        assert parsed is not None
        info = SubvolumeInfo(path, name, 256 + i, uid, None, None, 1000 + i, 1000 + i, 1000 + i, 0, 0, True,
                             parsed.time)
        snaps.append(Snapshot(path, parsed, info))
    return snaps


def _child_plan(repo: Any, args: dict[str, Any], snaps: list[Any]) -> dict[str, Any]:
    from unittest import mock

    from btrsync.ops.push import plan as push_mod

    with mock.patch.object(push_mod, "list_snapshots", lambda _dir, _name=None: snaps):
        catalog = repo.catalog()
        plan = push_mod.plan_for(Path("/bench") / args["subvolume"], Path("/bench/snapshots"), catalog,
                                 MAX_DEPTH)
    step = plan.steps[0] if plan.steps else None
    return {"steps": len(plan.steps), "up_to_date": len(plan.up_to_date), "skipped": len(plan.skipped),
            "kind": step.kind if step else None, "depth": step.depth if step else None,
            "parent": step.parent_backup_id if step else None, "backups": len(catalog.manifests)}


def prune_policy() -> Any:
    from btrsync.retention import UNLIMITED, Policy

    return Policy(keep_last=5, keep_hourly=48, keep_daily=14, keep_weekly=8, keep_monthly=24,
                  keep_yearly=UNLIMITED, keep_within="2d", timezone="Europe/Berlin")


def _child_prune(repo: Any, args: dict[str, Any]) -> dict[str, Any]:
    from btrsync.ops.prune import prune_backups

    policy = prune_policy()
    now = datetime.fromisoformat(args["now"])
    result = prune_backups(repo, lambda _sv: policy, now, dry_run=True, audit=None)
    return {"decisions": len(result.decisions), "deleted": len(result.deleted),
            "kept": sum(d.action == "keep" for d in result.decisions), "unrestorable": len(result.unrestorable),
            "refused": len(result.refused)}


def child_main(args: dict[str, Any]) -> dict[str, Any]:
    """Run one command against the target ``args['spec']``; the timed part starts at opening the
    repository (probe, marker) and ends when the command's result is in hand."""
    # import what the command needs before the clock starts (a CLI has imported it too)
    import btrsync.catalog.segment_index  # noqa: F401
    import btrsync.ops.prune  # noqa: F401
    import btrsync.ops.push.run  # noqa: F401
    import btrsync.state  # noqa: F401
    from btrsync.catalog.cache import CatalogCache
    from btrsync.catalog.repository import Repository
    from btrsync.crypto.keys import load_key_file

    op = args["op"]
    key = load_key_file(Path(args["key_file"]))
    snaps = (_fake_snapshots(synthetic_headers(args["backups"]) if args["backups"] else [big_header(args["chunks"])],
                             args["subvolume"]) if op == "plan" else None)
    # the target object first (an S3 client loads botocore's service model: not a catalog cost)
    target = open_spec(args["spec"], simulate_versions=args.get("simulate_versions", False))
    before = _status()
    t0 = time.perf_counter()
    try:
        repo = Repository.open(target, key)
        if args.get("state_dir"):
            repo.cache = CatalogCache.for_repository(Path(args["state_dir"]), repo.repo_id)
        if op == "commit":
            out = _child_commit(repo, args)
        elif op == "table":
            out = _child_table(repo, args)
        elif op == "list":
            out = _child_list(repo, args)
        elif op == "plan":
            out = _child_plan(repo, args, snaps or [])
        elif op == "prune":
            out = _child_prune(repo, args)
        else:
            out = {}
        seconds = time.perf_counter() - t0
        if repo.cache is not None:
            out.update(cache_hits=repo.cache.hits, cache_misses=repo.cache.misses)
    finally:
        target.close()
    end = _status()
    return {"seconds": out.pop("timed_s", seconds), "command_s": seconds, "rss_before": before["VmRSS"],
            "vm_hwm": end["VmHWM"], "requests": target.report(), **out}


if __name__ == "__main__":
    print(json.dumps(child_main(json.loads(sys.argv[1]))))
