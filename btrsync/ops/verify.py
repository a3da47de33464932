"""Verify: check backups without restoring them, or by a scratch restore.  Levels are cumulative:

- ``catalog``: every manifest authenticates, every chain link resolves (parent present, uuid
  matches, no loop), every segment and segment index the manifest names exists and the
  segments add up to the recorded size (from one listing: no data is downloaded); orphaned data
  and stale leases are reported, never deleted.
- ``data``: every selected segment's chunks are downloaded (ranged reads, in parallel, bounded
  window) and checked: xxh3-128 of the stored frame, the AES-GCM tag, decompression, raw size and
  raw xxh3-128.  The segment indexes (the chunk table) are authenticated and checked against the
  manifest on the way.  Needs no btrfs and no root.
- ``stream``: additionally the decrypted stream of every chunk, in order, goes through the send
  stream parser: header, every command's framing (and CRC32C where the parser checks it), END
  last, nothing after it, and for an incremental, that it is based on the parent the manifest
  names.  Sampling does not apply: a stream is parsed whole.
- ``restore``: additionally the chain is received into a scratch btrfs on a sparse loop image
  (leftovers of earlier drills, even of a SIGKILLed one, are removed first) and, where the
  original snapshot still exists locally, the restored tree is compared with it.

Damage in one backup never stops the others; every backup whose chain runs through a damaged one
is reported as *affected*.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from btrsync.catalog import layout
from btrsync.catalog.chains import walk_chain
from btrsync.catalog.lease import read_leases
from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Catalog, Repository
from btrsync.errors import BtrsyncError, DamageError, UsageError
from btrsync.ops.drill import DrillUnavailable, drill
from btrsync.read.chains import resolve
from btrsync.read.chunks import chunks as read_chunks
from btrsync.sendstream import checker
from btrsync.targets.together import together
from btrsync.verify.ledger import Ledger
from btrsync.verify.selection import Sample, Segment, Subset

log = logging.getLogger(__name__)

LEVELS = ("catalog", "data", "stream", "restore")
MAX_PROBLEMS = 20  # per backup: enough to see the extent, never a flood

ProgressFn = Callable[[str, int, int], None]


@dataclass(slots=True)
class Problem:
    what: str  # missing, size, hash, tag, index, manifest, chain, stream, restore, files (the file index)
    where: str  # the object key (or backup) concerned
    message: str


@dataclass(slots=True)
class BackupReport:
    backup_id: str
    subvolume: str | None
    level: str = "catalog"  # the deepest level completed
    result: str = "ok"  # ok | damaged | affected | incomplete
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    bytes_read: int = 0
    chunks: int = 0
    segments_checked: int = 0
    segments_total: int = 0
    note: str | None = None
    blocks_restore: bool = False  # a problem other than of the file index: its dependents are affected

    def add(self, problem: Problem) -> None:
        self.result = "damaged"
        self.blocks_restore = self.blocks_restore or problem.what != "files"
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": [asdict(p) for p in self.problems]}


@dataclass(slots=True)
class VerifyReport:
    target: str
    level: str
    backups: list[BackupReport] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    stale_leases: list[str] = field(default_factory=list)
    incomplete: bool = False
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0
    drill: dict[str, Any] | None = None

    @property
    def damaged(self) -> list[BackupReport]:
        return [b for b in self.backups if b.result in ("damaged", "affected")]

    @property
    def drill_unavailable(self) -> str | None:
        """Why a restore drill could not be set up, if one could not (no finding about a backup)."""
        for outcome in (self.drill or {}).get("drills", []):
            if outcome.get("unavailable"):
                return str(outcome["error"])
        return None

    @property
    def ok(self) -> bool:
        return not self.damaged and self.drill_unavailable is None

    def first_problem(self) -> str | None:
        """One line on what is wrong (None when ok)."""
        if self.damaged:
            first = self.damaged[0]
            detail = first.problems[0].message if first.problems else first.note or first.result
            return f"{len(self.damaged)} backup(s) damaged or affected; first: {first.backup_id}: {detail}"
        if (why := self.drill_unavailable) is not None:
            return f"nothing was found damaged, but {why}"
        return None

    @property
    def bytes_read(self) -> int:
        return sum(b.bytes_read for b in self.backups)

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "level": self.level, "ok": self.ok, "backups": len(self.backups),
                "damaged": sum(b.result == "damaged" for b in self.backups),
                "affected": sum(b.result == "affected" for b in self.backups),
                "bytes_read": self.bytes_read, "seconds": round(self.seconds, 3), "incomplete": self.incomplete,
                "orphaned_objects": len(self.orphaned), "stale_leases": len(self.stale_leases),
                "started": self.started.isoformat().replace("+00:00", "Z"), "drill": self.drill,
                # the tree planner sends no new backup on these (planner/tree.py, ``unusable``)
                "damaged_ids": [b.backup_id for b in self.backups if b.result in ("damaged", "affected")]}


@dataclass(frozen=True, slots=True)
class Options:
    level: str = "data"
    subset: Subset | None = None
    sample: Sample | None = None
    drills: int | None = None  # restore level: how many random chains (None: every selected backup)
    older_than: timedelta | None = None
    max_duration: timedelta | None = None
    workers: int = 2
    scratch_dir: Path = Path("/var/tmp/btrsync-drills")
    snapshot_dirs: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise UsageError(f"--level {self.level!r}: use one of {', '.join(LEVELS)}")

    def at_least(self, level: str) -> bool:
        return LEVELS.index(self.level) >= LEVELS.index(level)


def select_backups(catalog: Catalog, specs: Sequence[str] | None) -> list[str]:
    """Backup ids for ``specs`` (ids, snapshot names, ``latest``, ``SUBVOL@latest``); all if None."""
    every = [m.backup_id for m in catalog.manifests] + [d.backup_id for d in catalog.damaged]
    if not specs:
        return every
    chosen: list[str] = []
    for spec in specs:
        damaged = [d.backup_id for d in catalog.damaged if d.matches(spec)]
        chosen += damaged or [resolve(catalog.manifests, spec).backup_id]
    return list(dict.fromkeys(chosen))


def verify(repo: Repository, specs: Sequence[str] | None = None, options: Options | None = None, *,
           ledger: Ledger | None = None, rng: random.Random | None = None,
           clock: Callable[[], float] = time.monotonic, progress: ProgressFn | None = None) -> VerifyReport:
    """Check the chosen backups (all by default) at ``options.level``; never raises for damage."""
    options = options or Options()
    rng = rng or random.Random()
    t0 = clock()
    deadline = None if options.max_duration is None else t0 + options.max_duration.total_seconds()
    report = VerifyReport(repo.target.display_url, options.level)
    # the catalog and the listing of every data object at once (two reads; on a distant store
    # each is a round trip or more)
    catalog, sizes = together(repo.target, lambda: repo.catalog(ahead=True), lambda: {o.key: o.size for o in repo.target.list("data/")})
    ids = select_backups(catalog, specs)
    by_id = {m.backup_id: m for m in catalog.manifests}
    _catalog_extras(repo, catalog, sizes, report)
    reports = {bid: BackupReport(bid, by_id[bid].subvolume if bid in by_id else None) for bid in ids}
    for d in catalog.damaged:
        if d.backup_id in reports:
            reports[d.backup_id].add(Problem("manifest", d.key, d.error))
    for bid, rep in reports.items():
        if bid in by_id:
            _check_catalog(by_id, by_id[bid], catalog, sizes, rep)
    if options.at_least("data"):
        chosen = _chosen_segments(by_id, reports, options, ledger, rng)
        ctransids: dict[str, Any] = {}  # backup -> its stream's ctransid (stream level): its children's parent
        for bid, rep in reports.items():
            if rep.result != "ok" or bid not in by_id:
                continue
            if deadline is not None and clock() > deadline:
                rep.result, rep.note, report.incomplete = "incomplete", "--max-duration reached", True
                continue
            t = clock()
            _check_data(repo, by_id[bid], rep, chosen.get(bid, set()), options, ledger, deadline, clock, progress,
                        ctransids)
            rep.seconds += clock() - t
            if rep.result == "incomplete":
                report.incomplete = True
    if options.at_least("restore") and not report.incomplete:
        report.drill = _drills(repo, catalog, reports, options, rng, clock)
    _mark_affected(by_id, reports)
    if ledger is not None:
        ledger.forget_missing(set(by_id))
    report.backups = list(reports.values())
    report.seconds = clock() - t0
    return report


# -- catalog ---------------------------------------------------------------------------------------
def _catalog_extras(repo: Repository, catalog: Catalog, sizes: dict[str, int], report: VerifyReport) -> None:
    committed = catalog.ids
    report.orphaned = sorted(k for k in sizes if (b := layout.backup_id_of_data_key(k)) and b not in committed)
    now = datetime.now(UTC)
    report.stale_leases = sorted(lease.key for lease in read_leases(repo.target, now) if not lease.is_live(now))


def _check_catalog(by_id: dict[str, Manifest], m: Manifest, catalog: Catalog, sizes: dict[str, int],
                   rep: BackupReport) -> None:
    try:
        walk_chain(by_id, m, {d.backup_id for d in catalog.damaged})
    except DamageError as exc:
        rep.add(Problem("chain", layout.manifest_key(m.backup_id), str(exc)))
    parent = by_id.get(m.parent_id or "")
    sent_on = m.send.get("parent_ctransid") if isinstance(m.send, dict) else None
    recorded = parent.send.get("ctransid") if parent is not None and isinstance(parent.send, dict) else None
    if sent_on is not None and recorded is not None:  # recorded by pushes since the manifests carry them
        try:
            checker.check_parent_unchanged(f"backup {m.backup_id}", sent_on, recorded)
        except DamageError as exc:
            rep.add(Problem("chain", layout.manifest_key(m.backup_id), str(exc)))
    expected = _segment_sizes(m)
    rep.segments_total = m.segments
    total = 0
    for n in range(m.segments):
        key = layout.segment_key(m.backup_id, n)
        if key not in sizes:
            rep.add(Problem("missing", key, f"segment {key} of backup {m.backup_id} is missing"))
            continue
        total += sizes[key]
        if expected is not None and sizes[key] != expected.get(n, 0):
            rep.add(Problem("size", key, f"segment {key} has {sizes[key]} bytes, the manifest records "
                                         f"{expected.get(n, 0)}"))
        if m.format >= 2 and layout.index_key(m.backup_id, n) not in sizes:
            idx = layout.index_key(m.backup_id, n)
            rep.add(Problem("missing", idx, f"segment index {idx} of backup {m.backup_id} is missing"))
    for part in range(int((m.files or {}).get("parts", 0))):
        key = layout.files_key(m.backup_id, part)
        if key not in sizes:
            rep.add(Problem("files", key, f"file index part {key} of backup {m.backup_id} is missing (the "
                                          "backup still restores whole; ls, find and restores of selected paths "
                                          "need it)"))
    if m.format >= 2 and rep.result == "ok" and total != m.stored_bytes:
        rep.add(Problem("size", layout.data_prefix(m.backup_id),
                        f"the segments of {m.backup_id} hold {total} bytes, the manifest records {m.stored_bytes}"))
    rep.chunks = m.n_chunks


def _segment_sizes(m: Manifest) -> dict[int, int] | None:
    """Per-segment stored sizes where the manifest itself says (format 1); format 2 checks the total."""
    if m.format >= 2:
        return None
    sizes: dict[int, int] = {}
    for rec in m.chunks:
        sizes[rec.segment] = sizes.get(rec.segment, 0) + rec.stored_size
    return sizes


# -- data and stream -------------------------------------------------------------------------------
def _chosen_segments(by_id: dict[str, Manifest], reports: dict[str, BackupReport], options: Options,
                     ledger: Ledger | None, rng: random.Random) -> dict[str, set[int]]:
    """Backup id -> segment numbers to read this run."""
    segments = [Segment(bid, n, by_id[bid].stored_bytes // max(1, by_id[bid].segments))
                for bid, rep in reports.items() if bid in by_id and rep.result == "ok"
                for n in range(by_id[bid].segments)]
    if options.at_least("stream"):
        pass  # a stream is parsed whole: every segment of every selected backup
    else:
        if options.subset is not None:
            segments = [s for s in segments if options.subset.contains(s)]
        if options.older_than is not None and ledger is not None:
            cutoff = datetime.now(UTC) - options.older_than
            segments = [s for s in segments if (ledger.last_verified(s.backup_id, s.number) or
                                                datetime.min.replace(tzinfo=UTC)) < cutoff]
        if options.sample is not None:
            segments = options.sample.choose(segments, rng)
    chosen: dict[str, set[int]] = {}
    for s in segments:
        chosen.setdefault(s.backup_id, set()).add(s.number)
    return chosen


def _check_data(repo: Repository, m: Manifest, rep: BackupReport, segments: set[int], options: Options,
                ledger: Ledger | None, deadline: float | None, clock: Callable[[], float],
                progress: ProgressFn | None, ctransids: dict[str, Any] | None = None) -> None:
    """Read the chosen segments through the one read path (``read/chunks.py``), which hands every
    damaged chunk over as such (``keep_going``): each becomes a problem of its segment, and a
    segment is intact when all its chunks were.  The whole chunk table is read and checked."""
    ctransids = {} if ctransids is None else ctransids
    stream = (checker.for_manifest(m, ctransids.get(m.parent_id or "")) if options.at_least("stream") else None)
    intact: list[tuple[str, int]] = []
    current: int | None = None  # the segment being read, and whether all its chunks were intact so far
    ok = True
    try:
        with closing(read_chunks(repo, m, workers=options.workers, select=lambda _i, rec: rec.segment in segments,
                                 keep_going=True)) as results:
            for chunk in results:
                if chunk.record.segment != current:
                    if current is not None and ok:
                        intact.append((m.backup_id, current))
                    current, ok = None, True
                    if deadline is not None and clock() > deadline:
                        rep.result, rep.note = "incomplete", "--max-duration reached"
                        break
                    current = chunk.record.segment
                if chunk.damage is not None:
                    rep.add(Problem(chunk.damage.kind, chunk.segment_key, str(chunk.damage)))
                    ok = False
                    if stream is not None:
                        break  # a stream with a hole cannot be parsed further
                    continue
                rep.bytes_read += chunk.record.stored_size
                if stream is not None:
                    try:
                        stream.feed(chunk.raw)
                    except DamageError as exc:
                        rep.add(Problem("stream", chunk.segment_key, str(exc)))
                        ok = False
                        break
                if progress is not None:
                    progress(m.backup_id, rep.bytes_read, rep.bytes_read)
            else:
                if current is not None and ok:
                    intact.append((m.backup_id, current))
    except DamageError as exc:  # the chunk table (segment indexes): the segment being read is not counted
        rep.add(Problem("index", layout.data_prefix(m.backup_id), str(exc)))
    rep.segments_checked = len(intact)
    if ledger is not None:
        ledger.record(intact, datetime.now(UTC))
    if rep.result == "ok":
        rep.level = "data"
        if stream is not None:
            try:
                stream.finish()
                rep.level = "stream"
                ctransids[m.backup_id] = stream.ctransid
            except DamageError as exc:
                rep.add(Problem("stream", layout.manifest_key(m.backup_id), str(exc)))


# -- restore drills ---------------------------------------------------------------------------------
def _drills(repo: Repository, catalog: Catalog, reports: dict[str, BackupReport], options: Options,
            rng: random.Random, clock: Callable[[], float]) -> dict[str, Any] | None:
    candidates = [bid for bid, rep in reports.items() if rep.result == "ok" and bid not in catalog.broken
                  and any(m.backup_id == bid for m in catalog.manifests)]
    if options.drills is not None:
        candidates = rng.sample(candidates, min(options.drills, len(candidates)))
    outcomes = []
    for bid in candidates:
        t = clock()
        rep = reports[bid]
        try:
            result = drill(repo, catalog, bid, options.scratch_dir, options.snapshot_dirs, workers=options.workers)
        except DrillUnavailable as exc:  # not tried: neither damage nor a pass
            rep.result, rep.note = "incomplete", f"restore drill not run: {exc}"
            outcomes.append({"backup": bid, "ok": False, "seconds": round(clock() - t, 3), "error": str(exc),
                             "unavailable": True})
            continue
        except (BtrsyncError, OSError) as exc:
            rep.add(Problem("restore", bid, f"restore drill failed: {exc}"))
            outcomes.append({"backup": bid, "ok": False, "seconds": round(clock() - t, 3), "error": str(exc)})
            continue
        rep.seconds += clock() - t
        if result.differences:
            rep.add(Problem("restore", bid, f"the restored tree differs from {result.compared_with}: "
                                            + "; ".join(result.differences[:5])))
        else:
            rep.level, rep.note = "restore", result.note
        outcomes.append({"backup": bid, "ok": not result.differences, "seconds": round(clock() - t, 3),
                         "bytes": result.bytes, "compared_with": result.compared_with})
    if not outcomes:
        return None
    return {"drills": outcomes, "ok": all(o["ok"] for o in outcomes),
            "seconds": round(sum(o["seconds"] for o in outcomes), 3)}


def _mark_affected(by_id: dict[str, Manifest], reports: dict[str, BackupReport]) -> None:
    """Every backup whose chain runs through a damaged one is affected (its own data may be fine);
    one whose file index alone is damaged still restores, so its dependents only get a note."""
    bad = {bid for bid, rep in reports.items() if rep.result == "damaged" and rep.blocks_restore}
    no_index = {bid for bid, rep in reports.items() if rep.result == "damaged" and not rep.blocks_restore}
    for bid, rep in reports.items():
        if rep.result != "ok" or bid not in by_id:
            continue
        cur, seen = by_id[bid], set()
        while cur.parent_id is not None and cur.parent_id not in seen:
            seen.add(cur.parent_id)
            if cur.parent_id in bad:
                rep.result = "affected"
                rep.note = f"depends on damaged backup {cur.parent_id}"
                break
            if cur.parent_id in no_index and rep.note is None:
                rep.note = (f"restores, but ls, find and restores of selected paths need the file index of "
                            f"{cur.parent_id}, which is damaged")
            if cur.parent_id not in by_id:
                break
            cur = by_id[cur.parent_id]
