"""The push's CPU regression guard of the benchmark suite (benchmarks/run_guard.py)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import run_guard
from benchmarks.common import BenchResult, GiB

README = """# btrsync benchmarks

- push CPU guard, full run: 9.00 CPU s/GiB (commit 1111111)
- push CPU guard, quick run: 10.00 CPU s/GiB (commit 2222222)
"""


def _push(cpu: list[float], stream: int = GiB // 2) -> BenchResult:
    res = BenchResult("push", "Full push")
    res.work_bytes = stream
    res.runs["btrsync"] = [{"seconds": 1.0, "cpu_seconds": c} for c in cpu]
    return res


def test_the_recorded_figure_is_read_per_mode() -> None:
    assert run_guard.recorded(README, "quick") == 10.0
    assert run_guard.recorded(README, "full") == 9.0
    assert run_guard.recorded("# nothing recorded\n", "quick") is None


def test_the_measured_figure_is_the_median_per_gib() -> None:
    assert run_guard.measured(_push([5.0, 6.0, 9.0])) == 12.0  # 6 s for half a GiB
    assert run_guard.measured(BenchResult("push", "no runs")) is None


def test_a_warning_only_above_the_tolerance() -> None:
    assert run_guard.verdict(11.5, 10.0) is None  # 15 %: still fine
    warning = run_guard.verdict(11.6, 10.0)
    assert warning is not None and "16% more than the 10.00" in warning
    assert run_guard.verdict(None, 10.0) is None and run_guard.verdict(12.0, None) is None


def test_the_suite_warns_from_the_readme_and_never_without_a_push(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert run_guard.warnings([_push([6.0])], "quick", readme)  # 12 CPU s/GiB > 10 + 15 %
    assert run_guard.warnings([_push([5.5])], "quick", readme) == []  # 11: within
    assert run_guard.warnings([_push([5.5])], "full", readme)  # 11 > 9 + 15 %
    assert run_guard.warnings([BenchResult("restore", "Restore")], "quick", readme) == []
    assert run_guard.warnings([_push([6.0])], "quick", tmp_path / "missing.md") == []
