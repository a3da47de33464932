"""The order in which to delete what ``decide`` dropped: children before parents."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable

from btrsync.retention.gfs import Decision, Item

# --- deletion order ---------------------------------------------------------------------------


def deletion_order(decisions: Iterable[Decision], items: Iterable[Item]) -> list[str]:
    """Ids to delete, every child before its parent, otherwise newest first.

    Deleting in this order, a crash at any point never leaves a surviving item whose parent was
    already deleted.  Items in a parent cycle (corrupt metadata) come last, newest first.
    Raises ``ValueError`` when a decision names an id not among ``items``.
    """
    parent_of = {item.id: item.parent for item in items}
    doomed = [d for d in decisions if d.action == "delete"]
    unknown = {d.id for d in doomed} - parent_of.keys()
    if unknown:
        raise ValueError(f"decisions for unknown items: {', '.join(sorted(unknown)[:5])}")
    doomed.sort(key=lambda d: d.id, reverse=True)
    doomed.sort(key=lambda d: d.time.timestamp(), reverse=True)  # stable: newest, then id
    rank = {d.id: n for n, d in enumerate(doomed)}
    if all(rank.get(parent_of[c], n + 1) > n for c, n in rank.items()):  # type: ignore[arg-type]
        return list(rank)  # the usual case: every doomed parent is older than its children
    waiting = Counter(rank[p] for c in rank if (p := parent_of[c]) in rank and p != c)
    ready = [(n, i) for i, n in rank.items() if n not in waiting]  # already a heap: ranks ascend
    order = _drain(ready, waiting, parent_of, rank)
    emitted = set(order)
    return order + [i for i in rank if i not in emitted]  # parent cycles, newest first


def _drain(
    ready: list[tuple[int, str]], waiting: Counter[int], parent_of: dict[str, str | None],
    rank: dict[str, int],
) -> list[str]:
    """Kahn's algorithm: emit ready ids; a parent becomes ready once its doomed children are out.

    ``waiting`` counts, per rank, the doomed children not yet emitted.
    """
    order: list[str] = []
    while ready:
        _, item_id = heapq.heappop(ready)
        order.append(item_id)
        parent = parent_of[item_id]
        if parent in rank and parent != item_id:
            waiting[rank[parent]] -= 1
            if waiting[rank[parent]] == 0:
                heapq.heappush(ready, (rank[parent], parent))
    return order


