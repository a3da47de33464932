"""What a run of ``btrsync run`` reports: per target, per job, for the whole run, and the
rules that turn a target's verification into its status and into "may it be pruned"."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from btrsync.errors import job_exit, run_exit
from btrsync.jobs.records import iso

BAD_TARGET = ("failed", "damaged")


@dataclass
class TargetOutcome:
    name: str
    status: str = "ok"  # ok | skipped | failed | damaged | stopped | locked
    url: str | None = None
    seconds: float = 0.0
    backups: list[dict[str, Any]] = field(default_factory=list)
    stream_bytes: int = 0
    stored_bytes: int = 0
    error: str | None = None
    reason: str | None = None
    pruned: list[str] = field(default_factory=list)
    prune_skipped: str | None = None
    verify: dict[str, Any] | None = None
    drill: dict[str, Any] | None = None
    plan: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, status: str, error: str) -> None:
        self.status, self.error = status, (f"{self.error}; {error}" if self.error else error)

    def problem(self) -> str | None:
        """``name: what went wrong`` for a target that is not ok, skipped or stopped alike
        (a stopped push has no error, only the reason it stopped); None for an ok one."""
        if self.error:
            return f"{self.name}: {self.error}"
        if self.status == "stopped":
            return f"{self.name}: stopped: {self.reason}"
        return None


@dataclass
class JobOutcome:
    job: str
    status: str = "ok"  # ok | partial | failed | skipped | locked | terminated
    started: datetime | None = None
    seconds: float = 0.0
    reason: str | None = None
    error: str | None = None
    snapshots: list[str] = field(default_factory=list)
    targets: list[TargetOutcome] = field(default_factory=list)
    hooks: list[dict[str, Any]] = field(default_factory=list)
    local_pruned: list[str] = field(default_factory=list)
    local_prune_skipped: str | None = None
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        return int(job_exit(self.status))

    def as_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["started"] = iso(self.started)
        doc["exit_code"] = self.exit_code
        return doc


@dataclass
class RunReport:
    jobs: list[JobOutcome]

    @property
    def exit_code(self) -> int:
        return int(run_exit([j.status for j in self.jobs]))



def verification_failed(res: TargetOutcome, what: str, outcome: dict[str, Any]) -> None:
    """A target is "damaged" only when something was read and did not check out; a verification
    or drill that could not run or complete (the target unreachable, the scratch disk full) says
    nothing about the backups, and the target's status is "failed"."""
    if outcome.get("damaged"):
        res.fail("damaged", f"{what} found damage: {outcome.get('error')}")
    else:
        res.fail("failed", f"{what} did not complete: {outcome.get('error')}")

def prune_blocker(res: TargetOutcome) -> str | None:
    """Why a target must not be pruned after its verification: what was just pushed did not verify
    (failed to read, or damaged), or a drill found damage.  None when pruning is safe."""
    if res.verify is not None and not res.verify.get("ok"):
        return "verification damaged" if res.verify.get("damaged") else "verification failed"
    if res.drill is not None and res.drill.get("damaged"):
        return "restore drill found damage"
    return None
