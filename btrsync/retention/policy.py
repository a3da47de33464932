"""A retention policy: which GFS rules apply, in which timezone, with which week start.

A ``Policy`` is a plain value.  ``Policy.from_mapping`` builds one from a dict of ``keep_*``
settings (as a config file provides them) and raises ``ValueError`` naming the offending key;
the constructor validates the same way, so an invalid ``Policy`` cannot exist.  The rules are
evaluated by ``btrsync.retention.gfs.decide``; docs/retention.md defines their semantics.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: Value of a ``keep_*`` count meaning "every period that has a backup" (btrbk ``*``, borg ``-1``).
UNLIMITED = -1

#: The calendar-period rules, finest first.
PERIOD_RULES: tuple[str, ...] = ("hourly", "daily", "weekly", "monthly", "yearly")
COUNT_SETTINGS: tuple[str, ...] = ("keep_last",) + tuple(f"keep_{r}" for r in PERIOD_RULES)
SETTINGS: tuple[str, ...] = COUNT_SETTINGS + ("keep_within", "timezone", "week_start")
WEEKDAYS: tuple[str, ...] = (
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
)  # fmt: skip

_UNLIMITED_WORDS = frozenset({"unlimited", "all", "*"})
_DURATION_TERM = re.compile(r"\s*(\d+)\s*([a-z]+)\s*")
# Months and years are rounded *up* so that "within 1m" always covers a whole calendar month.
_DURATION_UNITS: dict[str, timedelta] = {
    **dict.fromkeys(("h", "hour", "hours"), timedelta(hours=1)),
    **dict.fromkeys(("d", "day", "days"), timedelta(days=1)),
    **dict.fromkeys(("w", "week", "weeks"), timedelta(weeks=1)),
    **dict.fromkeys(("m", "month", "months"), timedelta(days=31)),
    **dict.fromkeys(("y", "year", "years"), timedelta(days=366)),
}


def parse_duration(text: str) -> timedelta:
    """Parse a retention window such as ``36h``, ``7d``, ``2w``, ``1m``, ``1y`` or ``1y6m``.

    Units: h(ours), d(ays), w(eeks) = 7 d, m(onths) = 31 d, y(ears) = 366 d.  Terms add up;
    the total must be positive.  Raises ``ValueError`` with the offending text.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as '36h', '7d', '2w', '1y', got {text!r}")
    total, pos, norm = timedelta(0), 0, text.strip().lower()
    while pos < len(norm):
        match = _DURATION_TERM.match(norm, pos)
        if match is None or match.group(2) not in _DURATION_UNITS:
            raise ValueError(f"invalid duration {text!r}: use e.g. '36h', '7d', '2w', '6m', '1y'")
        total += int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if total <= timedelta(0):
        raise ValueError(f"invalid duration {text!r}: must be longer than zero")
    return total


def _check_count(key: str, value: object) -> None:
    """A ``keep_*`` count is None, a whole number >= 0, or ``UNLIMITED``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < UNLIMITED:
        raise ValueError(
            f"{key}: expected a whole number >= 0 or 'unlimited', got {value!r}"
        )


def _check_timezone(value: object) -> None:
    """The timezone must be an IANA name zoneinfo knows (``UTC``, ``Europe/Berlin``...)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"timezone: expected an IANA name such as 'Europe/Berlin', got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"timezone: unknown IANA timezone {value!r} (e.g. 'UTC', 'Europe/Berlin')"
        ) from None


def _check_within(value: object) -> None:
    """``keep_within`` is None or a duration string ``parse_duration`` accepts."""
    if value is None:
        return
    try:
        parse_duration(value)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"keep_within: {exc}") from None


def _check_week_start(value: object) -> None:
    """``week_start`` is 0 (Monday) .. 6 (Sunday), as ``datetime.weekday()`` counts."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 6:
        raise ValueError(f"week_start: expected 0 (Monday) .. 6 (Sunday), got {value!r}")


@dataclass(frozen=True, slots=True)
class Policy:
    """Which backups to keep: GFS counts, a keep-within window, and the calendar they use.

    ``keep_*`` counts are ``None`` (rule unused), ``0`` (rule keeps nothing), a positive
    number of periods that have a backup, or ``UNLIMITED``.  ``keep_within`` is a duration
    string (see ``parse_duration``) measured back from ``now``.  Calendar periods are
    computed in ``timezone`` (IANA name); weeks start on ``week_start`` (0 = ISO Monday).
    """

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None
    timezone: str = "UTC"
    week_start: int = 0

    def __post_init__(self) -> None:
        """Validate every field; raise ``ValueError`` naming the first bad one."""
        for key in COUNT_SETTINGS:
            _check_count(key, getattr(self, key))
        _check_within(self.keep_within)
        _check_timezone(self.timezone)
        _check_week_start(self.week_start)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, object]) -> Policy:
        """Build a policy from ``keep_*``/``timezone``/``week_start`` settings of a config.

        Counts accept integers, digit strings and ``"unlimited"``/``"all"``/``"*"``;
        ``week_start`` accepts a weekday name (``"monday"``, ``"sun"``) or 0..6.
        Raises ``ValueError`` naming the bad key.
        """
        if not isinstance(settings, Mapping):
            raise ValueError(f"retention: expected a mapping of keep_* settings, got {settings!r}")
        values: dict[str, object] = {}
        for key, value in settings.items():
            _check_known(key)
            values[key] = _normalise(key, value)
        return cls(**values)  # type: ignore[arg-type]

    def is_empty(self) -> bool:
        """True when no rule can keep anything (all unset or zero): such a policy keeps all."""
        counts = (getattr(self, key) for key in COUNT_SETTINGS)
        return self.keep_within is None and all(n is None or n == 0 for n in counts)

    def count(self, rule: str) -> int | None:
        """The count of ``rule`` (``"last"``, ``"hourly"``, ... ``"yearly"``)."""
        return getattr(self, f"keep_{rule}")  # type: ignore[no-any-return]

    @property
    def tz(self) -> ZoneInfo:
        """The timezone calendar periods are computed in."""
        return ZoneInfo(self.timezone)

    @property
    def within(self) -> timedelta | None:
        """``keep_within`` as a ``timedelta`` (None when unset)."""
        return None if self.keep_within is None else parse_duration(self.keep_within)

    def describe(self) -> str:
        """One line listing the rules in use, e.g. ``keep_daily=7 keep_weekly=4 timezone=UTC``."""
        parts = [f"{k}={show_count(getattr(self, k))}" for k in COUNT_SETTINGS
                 if getattr(self, k) is not None]
        if self.keep_within is not None:
            parts.append(f"keep_within={self.keep_within}")
        parts.append(f"timezone={self.timezone}")
        if self.week_start:
            parts.append(f"week_start={WEEKDAYS[self.week_start]}")
        return " ".join(parts) if not self.is_empty() else "no policy (keeps everything)"


def show_count(n: int) -> str:
    """Render a ``keep_*`` count for humans (``UNLIMITED`` as ``unlimited``)."""
    return "unlimited" if n == UNLIMITED else str(n)


def _check_known(key: object) -> None:
    """Reject keys that are not settings, suggesting the nearest known one."""
    if key in SETTINGS:
        return
    close = difflib.get_close_matches(str(key).replace("-", "_"), SETTINGS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(SETTINGS)}"
    raise ValueError(f"{key}: unknown retention setting; {hint}")


def _normalise(key: str, value: object) -> object:
    """Turn config-file spellings into constructor values (validation happens there)."""
    if key in COUNT_SETTINGS:
        return _normalise_count(value)
    if key == "week_start":
        return _normalise_weekday(value)
    return value.strip() if isinstance(value, str) else value


def _normalise_count(value: object) -> object:
    """``"unlimited"``/``"all"``/``"*"`` → ``UNLIMITED``; digit strings → int."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _UNLIMITED_WORDS:
            return UNLIMITED
        if word.isdigit():
            return int(word)
    return value


def _normalise_weekday(value: object) -> object:
    """Weekday names and unique prefixes of at least three letters → 0..6."""
    if isinstance(value, str):
        word = value.strip().lower()
        matches = [i for i, name in enumerate(WEEKDAYS) if len(word) >= 3 and name.startswith(word)]
        if len(matches) == 1:
            return matches[0]
    return value
