"""Chain-safe GFS retention: pure decisions about which backups to keep (no I/O).

Modules: ``policy`` (what to keep), ``periods`` (calendar periods), ``gfs`` (``decide``),
``order`` (deletion order), ``simulate`` and ``render`` (the simulator), ``lifetime`` (a
backup's tier and kept-until, for the tree planner).

``Policy`` says what to keep, ``decide`` says keep/delete (with reasons) for a set of ``Item``s,
``deletion_order`` orders the deletions children-first, and ``simulate``/``render_simulation``
answer "what will I hold a year from now".  Semantics: docs/retention.md.
"""

from __future__ import annotations

from btrsync.retention.gfs import Decision, Item, decide
from btrsync.retention.order import deletion_order
from btrsync.retention.periods import period_label
from btrsync.retention.render import render_simulation
from btrsync.retention.simulate import SimulationResult, reason_rule, simulate, simulated_history
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
