"""Chain-safe GFS retention: pure decisions about which backups to keep (no I/O).

``Policy`` says what to keep, ``decide`` says keep/delete (with reasons) for a set of ``Item``s,
``deletion_order`` orders the deletions children-first, and ``simulate``/``render_simulation``
answer "what will I hold a year from now".  Semantics: docs/retention.md.
"""

from __future__ import annotations

from btrsync.retention.gfs import (
    Decision,
    Item,
    SimulationResult,
    decide,
    deletion_order,
    period_label,
    reason_rule,
    render_simulation,
    simulate,
    simulated_history,
)
from btrsync.retention.policy import UNLIMITED, Policy, parse_duration

__all__ = [
    "UNLIMITED",
    "Decision",
    "Item",
    "Policy",
    "SimulationResult",
    "decide",
    "deletion_order",
    "parse_duration",
    "period_label",
    "reason_rule",
    "render_simulation",
    "simulate",
    "simulated_history",
]
