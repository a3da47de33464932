"""``PushSettings``: the pipeline's settings, from configuration defaults and command-line overrides."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from btrsync.btrfs.send import SendOptions
from btrsync.config.model import PushDefaults, chain_settings
from btrsync.errors import UsageError
from btrsync.ops.push.readahead import DEFAULT_WINDOW
from btrsync.pipeline.schedule import RateSchedule
from btrsync.pipeline.throttle import TokenBucket
from btrsync.planner.plan import DEFAULT_MAX_CHAIN
from btrsync.planner.tree import DEFAULT_FULL_THRESHOLD

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PushSettings:
    """Pipeline settings.  Memory bound: ``(window + 1) × chunk_size × ~2`` plus the target's own
    in-flight parts (for S3: ``(max_inflight_parts + 2) × part_size``, one budget of parts
    uploading shared by the two segment puts plus the part each is filling)."""

    chunk_size: int = 4 * MiB
    segment_size: int = 128 * MiB
    zstd_level: int = 3
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    max_chain: int = DEFAULT_MAX_CHAIN
    send_options: SendOptions | None = None  # None: the best the kernel and btrfs-progs support
    bucket: TokenBucket | None = None
    chain: str = "tree"  # tree: parents chosen by the retention policy (planner/tree.py); linear
    full_threshold: float = DEFAULT_FULL_THRESHOLD  # tree: a full when the best delta is more than this share
    read_ahead: int = DEFAULT_WINDOW  # bytes of the snapshot read ahead of btrfs send; 0: none
    #: asked before each segment is started, refuses it by raising (``write_segments``): the
    #: run's ``window_end = "stop"`` ends a push at a segment boundary
    may_start_segment: Callable[[int], None] | None = None

    @property
    def window(self) -> int:
        return 2 * self.workers


def settings_from(defaults: PushDefaults, *, bwlimit: str | None = None, max_chain: int | None = None,
                  target: dict[str, Any] | None = None, chain: str | None = None) -> PushSettings:
    """``target``: the target's own settings ([targets.NAME]: ``chain``, ``full_threshold``);
    ``chain``: ``--chain`` of the command line, over both."""
    try:
        schedule = RateSchedule.parse(bwlimit) if bwlimit else defaults.bwlimit
    except ValueError as exc:
        raise UsageError(f"--bwlimit: {exc}") from None
    if max_chain is not None and max_chain < 0:
        raise UsageError("--max-chain must be 0 or more")
    try:
        chosen, threshold = chain_settings({**(target or {}), **({"chain": chain} if chain else {})}, defaults)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return PushSettings(
        chunk_size=defaults.chunk_size, segment_size=defaults.segment_size,
        zstd_level=defaults.zstd_level, workers=defaults.workers,
        max_chain=defaults.max_chain if max_chain is None else max_chain,
        bucket=bucket_for(schedule), chain=chosen, full_threshold=threshold, read_ahead=defaults.read_ahead,
    )


def bucket_for(schedule: RateSchedule) -> TokenBucket | None:
    """One token bucket for the whole process, following the schedule (None when unlimited).

    It starts empty: the limit holds from the first byte (a full bucket would let one second's
    worth through at once, so the first seconds ran at up to twice the limit)."""
    if schedule.is_unlimited:
        return None
    if not schedule.windows:
        assert schedule.default is not None
        return TokenBucket(schedule.default, initial=0)
    return TokenBucket(schedule.default or 1 << 20, schedule=lambda: schedule.rate_at(datetime.now(UTC)),
                       initial=0)
