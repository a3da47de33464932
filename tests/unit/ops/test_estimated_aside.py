"""The push's progress estimate is made beside the send (ops/push/aside.py ``EstimatedAside``): the
push goes on while ``btrfs send --no-data`` runs, and the reporter gets the estimate when known."""

from __future__ import annotations

import threading

from btrsync.ops.push.aside import EstimatedAside
from btrsync.progress import Estimate


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, name: str, estimate: Estimate | None = None, *, index: int = 1, count: int = 1) -> None:
        self.calls.append(("start", name, estimate, index, count))

    def phase(self, name: str) -> None:
        self.calls.append(("phase", name))

    def update(self, raw: int, stored: int) -> None:
        self.calls.append(("update", raw, stored))

    def finish(self, ok: bool = True) -> None:
        self.calls.append(("finish", ok))


def test_the_push_does_not_wait_for_the_estimate() -> None:
    release = threading.Event()
    rec = Recorder()

    def slow_estimate() -> Estimate:
        release.wait(30)
        return Estimate(1000, "btrfs send --no-data")

    progress = EstimatedAside(rec, slow_estimate, "b1", 2, 3)  # returns while the estimate runs
    progress.phase("sending")
    progress.update(10, 5)
    progress.update(20, 9)
    assert rec.calls == []  # nothing shown before the total is known
    release.set()
    progress.finish(ok=True)
    assert rec.calls == [("start", "b1", Estimate(1000, "btrfs send --no-data"), 2, 3), ("phase", "sending"),
                         ("update", 20, 9), ("finish", True)]


def test_a_failing_estimate_starts_the_progress_without_a_total() -> None:
    rec = Recorder()

    def broken() -> Estimate:
        raise OSError("no btrfs here")

    progress = EstimatedAside(rec, broken, "b1", 1, 1)
    progress.finish(ok=False)
    assert rec.calls == [("start", "b1", None, 1, 1), ("finish", False)]
