"""Job locks (exit 11 or a wait) and host-wide push slots (queue, never fail)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from btrsync.errors import LockedError, run_exit
from btrsync.jobs.coordination import job_lock, push_slot
from btrsync.locking import target_lock
from tests.jobs.conftest import FakeClock


def test_a_held_job_lock_is_exit_11_at_once_or_after_the_wait(tmp_path: Path) -> None:
    clock = FakeClock()
    with job_lock(tmp_path, "home", wait=0, clock=clock):
        with pytest.raises(LockedError, match=r"pid \d+.*job home"), job_lock(tmp_path, "home", wait=0, clock=clock):
            pass
        with pytest.raises(LockedError, match="waited 600s"), job_lock(tmp_path, "home", wait=600, clock=clock):
            pass
        assert 600 <= sum(clock.sleeps) < 601
        with job_lock(tmp_path, "other", wait=0, clock=clock):
            pass  # jobs lock independently


def test_a_wait_succeeds_when_the_holder_finishes_meanwhile(tmp_path: Path) -> None:
    clock = FakeClock()
    holder = target_lock(tmp_path, "job home")
    holder.__enter__()
    clock.on_sleep = lambda: len(clock.sleeps) == 3 and holder.__exit__(None, None, None)
    with job_lock(tmp_path, "home", wait=60, clock=clock):
        assert len(clock.sleeps) == 3


def test_jobs_queue_for_a_push_slot_rather_than_fail(tmp_path: Path) -> None:
    clock = FakeClock()
    (tmp_path / "locks").mkdir()
    fd = os.open(tmp_path / "locks" / "slot-0.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another job holds the only slot
    clock.on_sleep = lambda: len(clock.sleeps) == 5 and os.close(fd)
    with push_slot(tmp_path, 1, clock=clock, job="home") as slot:
        assert slot == 0 and len(clock.sleeps) == 5
    clock.sleeps.clear()
    with push_slot(tmp_path, 2, clock=clock) as first, push_slot(tmp_path, 2, clock=clock) as second:
        assert {first, second} == {0, 1} and not clock.sleeps


@pytest.mark.parametrize(("statuses", "code"), [
    (["ok", "ok"], 0), (["ok", "skipped"], 0), ([], 0), (["skipped"], 0),
    (["ok", "partial"], 3), (["ok", "failed"], 3), (["failed", "failed"], 1), (["locked"], 11),
    (["locked", "ok"], 3), (["locked", "failed"], 1), (["partial"], 3),
])
def test_the_exit_status_of_a_run_combines_its_jobs(statuses: list[str], code: int) -> None:
    assert run_exit(statuses) == code
