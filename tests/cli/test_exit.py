"""The ``btrsync`` process ends without the interpreter's teardown (``exit_without_teardown``):
what that teardown would have done for btrsync must still happen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PRELUDE = "import atexit, sys, threading, time\nfrom btrsync.cli.main import exit_without_teardown\n"


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PRELUDE + code, *args], capture_output=True, text=True, timeout=60)


def test_exit_handlers_run_and_buffered_output_is_written(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    proc = _run("atexit.register(lambda: open(sys.argv[1], 'w').write('ran'))\n"
                "print('x' * 100_000, end='')\nexit_without_teardown(3)\nraise SystemExit(9)", str(mark))
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "x" * 100_000
    assert mark.read_text() == "ran"  # e.g. an ssh connection's finalizer, logging's flush


def test_a_live_worker_thread_leaves_the_exit_to_the_interpreter() -> None:
    proc = _run("t = threading.Thread(target=time.sleep, args=(0.3,)); t.start()\n"
                "exit_without_teardown(3)\nprint('joined as usual', end='')\nsys.exit(4)")
    assert (proc.returncode, proc.stdout) == (4, "joined as usual"), proc.stderr


def test_output_that_cannot_be_written_makes_the_status_120() -> None:
    # standard output buffered in the process, on a device where every write fails (ENOSPC)
    proc = _run("sys.stdout = open('/dev/full', 'w', buffering=1 << 16)\nprint('lost')\nexit_without_teardown(0)")
    assert proc.returncode == 120, proc.stderr


def test_a_standard_stream_closed_at_start_is_no_failure() -> None:
    """``btrsync ... >&-`` (a cron line, a careless wrapper): Python starts with that stream None."""
    exe = os.path.join(os.path.dirname(sys.executable), "btrsync")
    for closed in (">&-", "2>&-"):
        proc = subprocess.run(f"exec {exe} --version {closed}", shell=True, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, (closed, proc.stdout, proc.stderr)


def test_output_that_cannot_be_written_is_said_on_stderr() -> None:
    proc = _run("sys.stdout = open('/dev/full', 'w', buffering=1 << 16)\nprint('lost')\nexit_without_teardown(3)")
    assert proc.returncode == 3  # the command's own failure stays what it was
    assert "the output could not be written" in proc.stderr and "No space left" in proc.stderr


def test_the_completion_scripts_exit_without_teardown_too(tmp_path: Path) -> None:
    """click ends a completion with sys.exit: its status is kept, and the exit handlers run."""
    exe = os.path.join(os.path.dirname(sys.executable), "btrsync")
    env = {**os.environ, "_BTRSYNC_COMPLETE": "bash_complete", "COMP_WORDS": "btrsync pu", "COMP_CWORD": "1"}
    proc = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "plain,push" in proc.stdout.split()
