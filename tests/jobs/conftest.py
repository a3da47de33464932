"""Helpers for the jobs tests: a configuration from TOML text, and a clock that never sleeps."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from btrsync.config.model import Config, parse_config

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # a Friday


def config_from(text: str, path: Path | None = None) -> Config:
    return parse_config(tomllib.loads(text), path)


class FakeClock:
    """Wall and monotonic time that only advance when slept on (or set)."""

    def __init__(self, start: datetime = T0) -> None:
        self.t = start
        self.mono = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = None  # called after each sleep (tests release locks there)

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += seconds
        self.t += timedelta(seconds=seconds)
        if self.on_sleep is not None:
            self.on_sleep()
