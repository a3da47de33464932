"""Turn configuration defaults and command-line overrides into ``PushSettings``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from btrsync.config.model import PushDefaults, chain_settings
from btrsync.errors import UsageError
from btrsync.ops.push import PushSettings
from btrsync.pipeline.schedule import RateSchedule
from btrsync.pipeline.throttle import TokenBucket


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
        bucket=bucket_for(schedule), chain=chosen, full_threshold=threshold,
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
