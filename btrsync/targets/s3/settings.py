"""The settings of one S3 target (all optional), and the values S3 and B2 accept for them.

:data:`btrsync.targets.settings.S3` lists the names; ``S3Settings`` has exactly those fields (a
test compares them).  Timeouts: docs/targets-s3.md, "Deadlines".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from btrsync.errors import ConfigError
from btrsync.targets.s3.objectlock import DEFAULT_MARGIN, check_mode
from btrsync.targets.s3.parts import DEFAULT_PART_SIZE, MAX_PART_SIZE, MIN_PART_SIZE
from btrsync.units import parse_interval, parse_size

# A store that stops answering (a frozen server, a dead route) is noticed after one socket timeout
# and given up on after the deadline: a push fails in minutes, not tens of minutes.  30 s without a
# byte is far beyond what S3 or B2 take to answer a request (a slow CompleteMultipartUpload sends
# whitespace meanwhile).  See docs/targets-s3.md, "Deadlines".
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_OPERATION_DEADLINE = 60.0
DEFAULT_CLEANUP_TIMEOUT = 10.0
MAX_SOCKET_TIMEOUT = 86400.0


@dataclass(frozen=True)
class S3Settings:
    """Per-target settings (all optional); unset ones come from the standard AWS env and files."""

    endpoint: str | None = None
    region: str | None = None
    credentials_file: Path | None = None
    profile: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    max_inflight_parts: int = 4
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_attempts: int = 5
    operation_deadline: float = DEFAULT_OPERATION_DEADLINE
    cleanup_timeout: float = DEFAULT_CLEANUP_TIMEOUT
    object_lock: str | None = None  # governance or compliance: docs/immutable.md
    object_lock_margin: timedelta = DEFAULT_MARGIN

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> S3Settings:
        """Build from a config mapping (``-`` or ``_`` in names); raises ``ConfigError``."""
        given = {str(k).replace("-", "_"): v for k, v in settings.items() if v is not None}
        try:
            made = cls(
                endpoint=_opt_str(given.get("endpoint")),
                region=_opt_str(given.get("region")),
                credentials_file=Path(given["credentials_file"]) if "credentials_file" in given else None,
                profile=_opt_str(given.get("profile")),
                part_size=parse_size(given.get("part_size", DEFAULT_PART_SIZE)),
                max_inflight_parts=int(given.get("max_inflight_parts", 4)),
                connect_timeout=float(given.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
                read_timeout=float(given.get("read_timeout", DEFAULT_READ_TIMEOUT)),
                max_attempts=int(given.get("max_attempts", 5)),
                operation_deadline=float(given.get("operation_deadline", DEFAULT_OPERATION_DEADLINE)),
                cleanup_timeout=float(given.get("cleanup_timeout", DEFAULT_CLEANUP_TIMEOUT)),
                object_lock=check_mode(given.get("object_lock")),
                object_lock_margin=_margin(given.get("object_lock_margin", DEFAULT_MARGIN)),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid S3 target setting: {exc}") from None
        made.check()
        return made

    def check(self) -> None:
        """Raise ``ConfigError`` for values S3 or B2 would refuse."""
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ConfigError(
                f"S3 part_size {self.part_size} must be between {MIN_PART_SIZE} (5 MiB) and "
                f"{MAX_PART_SIZE} bytes"
            )
        if self.max_inflight_parts < 1 or self.max_attempts < 1:
            raise ConfigError("S3 max_inflight_parts and max_attempts must be at least 1")
        timeouts = (self.connect_timeout, self.read_timeout, self.operation_deadline, self.cleanup_timeout)
        if not all(0 < t < float("inf") for t in timeouts):
            raise ConfigError("S3 connect_timeout, read_timeout, operation_deadline and cleanup_timeout "
                              "must be positive numbers of seconds")
        if self.object_lock is not None:
            check_mode(self.object_lock)
        if not timedelta(0) <= self.object_lock_margin <= timedelta(days=3650):
            raise ConfigError("S3 object_lock_margin must be between 0 and 3650 days (e.g. \"7d\")")
        # a socket cannot take a timeout past ~292 years (it failed every request, retried as a
        # network error); more than a day of silence is never what is meant
        if max(self.connect_timeout, self.read_timeout, self.cleanup_timeout) > MAX_SOCKET_TIMEOUT:
            raise ConfigError(f"S3 connect_timeout, read_timeout and cleanup_timeout are socket timeouts: at "
                              f"most {MAX_SOCKET_TIMEOUT:.0f} seconds (a day)")

    def cleanup_settings(self) -> S3Settings:
        """These settings with socket timeouts of at most ``cleanup_timeout``: for the requests
        made after one has given up (aborting the upload, removing the lease)."""
        return replace(self, connect_timeout=min(self.connect_timeout, self.cleanup_timeout),
                       read_timeout=min(self.read_timeout, self.cleanup_timeout))


def _opt_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _margin(value: Any) -> timedelta:
    """``object_lock_margin``: a duration such as ``"7d"`` or ``"36h"``, or a number of days."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"object_lock_margin must be a duration such as \"7d\", not {value!r}")
    if isinstance(value, int | float):
        return timedelta(days=value)
    return parse_interval(str(value))
