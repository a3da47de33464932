"""Calendar periods of the GFS rules (hour, day, week, month, year) in a policy's timezone: the
keys ``decide`` groups backups by, their names in reasons, and the tree planner's period starts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from btrsync.retention.policy import Policy


def _require_aware(value: datetime, what: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a timezone-aware datetime."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{what}: expected a timezone-aware datetime, got {value!r}")


# --- calendar periods -------------------------------------------------------------------------
# Key functions map the local times (already in the policy timezone) of all items, and their local
# day ordinals, to period keys, compared for equality only; label functions name the period of
# one local time in reasons.  Both take the week start (0 = Monday).  Keys are computed in bulk
# (list comprehensions, no call per item): decide is O(n) per rule.


def _hour_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """Local hours; ``fold`` separates the two passes through a DST fall-back hour."""
    return [(day * 24 + lt.hour) * 2 + lt.fold for day, lt in zip(days, local)]


def _day_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """Local calendar days (proleptic ordinals)."""
    return list(days)


def _week_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """The ordinal of the local day each week starts on (ordinal 1 was a Monday)."""
    return [day - (day + 6 - week_start) % 7 for day in days]


def _month_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """Local calendar months."""
    return [lt.year * 12 + lt.month for lt in local]


def _year_keys(local: Sequence[datetime], days: Sequence[int], week_start: int) -> list[object]:
    """Local calendar years."""
    return [lt.year for lt in local]


def _utc_offset(lt: datetime) -> str:
    """The UTC offset of ``lt`` as ``+HH:MM``."""
    offset = lt.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _hour_label(lt: datetime, week_start: int) -> str:
    """``2026-11-24T13``; the offset is appended when the local hour occurs twice (DST)."""
    text = f"{lt.year:04d}-{lt.month:02d}-{lt.day:02d}T{lt.hour:02d}"
    twin = lt.replace(fold=1 - lt.fold)
    return text + _utc_offset(lt) if twin.utcoffset() != lt.utcoffset() else text


def _day_label(lt: datetime, week_start: int) -> str:
    """``2026-11-20``."""
    return lt.date().isoformat()


def _week_label(lt: datetime, week_start: int) -> str:
    """``2026-W47`` for ISO weeks; ``from 2026-11-22`` when weeks start on another day."""
    if week_start == 0:
        year, week, _ = lt.isocalendar()
        return f"{year:04d}-W{week:02d}"
    first_day = lt.date() - timedelta(days=(lt.weekday() - week_start) % 7)
    return f"from {first_day.isoformat()}"


def _month_label(lt: datetime, week_start: int) -> str:
    """``2026-11``."""
    return f"{lt.year:04d}-{lt.month:02d}"


def _year_label(lt: datetime, week_start: int) -> str:
    """``2026``."""
    return f"{lt.year:04d}"


_Keys = Callable[[Sequence[datetime], Sequence[int], int], list[object]]
_Label = Callable[[datetime, int], str]
_PERIODS: dict[str, tuple[_Keys, _Label]] = {
    "hourly": (_hour_keys, _hour_label),
    "daily": (_day_keys, _day_label),
    "weekly": (_week_keys, _week_label),
    "monthly": (_month_keys, _month_label),
    "yearly": (_year_keys, _year_label),
}


def period_label(rule: str, when: datetime, policy: Policy) -> str:
    """The name of the ``rule`` period (``"daily"``...) containing ``when``, e.g. ``2026-W47``."""
    _require_aware(when, "when")
    return _PERIODS[rule][1](when.astimezone(policy.tz), policy.week_start)


def period_keys(rule: str, local: Sequence[datetime], week_start: int) -> list[object]:
    """``period_key`` of many local times (already in the policy's timezone) at once."""
    return _PERIODS[rule][0](local, [lt.toordinal() for lt in local], week_start)


def period_key(rule: str, when: datetime, policy: Policy) -> object:
    """The key ``decide`` gives the ``rule`` period holding ``when`` (equal keys: same period)."""
    _require_aware(when, "when")
    local = when.astimezone(policy.tz)
    return _PERIODS[rule][0]([local], [local.toordinal()], policy.week_start)[0]


def _first_of_each(keys: Sequence[object]) -> list[int]:
    """Indices of the first occurrence of each key, in order (one C-level pass, no Python loop)."""
    last = len(keys) - 1
    firsts = dict(zip(reversed(keys), range(last, -1, -1)))  # later (= earlier index) wins
    return sorted(firsts.values())


