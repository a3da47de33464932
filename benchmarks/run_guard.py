"""The push's CPU regression guard: ``benchmarks.run`` compares the push's CPU seconds per GiB of
send stream (benchmark 1, median of btrsync's runs: its threads and its ``btrfs send`` child)
with the figure recorded for the same mode in benchmarks/README.md, and prints a warning when it
is more than ``TOLERANCE`` worse.  Never a failure: machines differ and are noisy; the warning
asks for an A/B run (``benchmarks/ab.py``) before anyone believes it.

The recorded figures are lines of benchmarks/README.md of the form::

    - push CPU guard, quick run: 11.50 CPU s/GiB (commit abc1234)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from benchmarks.common import REPO, BenchResult, GiB

TOLERANCE = 0.15
README = REPO / "benchmarks" / "README.md"
_LINE = re.compile(r"^- push CPU guard, (?P<mode>quick|full) run: (?P<value>\d+(?:\.\d+)?) CPU s/GiB", re.M)


def recorded(text: str, mode: str) -> float | None:
    """The figure recorded for ``mode`` in the README's text (the first such line), or None."""
    for m in _LINE.finditer(text):
        if m["mode"] == mode:
            return float(m["value"])
    return None


def measured(res: BenchResult) -> float | None:
    """CPU seconds per GiB of send stream of btrsync's push runs (median), or None without runs."""
    cpu = res.median(res.baseline, "cpu_seconds")
    return cpu / (res.work_bytes / GiB) if cpu is not None and res.work_bytes else None


def verdict(now: float | None, then: float | None, tolerance: float = TOLERANCE) -> str | None:
    """A warning when ``now`` is more than ``tolerance`` above ``then``; None otherwise (also when
    either is unknown)."""
    if now is None or then is None or then <= 0:
        return None
    worse = now / then - 1
    if worse <= tolerance:
        return None
    return (f"the push used {now:.2f} CPU s/GiB, {worse:.0%} more than the {then:.2f} recorded in "
            f"benchmarks/README.md (warning above {tolerance:.0%}; a noisy machine or another CPU can "
            "do that: confirm with an A/B run, python -m benchmarks.ab BASE HEAD)")


def warnings(results: Iterable[BenchResult], mode: str, readme: Path = README) -> list[str]:
    """The guard's warnings for a run's results (nothing when the push did not run)."""
    push = next((r for r in results if r.key == "push" and r.error is None), None)
    if push is None:
        return []
    try:
        then = recorded(readme.read_text(), mode)
    except OSError:
        return []
    note = verdict(measured(push), then)
    return [note] if note else []
