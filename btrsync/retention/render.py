"""The plain-text report of a simulation."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta

from btrsync.retention.simulate import SimulationResult

# --- rendering --------------------------------------------------------------------------------


def render_simulation(result: SimulationResult, *, bar_width: int = 40) -> str:
    """A plain-text report: summary, per-rule counts, a month timeline, and every held backup."""
    sections = [
        _render_summary(result),
        _render_rules(result),
        _render_months(result, bar_width),
        _render_held(result),
    ]
    return "\n\n".join(sections) + "\n"


def _human(delta: timedelta) -> str:
    """``1h``, ``15min``, ``1d``, ``90s``: the largest unit that divides ``delta``."""
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{delta.total_seconds():g}s"


def _local(result: SimulationResult, when: datetime) -> str:
    """``when`` in the policy timezone, to the minute."""
    return when.astimezone(result.policy.tz).strftime("%Y-%m-%d %H:%M")


def _render_summary(result: SimulationResult) -> str:
    """The header: policy, history, chains, pruning, and what is held."""
    span = f"{_local(result, result.start)} .. {_local(result, result.end)}"
    lines = [
        "retention simulation",
        f"  policy   {result.policy.describe()}",
        f"  history  {result.created} backups every {_human(result.every)}, "
        f"{span} ({result.policy.timezone})",
        f"  chains   {_describe_chains(result.max_chain)}",
        f"  pruning  {result.prune_runs} runs ({_describe_cadence(result.prune_every)}, "
        f"and at the end); same as one prune at the end: {'yes' if result.consistent else 'NO'}",
        f"  held     {result.count} backups{_describe_oldest(result)}",
        f"  parents  {result.parents_only} kept only as chain parents",
    ]
    return "\n".join(lines)


def _describe_chains(max_chain: int | None) -> str:
    """How the simulated backups depend on each other."""
    if max_chain is None:
        return "independent snapshots (no chains)"
    return f"a full every {max_chain + 1} backups (max_chain {max_chain})"


def _describe_cadence(prune_every: timedelta | None) -> str:
    """How often the replay prunes."""
    if prune_every is None:
        return "after every backup"
    return f"at most once per {_human(prune_every)}"


def _describe_oldest(result: SimulationResult) -> str:
    """``, oldest 2026-01-01 00:00 (364 days before the end)`` or nothing."""
    oldest = result.oldest_kept
    if oldest is None:
        return ""
    return f", oldest {_local(result, oldest)} ({(result.end - oldest).days} days before the end)"


def _render_rules(result: SimulationResult) -> str:
    """Per-rule counts."""
    rows = [f"  {'rule':<10} {'kept':>6}"]
    rows += [f"  {rule:<10} {n:>6}" for rule, n in result.per_rule.items()]
    return "\n".join(rows)


def _months(result: SimulationResult) -> list[str]:
    """Every ``YYYY-MM`` from the start month to the end month, in the policy timezone."""
    tz = result.policy.tz
    first, last = result.start.astimezone(tz), result.end.astimezone(tz)
    index, stop = first.year * 12 + first.month - 1, last.year * 12 + last.month - 1
    return [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in range(index, stop + 1)]


def _render_months(result: SimulationResult, bar_width: int) -> str:
    """A coarse timeline: held backups per month, with a bar."""
    per_month = Counter(_local(result, t)[:7] for t in result.kept_times)
    peak = max(per_month.values(), default=0)
    scale = 1.0 if peak <= bar_width else bar_width / peak
    rows = [f"  {'month':<8} {'kept':>6}"]
    for month in _months(result):
        n = per_month[month]
        rows.append(f"  {month:<8} {n:>6}  {'#' * (math.ceil(n * scale) if n else 0)}".rstrip())
    return "\n".join(rows)


def _render_held(result: SimulationResult) -> str:
    """Every held backup, oldest first, with its reasons."""
    rows = ["  held backups, oldest first"]
    rows += [f"  {_local(result, d.time)}  {d.id:<8} {', '.join(d.reasons)}" for d in result.held]
    return "\n".join(rows)

