"""What a run of ``btrsync run`` needs from its surroundings (the CLI builds it; tests build their own)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from btrsync.catalog.repository import Repository
from btrsync.config.model import Config
from btrsync.jobs.clock import Clock
from btrsync.state import State

OpenRepository = Callable[[str, bool], AbstractContextManager[Repository]]  # (name or URL, write)


@dataclass
class RunEnv:
    """What a run needs from its surroundings (the CLI builds it; tests build their own)."""

    config: Config
    state_root: Path
    open_repository: OpenRepository
    clock: Clock
    dry_run: bool = False
    wait: float | None = None  # --wait: overrides each job's lock_wait
    syslog: bool = True

    @property
    def state(self) -> State:
        return State(self.state_root)
