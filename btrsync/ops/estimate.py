"""What a push will send, known before it starts: the total behind its percentage and ETA.

Tried in order, the first that answers is used (``Estimate.basis`` says which):

1. ``btrfs send --no-data [-p PARENT] SNAPSHOT``: the very stream without file data, in which
   each write is an UPDATE_EXTENT command naming the size it would carry.  The stream's length
   plus those sizes is the real stream's length within a fraction of a percent; it is high by the
   compression saved where ``--compressed-data`` sends extents compressed.  It reads metadata
   only: milliseconds for a typical incremental, about a second per few hundred thousand files
   for a full.  It is abandoned after ``budget`` seconds (default 10).  A push's read-ahead of
   the source (``ops/push/readahead.py``) walks that very stream anyway and tells its measure when
   the stream is short enough to read at once (up to 32,768 writes); then there is no second walk.
2. The stream size of the newest backup of the same subvolume and kind (full or incremental)
   on the target: a full's size changes slowly; an incremental's is a rough guess.
3. None: progress then shows bytes and rate, without a percentage or an ETA.

An estimate never fails a push: any error only means no estimate.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path

from btrsync.btrfs.nodata import MetadataSend
from btrsync.btrfs.send import SendOptions
from btrsync.catalog.manifest import Manifest
from btrsync.errors import BtrsyncError
from btrsync.progress import Estimate

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 10.0  # seconds for btrfs send --no-data
_MAGIC = b"btrfs-stream\0"
_STREAM_HEADER = len(_MAGIC) + 4
_CMD = struct.Struct("<IHI")  # length of the attributes, command, crc
_ATTR = struct.Struct("<HH")  # type, length
_U64 = struct.Struct("<Q")
_CMD_UPDATE_EXTENT = 22
_ATTR_SIZE = 4


class _OverBudget(Exception):
    pass


class ExtentSizes:
    """Walks a ``--no-data`` stream fed in pieces: its length, and the sum of the SIZE attribute
    of its UPDATE_EXTENT commands (the data bytes the real stream carries)."""

    def __init__(self) -> None:
        self.stream_bytes = 0
        self.data_bytes = 0
        self._buf = bytearray()
        self._started = False

    @property
    def total(self) -> int:
        return self.stream_bytes + self.data_bytes

    def feed(self, chunk: bytes) -> None:
        self.stream_bytes += len(chunk)
        buf = self._buf
        buf += chunk
        pos = 0
        if not self._started:
            if len(buf) < _STREAM_HEADER:
                return
            if bytes(buf[: len(_MAGIC)]) != _MAGIC:
                raise ValueError("not a btrfs send stream")
            pos, self._started = _STREAM_HEADER, True
        n = len(buf)
        while n - pos >= _CMD.size:
            length, cmd, _crc = _CMD.unpack_from(buf, pos)
            end = pos + _CMD.size + length
            if end > n:
                break
            if cmd == _CMD_UPDATE_EXTENT:
                self._update_extent(buf, pos + _CMD.size, end)
            pos = end
        del buf[:pos]

    def _update_extent(self, buf: bytearray, pos: int, end: int) -> None:
        while pos + _ATTR.size <= end:
            kind, length = _ATTR.unpack_from(buf, pos)
            if kind == _ATTR_SIZE and length == _U64.size:
                self.data_bytes += _U64.unpack_from(buf, pos + _ATTR.size)[0]
            pos += _ATTR.size + length


def estimate_push(snapshot: Path, parent: Path | None, history: Iterable[Manifest], subvolume: str, *,
                  budget: float = DEFAULT_BUDGET, clock: Callable[[], float] = time.monotonic,
                  measured: Future[int | None] | None = None) -> Estimate | None:
    """The expected stream size of sending ``snapshot`` (on ``parent``), see the module's doc.
    ``measured``: the same ``--no-data`` stream's measure from the push's read-ahead
    (``ops/push/readahead.py``), which walks it anyway; waited for up to ``budget`` seconds, and
    only when it has none (None: its stream was longer than it reads at once) is there a walk here."""
    t0 = clock()
    found = None
    if measured is not None:
        try:
            size = measured.result(timeout=budget)
        except TimeoutError:
            size = None
        if size is not None:
            found = Estimate(size, "btrfs send --no-data")
    if found is None:
        found = _metadata_send(snapshot, parent, budget, clock)
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
    sizes = ExtentSizes()
    try:
        with MetadataSend(snapshot, parent, SendOptions()) as send:
            for chunk in send.chunks(1 << 20):
                sizes.feed(chunk)
                if clock() > deadline:
                    raise _OverBudget
    except _OverBudget:
        log.debug("estimate: btrfs send --no-data of %s took more than %.0fs; not used", snapshot, budget)
        return None
    except (BtrsyncError, OSError, ValueError, struct.error) as exc:
        log.debug("estimate: btrfs send --no-data of %s failed: %s", snapshot, exc)
        return None
    return Estimate(sizes.total, "btrfs send --no-data")


def _previous(history: Iterable[Manifest], subvolume: str, *, full: bool) -> Estimate | None:
    same = [m for m in history if m.subvolume == subvolume and (m.depth == 0) == full]
    if not same:
        return None
    newest = max(same, key=lambda m: (m.snapshot_time, m.snapshot))
    return Estimate(newest.stream_bytes, f"size of the previous {'full' if full else 'incremental'} backup")
