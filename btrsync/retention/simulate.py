"""What a policy holds over time: a generated history pruned as a timer would (``retention
simulate``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from btrsync.retention.gfs import (
    _NOTHING_PROTECTED, FUTURE, MAX_SIMULATED, NEWEST, NO_POLICY, PARENT_PREFIX, UTC, Decision, Item,
    _evaluate, decide,
)
from btrsync.retention.periods import _require_aware
from btrsync.retention.policy import PERIOD_RULES, Policy

# --- simulation -------------------------------------------------------------------------------

_RULE_ORDER = ("newest", "last", "within", *PERIOD_RULES, "parent", "future", "no policy")


def reason_rule(reason: str) -> str:
    """The rule a keep reason of ``decide`` comes from: ``"daily"``, ``"parent"``...

    Anything that is not a rule's reason counts as ``"protected"`` (the caller's own reasons).
    """
    head, _, rest = reason.partition(" ")
    if reason == NEWEST or (rest and head in ("last", "within", *PERIOD_RULES)):
        return head
    if reason.startswith(PARENT_PREFIX):
        return "parent"
    return {FUTURE: "future", NO_POLICY: "no policy"}.get(reason, "protected")


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What a policy holds at ``end`` for a generated history, pruned as time advanced.

    ``held`` are the kept decisions of the last prune run (at ``end``) of the replay;
    ``one_shot`` are the ids one ``decide`` over the whole history as of ``end`` keeps.
    """

    policy: Policy
    start: datetime
    end: datetime
    every: timedelta
    max_chain: int | None
    prune_every: timedelta | None
    created: int
    prune_runs: int
    held: tuple[Decision, ...]
    one_shot: frozenset[str]

    @property
    def count(self) -> int:
        """How many backups are held at the end."""
        return len(self.held)

    @property
    def kept_times(self) -> tuple[datetime, ...]:
        """The times of the held backups, oldest first."""
        return tuple(d.time for d in self.held)

    @property
    def oldest_kept(self) -> datetime | None:
        """The oldest held backup's time (None when nothing is held)."""
        return self.held[0].time if self.held else None

    @property
    def per_rule(self) -> dict[str, int]:
        """How many held backups each rule keeps (a backup may count under several rules)."""
        counts = Counter(r for d in self.held for r in {reason_rule(x) for x in d.reasons})
        return {rule: counts[rule] for rule in _RULE_ORDER if counts[rule]}

    @property
    def parents_only(self) -> int:
        """How many held backups are kept only because a kept backup depends on them."""
        return sum(all(reason_rule(r) == "parent" for r in d.reasons) for d in self.held)

    @property
    def consistent(self) -> bool:
        """True when the replayed prunes hold exactly what one prune at the end would hold."""
        return self.one_shot == {d.id for d in self.held}


def simulate(
    policy: Policy,
    start: datetime,
    end: datetime,
    every: timedelta,
    *,
    max_chain: int | None = None,
    prune_every: timedelta | None = timedelta(days=1),
) -> SimulationResult:
    """Generate a backup every ``every`` from ``start`` to ``end`` and prune as time advances.

    With ``max_chain`` item i is a full when ``i % (max_chain + 1) == 0``, else an incremental
    on item i-1 (the push planner's rule); with ``None`` items are independent (snapshots).
    The replay prunes the survivors right after a backup whenever ``prune_every`` has passed
    since the last prune (``None``: after every backup), and once more at ``end``.
    """
    history = simulated_history(start, end, every, max_chain=max_chain)
    held, runs = _replay(history, policy, end, prune_every)
    one_shot = frozenset(d.id for d in decide(history, policy, end) if d.kept)
    return SimulationResult(
        policy, start, end, every, max_chain, prune_every, len(history), runs, held, one_shot
    )


def simulated_history(
    start: datetime, end: datetime, every: timedelta, *, max_chain: int | None = None
) -> list[Item]:
    """Backups ``#0``, ``#1``... every ``every`` (elapsed time) from ``start`` through ``end``."""
    _require_aware(start, "start")
    _require_aware(end, "end")
    if every <= timedelta(0) or end < start:
        raise ValueError("simulate: need every > 0 and start <= end")
    if max_chain is not None and max_chain < 0:
        raise ValueError(f"max_chain: expected a whole number >= 0 or None, got {max_chain!r}")
    total = (end.astimezone(UTC) - start.astimezone(UTC)) // every + 1
    if total > MAX_SIMULATED:
        raise ValueError(
            f"simulate: {total} backups is more than {MAX_SIMULATED}; use a larger step"
        )
    base = start.astimezone(UTC)
    return [Item(f"#{i}", base + i * every, _simulated_parent(i, max_chain)) for i in range(total)]


def _simulated_parent(index: int, max_chain: int | None) -> str | None:
    """The parent of the index-th simulated backup."""
    if max_chain is None or index % (max_chain + 1) == 0:
        return None
    return f"#{index - 1}"


def _replay(
    history: list[Item], policy: Policy, end: datetime, prune_every: timedelta | None
) -> tuple[tuple[Decision, ...], int]:
    """Add backups one by one, pruning the survivors as a timer would; return final keeps, runs.

    Intermediate prunes need only the kept set, not reasons for deletions or ``Decision``s.
    """
    survivors: list[Item] = []
    runs, last_prune = 0, None
    for item in history:
        survivors.append(item)
        if prune_every is None or last_prune is None or item.time - last_prune >= prune_every:
            kept = _evaluate(survivors, policy, item.time, _NOTHING_PROTECTED).reasons
            survivors = [s for s in survivors if s.id in kept]
            runs, last_prune = runs + 1, item.time
    final = decide(survivors, policy, end)
    return tuple(d for d in final if d.kept), runs + 1


