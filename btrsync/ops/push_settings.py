"""Turn configuration defaults and command-line overrides into ``PushSettings``."""

from __future__ import annotations

from btrsync.config.model import PushDefaults
from btrsync.errors import UsageError
from btrsync.ops.push import PushSettings
from btrsync.pipeline.throttle import TokenBucket
from btrsync.units import parse_size


def settings_from(defaults: PushDefaults, *, bwlimit: str | None = None, max_chain: int | None = None) -> PushSettings:
    try:
        rate = parse_size(bwlimit) if bwlimit else defaults.bwlimit
    except ValueError as exc:
        raise UsageError(f"--bwlimit: {exc}") from None
    if max_chain is not None and max_chain < 0:
        raise UsageError("--max-chain must be 0 or more")
    return PushSettings(
        chunk_size=defaults.chunk_size, segment_size=defaults.segment_size,
        zstd_level=defaults.zstd_level, workers=defaults.workers,
        max_chain=defaults.max_chain if max_chain is None else max_chain,
        bucket=TokenBucket(rate) if rate else None,
    )
