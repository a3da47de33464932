"""Benchmark 13: what each chain strategy stores over a dated history under one GFS policy.

A deterministic churn (seeded) over ``days`` dated days on a loopback btrfs subvolume: a static
bulk (incompressible blobs and text files, a few deleted now and then), a working set of text
files rewritten in 16 KiB blocks at random offsets, an appended log, and new files that are
deleted two weeks later.  Every day, in this order, on the same data:

* ``btrsync run data --now DAY`` (the CLI, in-process) of one job with two targets: ``tree``
  (``chain = "tree"``) and ``linear`` (``chain = "linear"``, max_chain 30); the job snapshots
  the subvolume, pushes to both, prunes both under the policy and prunes local snapshots to
  ``keep_last = 1`` (the tree's anchors are kept);
* **the btrfs2s3 tree**: a read-only snapshot of the day's snapshot in a directory of its own;
  the parents come from btrfs2s3's own resolver (``btrfs2s3._internal.resolver.resolve`` with its
  ``Policy(Params(months, weeks, days), now=DAY)``: the longest timeframe's first backup is a full,
  each shorter one an incremental on the first backup of the enclosing longer period), which also
  decides the local snapshots it keeps; each new backup is pushed by ``push_step`` with that
  parent, and the target is pruned by btrsync's prune under the same policy as the others;
* **restic 0.14** (the deduplicating floor; a thread of its own, at most a day behind, since each
  restic command spends ~0.35 s of CPU deriving its key): the day's snapshot bind-mounted at one
  fixed path, ``restic backup --time DAY``, and ``restic forget --prune`` with the same policy
  every seventh day (quick mode: every 30th) and on the last.  forget alone frees nothing, so the
  bytes stored are as if it forgot every day; between prunes restic holds more than its policy.

Measured per strategy: bytes on the target (every file below its directory, as ``du -b``) at the
end and the peak over the days (after each day's prune), bytes uploaded in total (btrsync: the
stored bytes of every push; restic: the repository's growth during each backup), backups held at
the end against the policy's own count (``decide`` on every backup ever made, no chain closure),
the deepest chain held (streams to restore), and the time to restore the newest backup (page
cache dropped).  After the last day the oldest, a middle and the newest backup each btrsync
strategy holds are received and compared with the day's snapshot (kept in a history directory):
a difference fails the run.  restic's newest restore is compared by file contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from benchmarks.common import (
    KiB,
    MiB,
    Bar,
    BenchResult,
    Config,
    TextGen,
    Workspace,
    drop_caches,
    run,
    subvol_create,
    tree_bytes,
)
from btrsync.catalog.repository import Repository
from btrsync.crypto.keys import load_key_file
from btrsync.ops.prune import prune_backups
from btrsync.ops.push.run import push_step
from btrsync.ops.push.settings import PushSettings
from btrsync.ops.receive import receive
from btrsync.planner.plan import Step
from btrsync.retention import Item, Policy, decide
from btrsync.snapshots.store import list_snapshots
from btrsync.targets.local import LocalTarget
from btrsync.verify.treecompare import diff_trees

POLICY = {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}
MAX_CHAIN = 30
T0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)  # a Thursday: the first week and month are partial
STRATEGIES = ("tree", "linear", "btrfs2s3")
RESTIC = "restic"
# the aims of the issue (informational bars; correctness checks fail the run)
AIM_STORED_VS_LINEAR = 0.35
AIM_VS_RESTIC = 2.0
AIM_STREAMS = 5


@dataclass(frozen=True)
class Sizes:
    days: int
    random_files: int  # static incompressible blobs
    random_size: int
    text_files: int  # static text files (a few deleted now and then)
    text_size: int  # average
    ws_files: int  # the working set: text files rewritten in blocks
    ws_size: int
    churn_blocks: int  # 16 KiB blocks rewritten a day, at random on the working set
    append: int  # bytes appended to the log a day
    new_files: int  # new text files a day, deleted ``new_life`` days later
    new_size: int
    new_life: int = 14
    static_delete_every: int = 3  # one static text file deleted every N days
    restic_prune_every: int = 7  # restic forget --prune every N days and on the last


QUICK = Sizes(days=120, random_files=3, random_size=2 * MiB, text_files=300, text_size=20 * KiB,
              ws_files=24, ws_size=64 * KiB, churn_blocks=10, append=8 * KiB, new_files=4, new_size=4 * KiB,
              restic_prune_every=30)  # each restic command derives its key (~0.35 s CPU): CI time
FULL = Sizes(days=180, random_files=12, random_size=12 * MiB, text_files=3000, text_size=32 * KiB,
             ws_files=96, ws_size=256 * KiB, churn_blocks=160, append=128 * KiB, new_files=10,
             new_size=16 * KiB)
BLOCK = 16 * KiB


class SeededBytes:
    """Incompressible bytes, the same for the same seed (AES-256-CTR keystream under a key
    derived from the seed)."""

    def __init__(self, seed: int) -> None:
        key = hashlib.sha256(f"btrsync-bench-storage-{seed}".encode()).digest()
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def take(self, n: int) -> bytes:
        return self._enc.update(bytes(n))


class History:
    """The deterministic churn: ``setup`` writes day 0's tree, ``day(d)`` applies day d's changes."""

    def __init__(self, root: Path, sizes: Sizes, seed: int = 2026) -> None:
        self.root, self.s = root, sizes
        self.rng = np.random.default_rng(seed)
        self.text = TextGen(seed)
        self.rand = SeededBytes(seed)
        self.static_text: list[Path] = []

    def setup(self) -> dict[str, int]:
        s, root = self.s, self.root
        total = 0
        (root / "blobs").mkdir()
        for i in range(s.random_files):
            (root / "blobs" / f"blob-{i:03d}.bin").write_bytes(self.rand.take(s.random_size))
            total += s.random_size
        sizes = np.clip(self.rng.lognormal(np.log(s.text_size * 0.8), 0.7, s.text_files), 512,
                        s.text_size * 4).astype(int)
        for i, size in enumerate(sizes.tolist()):
            d = root / "docs" / f"d{i // 100:03d}"
            if i % 100 == 0:
                d.mkdir(parents=True)
            p = d / f"doc-{i:05d}.txt"
            p.write_bytes(self.text.take(size))
            self.static_text.append(p)
            total += size
        (root / "db").mkdir()
        for i in range(s.ws_files):
            (root / "db" / f"table-{i:03d}.dat").write_bytes(self.text.take(s.ws_size))
            total += s.ws_size
        (root / "log").mkdir()
        (root / "log" / "app.log").write_bytes(b"")
        (root / "inbox").mkdir()
        return {"bytes": total, "files": s.random_files + s.text_files + s.ws_files + 1}

    def day(self, d: int) -> int:
        """Day ``d``'s changes; returns the bytes written."""
        s, root, rng = self.s, self.root, self.rng
        written = 0
        blocks = s.ws_size // BLOCK
        for _ in range(s.churn_blocks):  # working-set rewrites, in place
            f = int(rng.integers(s.ws_files))
            off = int(rng.integers(blocks)) * BLOCK
            with open(root / "db" / f"table-{f:03d}.dat", "r+b") as fh:
                fh.seek(off)
                fh.write(self.text.take(BLOCK))
            written += BLOCK
        with open(root / "log" / "app.log", "ab") as fh:  # appends
            fh.write(self.text.take(s.append))
        written += s.append
        for i in range(s.new_files):  # new files, deleted new_life days later
            (root / "inbox" / f"day{d:04d}-{i:03d}.txt").write_bytes(self.text.take(s.new_size))
            written += s.new_size
        for i in range(s.new_files):
            old = root / "inbox" / f"day{d - s.new_life:04d}-{i:03d}.txt"
            if old.exists():
                old.unlink()
        if d % s.static_delete_every == 0 and self.static_text:  # a static file deleted
            victim = self.static_text.pop(int(rng.integers(len(self.static_text))))
            victim.unlink()
        return written


# --- measurements -------------------------------------------------------------------------------


def dir_bytes(path: Path) -> int:
    """Apparent bytes of every file below ``path`` (``du -sb`` without the directories)."""
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def policy_count(times: list[datetime], policy: Policy, now: datetime) -> int:
    """How many of the backups made at ``times`` the policy itself keeps at ``now`` (no chains)."""
    items = [Item(f"b{i}", t, None) for i, t in enumerate(times)]
    return sum(1 for d in decide(items, policy, now) if d.kept)


@dataclass
class Track:
    """One strategy's figures over the days."""

    name: str
    uploaded: int = 0
    stored_peak: int = 0
    stored_end: int = 0
    held_peak_excess: int = 0  # max over days of (held - the policy's count that day)
    deepest_ever: int = 0  # streams to restore, the most over the days
    fulls: int = 0
    seconds: float = 0.0  # its daily work (push + prune; restic: backup + forget + prune)
    held: list[dict[str, Any]] = field(default_factory=list)  # at the end
    series: list[int] = field(default_factory=list)  # bytes on the target after each day
    restore_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def day(self, stored: int, held: list[dict[str, Any]] | None, count: int) -> None:
        self.stored_peak = max(self.stored_peak, stored)
        self.stored_end = stored
        self.series.append(stored)
        if held is not None:
            self.held = held
            self.held_peak_excess = max(self.held_peak_excess, len(held) - count)
            self.deepest_ever = max(self.deepest_ever, max((h["depth"] for h in held), default=-1) + 1)


def held_of(repo: Repository) -> list[dict[str, Any]]:
    catalog = repo.catalog()
    return sorted(({"id": m.backup_id, "snapshot": m.snapshot, "time": m.snapshot_time, "depth": m.depth,
                    "parent": m.parent_id, "stored_bytes": m.stored_bytes} for m in catalog.restorable),
                  key=lambda h: h["time"])


# --- the btrsync CLI in-process -----------------------------------------------------------------


class Cli:
    def __init__(self, config: Path, state: Path, key: Path) -> None:
        self.base = ["--config", str(config), "--state-dir", str(state), "--key-file", str(key)]

    def __call__(self, *args: str) -> tuple[int, str]:
        from btrsync.cli.main import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*self.base, *args])
        if code != 0:
            raise RuntimeError(f"btrsync {' '.join(args)}: exit {code}: {err.getvalue()[-2000:]}"
                               f"{out.getvalue()[-2000:]}")
        return code, out.getvalue()


def job_config(subvol: Path, snapdir: Path, targets: dict[str, Path]) -> str:
    policy = ", ".join(f"{k} = {v}" for k, v in POLICY.items())
    text = f'[push]\nmax_chain = {MAX_CHAIN}\nchain = "tree"\n'
    for name, path in targets.items():
        text += f'\n[targets.{name}]\nurl = "file://{path}"\n'
        if name == "linear":
            text += 'chain = "linear"\n'
    text += (f'\n[retention]\ndefault_profile = "p"\n[retention.profiles.p]\nbackups = {{ {policy} }}\n'
             f'\n[jobs.data]\nsubvolumes = ["{subvol}"]\nsnapshot_dir = "{snapdir}"\ntimezone = "UTC"\n'
             f'snapshots = {{ keep_last = 1 }}\n')
    for name in targets:
        text += f"targets.{name} = {{}}\n"
    return text


# --- the btrfs2s3 tree --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Info:  # btrfs2s3's InfoLike / BackupLike
    uuid: bytes
    ctime: float
    ctransid: int
    send_parent_uuid: bytes | None = None


def _ub(text: str) -> bytes:
    return uuid.UUID(text).bytes


class Btrfs2s3Tree:
    """Parents and local snapshots chosen by btrfs2s3's resolver; pushes by btrsync's ``push_step``;
    the target pruned by btrsync's prune under the same policy as the other strategies."""

    def __init__(self, repo: Repository, subvol: Path, snapdir: Path, policy: Policy,
                 settings: PushSettings) -> None:
        from btrfs2s3._internal.preservation import Params

        self.repo, self.subvol, self.snapdir = repo, subvol, snapdir
        self.policy, self.settings = policy, settings
        self.params = Params(months=POLICY["keep_monthly"], weeks=POLICY["keep_weekly"],
                             days=POLICY["keep_daily"])
        self.resolver_held: int | None = None  # what btrfs2s3's own retention would hold
        self.fallbacks = 0

    def day(self, source: Path, now: datetime) -> tuple[list[dict[str, Any]], int]:
        """Take ``source`` (the day's snapshot) in, push what the resolver asks for, prune.
        Returns the push results (as dicts) and the bytes stored by them."""
        from btrfs2s3._internal.cvar import use_tzinfo
        from btrfs2s3._internal.preservation import Policy as B2Policy
        from btrfs2s3._internal.resolver import Flags, resolve

        run(["btrfs", "subvolume", "snapshot", "-r", str(source), str(self.snapdir / source.name)])
        snaps = list_snapshots(self.snapdir, self.subvol.name)
        by_uuid = {_ub(s.uuid): s for s in snaps}
        held = {m.snapshot_uuid: m for m in self.repo.catalog().restorable}
        infos = [_Info(_ub(s.uuid), s.time.timestamp(), int(s.time.timestamp())) for s in snaps]
        backups = [_Info(_ub(m.snapshot_uuid), m.snapshot_time.timestamp(), int(m.snapshot_time.timestamp()),
                         _ub(m.parent_uuid) if m.parent_uuid else None) for m in held.values()]

        def mk_backup(snapshot: _Info, send_parent: _Info | None = None) -> _Info:
            return _Info(snapshot.uuid, snapshot.ctime, snapshot.ctransid,
                         send_parent.uuid if send_parent is not None else None)

        with use_tzinfo(UTC):
            result = resolve(snapshots=infos, backups=backups, policy=B2Policy(params=self.params,
                             now=now.timestamp()), mk_backup=mk_backup)
        new = sorted((i.item for i in result.keep_backups.values() if Flags.New in i.meta.flags),
                     key=lambda b: b.ctransid)
        self.resolver_held = len(result.keep_backups)
        pushed: list[dict[str, Any]] = []
        stored = 0
        depth = {m.snapshot_uuid: m.depth for m in held.values()}
        ids = {m.snapshot_uuid: m.backup_id for m in held.values()}
        for b in new:
            snap = by_uuid[b.uuid]
            parent = by_uuid.get(b.send_parent_uuid) if b.send_parent_uuid else None
            if parent is not None and parent.uuid not in ids:
                self.fallbacks += 1  # its backup is gone here: btrfs2s3 would re-send it; a full instead
                parent = None
            step = Step(snap, parent, ids[parent.uuid] if parent else None,
                        depth[parent.uuid] + 1 if parent else 0,
                        f"btrfs2s3 resolver: {'incremental on ' + parent.name if parent else 'full'}")
            outcome, manifest = push_step(self.repo, step, self.subvol.name, self.subvol, self.settings)
            if manifest is None:
                raise RuntimeError(f"btrfs2s3 tree: push of {snap.name} failed: {outcome.error}")
            depth[snap.uuid], ids[snap.uuid] = step.depth, outcome.backup_id
            stored += outcome.stored_bytes
            pushed.append({"backup_id": outcome.backup_id, "kind": step.kind, "depth": step.depth,
                           "stored_bytes": outcome.stored_bytes})
        # btrfs2s3's snapshot retention: the snapshots it does not keep go
        keep = set(result.keep_snapshots)
        for s in snaps:
            if _ub(s.uuid) not in keep:
                run(["btrfs", "subvolume", "delete", str(s.path)])
        prune_backups(self.repo, lambda _sv: self.policy, now, dry_run=False, audit=None)
        return pushed, stored


# --- restic -------------------------------------------------------------------------------------


class Restic:
    def __init__(self, repo: Path, cache: Path, password_file: Path, mnt: Path) -> None:
        self.repo, self.mnt = repo, mnt
        self.base = ["restic", "-r", str(repo), "--cache-dir", str(cache),
                     "--password-file", str(password_file), "-q"]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([*self.base, *args])

    def init(self) -> None:
        self("init")

    def backup(self, source: Path, when: datetime) -> None:
        run(["mount", "--bind", str(source), str(self.mnt)])
        try:
            self("backup", "--host", "bench", "--time", f"{when:%Y-%m-%d %H:%M:%S}", str(self.mnt))
        finally:
            run(["umount", str(self.mnt)])

    def forget(self, prune: bool) -> None:
        flags = [f"--{k.replace('_', '-')}" for k in POLICY]
        args = ["forget", "--host", "bench"]
        for flag, value in zip(flags, POLICY.values(), strict=True):
            args += [flag, str(value)]
        self(*args, *(["--prune"] if prune else []))

    def snapshots(self) -> list[dict[str, Any]]:
        return json.loads(self("snapshots", "--json").stdout or "[]")


def _restic_worker(restic: Restic, days: queue.Queue[tuple[int, Path, datetime, int, bool] | None], tr: Track,
                   errors: list[BaseException]) -> None:
    """Back up each day's snapshot as of its day; forget with the policy and prune on the days
    the main loop marks (forget alone frees nothing: storage is as if it forgot daily)."""
    while (item := days.get()) is not None:
        if errors:
            continue
        _d, snap, when, count, prune = item
        try:
            t0 = time.monotonic()
            before = dir_bytes(restic.repo)
            restic.backup(snap, when)
            tr.uploaded += max(0, dir_bytes(restic.repo) - before)
            if prune:
                restic.forget(prune=True)
            tr.seconds += time.monotonic() - t0
            tr.day(dir_bytes(restic.repo), None, count)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)


# --- the benchmark ------------------------------------------------------------------------------


def run_bench(ws: Workspace, cfg: Config, log: Callable[[str], None]) -> BenchResult:
    sizes = QUICK if cfg.mode == "quick" else FULL
    res = BenchResult("storage", f"Storage over {sizes.days} dated days under one GFS policy "
                      f"(daily {POLICY['keep_daily']}, weekly {POLICY['keep_weekly']}, "
                      f"monthly {POLICY['keep_monthly']}); times: restore of the newest backup")
    t_start = time.monotonic()
    key = load_key_file(ws.key_file)
    policy = Policy.from_mapping({**POLICY, "timezone": "UTC"})
    root = ws.base / "storage"
    root.mkdir()
    src_root = ws.src / "storage"
    src_root.mkdir()
    subvol = subvol_create(src_root / "data")
    snapdir, history_dir, b2dir = src_root / ".snapshots", src_root / ".history", src_root / ".btrfs2s3"
    for d in (snapdir, history_dir, b2dir):
        d.mkdir()
    dst = ws.dst / "storage"
    dst.mkdir()
    targets = {name: dst / name for name in STRATEGIES}
    for p in targets.values():
        p.mkdir()
    config = root / "config.toml"
    config.write_text(job_config(subvol, snapdir, {k: targets[k] for k in ("tree", "linear")}))
    cli = Cli(config, root / "state", ws.key_file)
    for name in ("tree", "linear"):
        cli("init", "--to", name)
    settings = PushSettings(max_chain=MAX_CHAIN)
    b2s3: Btrfs2s3Tree | None = None
    try:
        b2_repo = Repository.open(LocalTarget(targets["btrfs2s3"]), key, create=True)
        b2s3 = Btrfs2s3Tree(b2_repo, subvol, b2dir, policy, settings)
    except ImportError:
        res.notes.append("btrfs2s3 is not installed (pip install btrfs2s3, in the bench extra): "
                         "its column is missing")
    restic: Restic | None = None
    mnt = ws.base / "storage-restic-src"
    if subprocess.run(["which", "restic"], capture_output=True).returncode == 0:
        mnt.mkdir()
        restic = Restic(dst / "restic", ws.base / "storage-restic-cache", ws.pass_file, mnt)
        restic.init()
        res.metrics["restic_version"] = run(["restic", "version"]).stdout.strip()
    else:
        res.notes.append("restic is not installed (apt-get install -y restic): its column is missing")

    tracks = {name: Track(name) for name in (*STRATEGIES, RESTIC)}
    # restic works through the days in a thread of its own, a day behind at most: each of its
    # commands spends ~0.35 s of CPU deriving the repository key, which would double the run
    restic_days: queue.Queue[tuple[int, Path, datetime, int, bool] | None] | None = None
    restic_errors: list[BaseException] = []
    worker: threading.Thread | None = None
    if restic is not None:
        restic_days = queue.Queue(maxsize=2)
        worker = threading.Thread(target=_restic_worker, name="restic-days", daemon=True,
                                  args=(restic, restic_days, tracks[RESTIC], restic_errors))
        worker.start()
    history = History(subvol, sizes)
    res.metrics["initial"] = history.setup()
    log(f"  storage: {sizes.days} days, initial tree {res.metrics['initial']['bytes'] / MiB:.1f} MiB")
    times: list[datetime] = []
    churned = 0
    try:
        for d in range(sizes.days):
            now = T0 + timedelta(days=d)
            if d:
                churned += history.day(d)
            times.append(now)
            count = policy_count(times, policy, now)
            # -- tree and linear: one job, two targets
            _, out = cli("run", "data", "--json", "--now", now.isoformat())
            [job] = json.loads(out)["jobs"]
            if job["status"] != "ok":
                raise RuntimeError(f"day {d}: btrsync run: {job['status']}: {job.get('error')}")
            [snap_name] = job["snapshots"]
            for t in job["targets"]:
                tr = tracks[t["name"]]
                tr.seconds += t["seconds"]
                tr.uploaded += t["stored_bytes"]
                tr.fulls += sum(1 for b in t["backups"] if b["kind"] == "full")
            for name in ("tree", "linear"):
                repo = Repository.open(LocalTarget(targets[name]), key)
                tracks[name].day(dir_bytes(targets[name]), held_of(repo), count)
            # the day's snapshot, kept for the restore checks (and the source of the others)
            day_snap = history_dir / snap_name
            run(["btrfs", "subvolume", "snapshot", "-r", str(snapdir / snap_name), str(day_snap)])
            if b2s3 is not None:
                t0 = time.monotonic()
                pushed, stored = b2s3.day(day_snap, now)
                tr = tracks["btrfs2s3"]
                tr.seconds += time.monotonic() - t0
                tr.uploaded += stored
                tr.fulls += sum(1 for p in pushed if p["kind"] == "full")
                tr.day(dir_bytes(targets["btrfs2s3"]), held_of(b2s3.repo), count)
            if restic_days is not None:
                last = d == sizes.days - 1
            restic_days.put((d, day_snap, now, count, last or (d + 1) % sizes.restic_prune_every == 0))
            if d % 30 == 29 or d == sizes.days - 1:
                log(f"  storage: day {d + 1}/{sizes.days} ({now:%Y-%m-%d}): "
                    + ", ".join(f"{n} {tracks[n].stored_end / MiB:.1f} MiB/{len(tracks[n].held)} held"
                                for n in tracks if tracks[n].stored_end))
    finally:
        if worker is not None and restic_days is not None:
            restic_days.put(None)
            worker.join()
    if restic_errors:
        raise RuntimeError(f"restic: {restic_errors[0]}") from restic_errors[0]
    res.metrics["days"] = sizes.days
    res.metrics["first_day"], res.metrics["last_day"] = f"{times[0]:%Y-%m-%d}", f"{times[-1]:%Y-%m-%d}"
    res.metrics["churned_bytes"] = churned
    res.metrics["final_tree"] = dict(zip(("bytes", "files"), tree_bytes(subvol), strict=True))
    res.metrics["policy_count"] = count = policy_count(times, policy, times[-1])
    res.metrics["history_seconds"] = round(time.monotonic() - t_start, 1)
    if restic is not None:
        tracks[RESTIC].held = [{"depth": 0} for _ in restic.snapshots()]

    # -- restores: the newest of each (timed, cold cache) and the oldest and a middle one (checked)
    log("  storage: restores")
    for name in STRATEGIES:
        if name == "btrfs2s3" and b2s3 is None:
            continue
        repo = Repository.open(LocalTarget(targets[name]), key)
        held = tracks[name].held
        picks = [held[-1], held[0], held[len(held) // 2]]
        for i, b in enumerate(picks):
            into = ws.rst / f"storage-{name}-{i}"
            into.mkdir()
            try:
                if cfg.drop_caches and i == 0:
                    drop_caches()
                t0 = time.perf_counter()
                receive(repo, b["id"], into)
                run(["sync", "-f", str(into)])
                if i == 0:
                    tracks[name].restore_seconds = time.perf_counter() - t0
                diff = diff_trees(history_dir / b["snapshot"], into / b["snapshot"])
                res.check(f"{name}: {('newest', 'oldest', 'middle')[i]} held backup ({b['snapshot']}, "
                          f"{b['depth'] + 1} streams) restores identical", not diff, "; ".join(diff[:5]))
            finally:
                _delete_subvolumes(into)
    if restic is not None:
        into = ws.rst / "storage-restic"
        into.mkdir()
        try:
            if cfg.drop_caches:
                drop_caches()
            t0 = time.perf_counter()
            restic("restore", "latest", "--host", "bench", "--target", str(into))
            run(["sync", "-f", str(into)])
            tracks[RESTIC].restore_seconds = time.perf_counter() - t0
            newest = history_dir / tracks["tree"].held[-1]["snapshot"]
            got = _contents(into / mnt.relative_to("/"))
            res.check("restic: the newest snapshot restores the same file contents", got == _contents(newest),
                      f"{len(got)} files restored")
        finally:
            subprocess.run(["rm", "-rf", str(into)], check=False)
    _report(res, tracks, count, b2s3)
    return res


def _report(res: BenchResult, tracks: dict[str, Track], count: int, b2s3: Btrfs2s3Tree | None) -> None:
    rows: dict[str, dict[str, Any]] = {}
    for name, tr in tracks.items():
        if not tr.stored_end:
            continue
        depths = [h["depth"] for h in tr.held]
        rows[name] = {
            "stored_end": tr.stored_end, "stored_peak": tr.stored_peak, "uploaded": tr.uploaded,
            "held": len(tr.held), "policy_count": count, "held_peak_excess": tr.held_peak_excess,
            "deepest_streams": (max(depths) + 1) if name != RESTIC and depths else None,
            "deepest_streams_ever": tr.deepest_ever if name != RESTIC else None,
            "fulls_sent": tr.fulls if name != RESTIC else None,
            "restore_newest_seconds": None if tr.restore_seconds is None else round(tr.restore_seconds, 3),
            "daily_work_seconds": round(tr.seconds, 1),
            "stored_by_day": tr.series,
        }
        if name != RESTIC:
            keys = ("snapshot", "depth", "stored_bytes")
            rows[name]["held_end"] = [{k: h[k] for k in keys} for h in tr.held]
        res.runs[name] = [{"seconds": tr.restore_seconds, "stored_bytes": tr.stored_end}]
    res.metrics["strategies"] = rows
    if b2s3 is not None:
        res.metrics["btrfs2s3_resolver_would_hold"] = b2s3.resolver_held
        res.metrics["btrfs2s3_parent_fallbacks"] = b2s3.fallbacks
    tree, linear, b2, rs = (rows.get(n) for n in ("tree", "linear", "btrfs2s3", RESTIC))
    res.baseline = "tree"  # the runs are the newest backup's restore, per strategy
    tiers = len(POLICY)
    if tree:
        res.bars.append(_bar("tree: backups held - the policy's count", tree["held"] - count, tiers, "",
                             f"{tree['held']} held, policy {count}, one per tier allowed"))
        res.bars.append(_bar("tree: streams to restore any held backup (deepest)", tree["deepest_streams"],
                             AIM_STREAMS, "streams"))
        if linear:
            res.bars.append(_bar("tree: stored at the end / linear's",
                                 tree["stored_end"] / linear["stored_end"], AIM_STORED_VS_LINEAR, "x"))
        if b2:
            res.bars.append(_bar("tree: stored at the end / btrfs2s3 tree's",
                                 tree["stored_end"] / b2["stored_end"], 1.0, "x"))
        if rs:
            res.bars.append(_bar("tree: stored at the end / restic's repository",
                                 tree["stored_end"] / rs["stored_end"], AIM_VS_RESTIC, "x"))
        for other in ("linear", "btrfs2s3", RESTIC):
            if other in rows:
                o = rows[other]
                res.metrics[f"tree_stored_vs_{other}"] = round(tree["stored_end"] / o["stored_end"], 3)
                res.metrics[f"tree_peak_vs_{other}"] = round(tree["stored_peak"] / o["stored_peak"], 3)
    res.notes.append(_table(rows))


def _bar(name: str, value: float | None, limit: float, unit: str, note: str = "") -> Bar:
    return Bar(name, value, limit, "<=", unit, note)


def _table(rows: dict[str, dict[str, Any]]) -> str:
    def mib(n: int | None) -> str:
        return "-" if n is None else f"{n / MiB:,.1f} MiB"

    lines = [f"{'':<16}" + "".join(f"{n:>14}" for n in rows)]
    fields = [("stored, end", lambda r: mib(r["stored_end"])),
              ("stored, peak", lambda r: mib(r["stored_peak"])),
              ("uploaded", lambda r: mib(r["uploaded"])),
              ("held / policy", lambda r: f"{r['held']} / {r['policy_count']}"),
              ("streams, max", lambda r: str(r["deepest_streams"] or "-")),
              ("fulls sent", lambda r: str(r["fulls_sent"] if r["fulls_sent"] is not None else "-")),
              ("restore newest", lambda r: f"{r['restore_newest_seconds']:.2f} s"
               if r["restore_newest_seconds"] is not None else "-"),
              ("daily work", lambda r: f"{r['daily_work_seconds']:.0f} s")]
    for label, show in fields:
        lines.append(f"{label:<16}" + "".join(f"{show(r):>14}" for r in rows.values()))
    return "\n".join(lines)


def _contents(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _delete_subvolumes(into: Path) -> None:
    """Remove what a receive left in ``into`` (received subvolumes, read-only) and ``into``."""
    if not into.exists():
        return
    for child in sorted(into.iterdir()):
        subprocess.run(["btrfs", "subvolume", "delete", str(child)], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", str(into)], check=False)
