"""What a push will send, known before it starts: the total behind its percentage and ETA.

Tried in order, the first that answers is used (``Estimate.basis`` says which):

1. ``btrfs send --no-data [-p PARENT] SNAPSHOT``: the very stream without file data, in which
   each write is an UPDATE_EXTENT command naming the size it would carry.  The stream's length
   plus those sizes is the real stream's length within a fraction of a percent; it is high by the
   compression saved where ``--compressed-data`` sends extents compressed.  It reads metadata
   only: milliseconds for a typical incremental, about a second per few hundred thousand files
   for a full.  It is abandoned after ``budget`` seconds (default 10).  A push's read-ahead of
   the source (``ops/push/readahead.py``) walks that very stream anyway, with the same reader
   (``sendstream/nodata.py``), and tells its measure when the stream is short enough to read at
   once (up to 32,768 writes); then there is no second walk.
2. The stream size of the newest backup of the same subvolume and kind (full or incremental)
   on the target: a full's size changes slowly; an incremental's is a rough guess.
3. None: progress then shows bytes and rate, without a percentage or an ETA.

An estimate never fails a push: any error only means no estimate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path

from btrsync.btrfs.nodata import MetadataSend
from btrsync.btrfs.send import SendOptions
from btrsync.catalog.manifest import Manifest
from btrsync.errors import BtrsyncError
from btrsync.progress import Estimate
from btrsync.sendstream.nodata import NoDataWalk

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 10.0  # seconds for btrfs send --no-data


class _OverBudget(Exception):
    pass


def estimate_push(snapshot: Path, parent: Path | None, history: Iterable[Manifest], subvolume: str, *,
                  budget: float = DEFAULT_BUDGET, clock: Callable[[], float] = time.monotonic,
                  measured: Future[int | None] | None = None) -> Estimate | None:
    """The expected stream size of sending ``snapshot`` (on ``parent``), see the module's doc.
    ``measured``: the same ``--no-data`` stream's measure from the push's read-ahead
    (``ops/push/readahead.py``), which walks it anyway; waited for within ``budget`` seconds, and
    only when it has none (None: its stream was longer than it reads at once) is there a walk here,
    in what is left of the budget."""
    t0 = clock()
    found = None
    if measured is not None:
        try:
            size = measured.result(timeout=budget)
        except TimeoutError:
            size = None
        if size is not None:
            found = Estimate(size, "btrfs send --no-data")
    left = budget - (clock() - t0)  # one budget for both: a read-ahead that kept it waiting leaves less
    if found is None and left > 0:
        found = _metadata_send(snapshot, parent, left, clock)
    if found is None:
        found = _previous(history, subvolume, full=parent is None)
    log.debug("estimate snapshot=%s bytes=%s basis=%s seconds=%.2f", snapshot,
              found.bytes if found else None, found.basis if found else None, clock() - t0)
    return found


def stream_size(snapshot: Path, parent: Path | None, budget: float = DEFAULT_BUDGET,
                clock: Callable[[], float] = time.monotonic) -> int | None:
    """The stream of sending ``snapshot`` (on ``parent``) as ``btrfs send --no-data`` measures
    it; None where that fails or takes longer than ``budget`` seconds.  The tree planner prices
    candidate parents with it."""
    found = _metadata_send(snapshot, parent, budget, clock)
    return found.bytes if found is not None else None


def _metadata_send(snapshot: Path, parent: Path | None, budget: float,
                   clock: Callable[[], float]) -> Estimate | None:
    deadline = clock() + budget
    walk = NoDataWalk()
    try:
        with MetadataSend(snapshot, parent, SendOptions()) as send:
            for chunk in send.chunks(1 << 20):
                walk.feed(chunk)
                if clock() > deadline:
                    raise _OverBudget
            walk.finish()
    except _OverBudget:
        log.debug("estimate: btrfs send --no-data of %s took more than %.0fs; not used", snapshot, budget)
        return None
    except (BtrsyncError, OSError, ValueError) as exc:  # StreamError is a ValueError
        log.debug("estimate: btrfs send --no-data of %s failed: %s", snapshot, exc)
        return None
    return Estimate(walk.size, "btrfs send --no-data")


def _previous(history: Iterable[Manifest], subvolume: str, *, full: bool) -> Estimate | None:
    same = [m for m in history if m.subvolume == subvolume and (m.depth == 0) == full]
    if not same:
        return None
    newest = max(same, key=lambda m: (m.snapshot_time, m.snapshot))
    return Estimate(newest.stream_bytes, f"size of the previous {'full' if full else 'incremental'} backup")
