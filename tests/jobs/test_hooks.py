"""Hooks: argv without a shell, the job's environment, bounded output, timeouts that kill the
whole process group."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from btrsync.jobs.hooks import env_for, run_hook, run_hooks


def test_a_hook_gets_argv_verbatim_and_the_job_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = env_for("home", "ok", targets=["usb", "b2"], snapshots=["data.20261120T030000Z"], stream_bytes=5,
                  stored_bytes=3, seconds=1.25, error="", base={"PATH": os.environ["PATH"]})
    result = run_hook(["sh", "-c", f'printf "%s|%s|%s|%s|%s" "$1" "$BTRSYNC_JOB" "$BTRSYNC_TARGETS" '
                                   f'"$BTRSYNC_STORED_BYTES" "$BTRSYNC_DURATION_SECONDS" > {out}', "x", "$HOME; ls"],
                      kind="post", env=env, timeout=10)
    assert result.ok and result.code == 0
    assert out.read_text() == "$HOME; ls|home|usb b2|3|1.2"


def test_the_hooks_path_comes_first_and_a_bad_directory_is_refused(tmp_path: Path) -> None:
    from btrsync.config.schema import HooksModel

    bindir = tmp_path / "pgbin"
    bindir.mkdir()
    (bindir / "pg_dumpall").write_text("#!/bin/sh\necho dumped\n")
    (bindir / "pg_dumpall").chmod(0o755)
    env = env_for("db", "running", targets=[], path=[str(bindir)], base={"PATH": "/usr/bin:/bin"})
    assert env["PATH"] == f"{bindir}:/usr/bin:/bin"
    assert run_hook(["pg_dumpall"], kind="pre", env=env, timeout=10).tail == ["dumped"]
    assert env_for("db", "running", targets=[], path=["/opt/x"], base={})["PATH"] == "/opt/x:" + os.defpath
    for bad in ("relative/bin", "/a:/b"):
        with pytest.raises(ValueError):
            HooksModel.model_validate({"path": [bad]})


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan waiting for init to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True

def test_output_is_logged_line_by_line_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="btrsync.jobs.hooks")
    result = run_hook(["sh", "-c", "for i in $(seq 1 50); do echo line $i; done; exit 3"], kind="pre",
                      env=dict(os.environ), timeout=10, max_output_lines=5)
    assert not result.ok and result.code == 3 and result.lines == 50
    logged = [r.getMessage() for r in caplog.records if "hook pre sh: line" in r.getMessage()]
    assert len(logged) == 5 and any("45 more line(s) not logged" in r.getMessage() for r in caplog.records)
    assert result.tail[-1] == "line 50" and "exited 3" in result.describe() and "line 50" in result.describe()


def _until_gone(pid: int, within: float = 30.0) -> bool:
    """Whether ``pid`` is gone within ``within`` seconds: a killed process needs a moment to exit and
    an orphan to be reaped, so the check is a bounded wait for that, not a guess of how long it takes."""
    deadline = time.monotonic() + within
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_hanging_hook_is_killed_at_its_timeout_with_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    timeout = 0.5
    while True:
        result = run_hook(["sh", "-c", f"sleep 300 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"],
                          kind="pre", env=dict(os.environ), timeout=timeout)
        if pidfile.exists() or timeout >= 8:
            break
        timeout *= 2  # the machine was too busy to start the hook's child within its timeout: again
    assert result.timed_out and not result.ok and "timed out" in result.describe()
    # killed by the SIGTERM to its group at the timeout: neither its own end (300 s away) nor the SIGKILL
    assert result.code == -signal.SIGTERM and result.seconds >= timeout
    child = int(pidfile.read_text())
    assert _until_gone(child)


def test_a_hook_that_exits_leaves_nothing_running_and_a_missing_program_is_a_failure(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    result = run_hook(["sh", "-c", f"sleep 300 & echo $! > {pidfile}"], kind="post", env=dict(os.environ),
                      timeout=10)
    assert result.ok
    bg = int(pidfile.read_text())
    assert _until_gone(bg)
    missing = run_hook(["/nonexistent/hook"], kind="pre", env=dict(os.environ), timeout=5)
    assert not missing.ok and missing.code is None and "cannot be started" in missing.describe()


def test_pre_hooks_stop_at_the_first_failure() -> None:
    results = run_hooks("pre", [["true"], ["false"], ["true"]], env=dict(os.environ), timeout=5,
                        stop_on_failure=True)
    assert [r.ok for r in results] == [True, False]


def test_binary_output_of_a_failed_hook_reaches_the_next_hook_printable(tmp_path: Path) -> None:
    """A failing pre hook printed binary (pg_dump -Fc to stdout): its NUL bytes went into
    BTRSYNC_ERROR, Popen raised ValueError, and the run ended in a traceback before on_failure."""
    from btrsync.jobs.hooks import env_for

    failed = run_hook(["sh", "-c", "printf 'PGDMP\\000\\001\\033x\\n'; exit 1"], kind="pre", env=dict(os.environ),
                      timeout=10)
    env = env_for("data", "failed", targets=["usb"], error=failed.describe())
    assert "\x00" not in env["BTRSYNC_ERROR"] and "PGDMP\\x00\\x01\\x1bx" in env["BTRSYNC_ERROR"]
    out = tmp_path / "seen"
    after = run_hook(["sh", "-c", f'printf %s "$BTRSYNC_ERROR" > {out}'], kind="on_failure", env=env, timeout=10)
    assert after.ok and "PGDMP" in out.read_text()
    broken = run_hook(["echo", "a\x00b"], kind="post", env=dict(os.environ), timeout=10)
    assert not broken.ok and "cannot be started" in broken.describe()


_KILLED_IN_THE_WINDOW = """
import os, sys, time
from btrsync.jobs import hooks
watch = hooks._watch
def late_watch(watchdog, pgid):
    print("started", flush=True)  # the hook's process exists; the watchdog does not know its group yet
    time.sleep(30)  # killed here
    watch(watchdog, pgid)
hooks._watch = late_watch
hooks.run_hook(["sh", "-c", sys.argv[1]], kind="pre", env=dict(os.environ), timeout=3600)
"""


def test_a_run_killed_between_starting_a_hook_and_arming_its_watchdog_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL after the hook's process was made but before the watchdog was told its group: the
    watchdog read EOF, took it for "no hook started" and exited, and the hook ran on unwatched
    for good.  The hook now waits behind a gate that opens only once the watchdog has the group,
    so here it never runs and nothing is left."""
    import subprocess
    import sys

    ran = tmp_path / "ran"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_IN_THE_WINDOW, f"echo $$ > {ran}; exec sleep 300"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "started\n"
    time.sleep(0.5)  # an ungated hook has long written its pid by now
    child.kill()
    child.wait()
    time.sleep(0.5)  # and the watchdog has seen the EOF
    if ran.exists():
        pid = int(ran.read_text())
        alive = not _until_gone(pid, within=10)
        if alive:
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the hook ran after its run was killed (still running: {alive})")
