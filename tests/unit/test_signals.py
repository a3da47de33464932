"""btrsync.signals in-process: real signals sent to this (main) thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from btrsync.errors import EXIT_STATUS_HELP, ExitCode
from btrsync.signals import HANDLED, Terminated, deferred, signals_raise


def _deliver(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    for _ in range(100):  # the handler runs at the next bytecode boundary of the main thread
        time.sleep(0.001)


@pytest.mark.parametrize("sig", HANDLED, ids=lambda s: s.name)
def test_the_first_signal_raises_with_the_exit_code_of_its_number(sig: signal.Signals) -> None:
    with pytest.raises(Terminated) as caught, signals_raise():
        _deliver(sig)
    assert caught.value.exit_code == 128 + sig == ExitCode(128 + sig)
    assert f"{caught.value.exit_code} " in EXIT_STATUS_HELP and f"({sig.name})" in EXIT_STATUS_HELP


def test_later_signals_are_noted_once_and_do_not_cut_the_cleanup_short(capfd: pytest.CaptureFixture[str]) -> None:
    cleaned = []
    with pytest.raises(Terminated) as caught, signals_raise():
        try:
            _deliver(signal.SIGTERM)
        finally:
            _deliver(signal.SIGINT)  # would raise in the middle of this cleanup without the rule
            _deliver(signal.SIGTERM)
            cleaned.append(True)
    assert caught.value.signum == signal.SIGTERM and cleaned == [True]
    err = capfd.readouterr().err
    assert err.count("still cleaning up after SIGTERM") == 1


def test_previous_handlers_come_back_and_ignored_signals_stay_ignored() -> None:
    before = {sig: signal.getsignal(sig) for sig in HANDLED}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with signals_raise():
            _deliver(signal.SIGHUP)  # ignored: no exception
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]
    finally:
        signal.signal(signal.SIGHUP, before[signal.SIGHUP])  # type: ignore[arg-type]


def test_a_deferred_step_finishes_before_the_signal_takes_effect() -> None:
    steps = []
    with pytest.raises(Terminated), signals_raise():
        with deferred():
            _deliver(signal.SIGTERM)
            steps.append("finished")
        steps.append("after")  # never reached: the signal is raised when the step ends
    assert steps == ["finished"]


STUCK_WORKER = """
import os, signal, sys, threading, time
from btrsync.signals import Terminated, end_after_cleanup, signals_raise
threading.Thread(target=threading.Event().wait, name="stuck-worker").start()  # never ends, not a daemon
code = 0
with signals_raise():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except Terminated as exc:
        code = exc.exit_code
        end_after_cleanup(code, timeout=1)
        os.kill(os.getpid(), signal.SIGTERM)  # while the interpreter exits: noted, ignored
sys.exit(code)
"""


def test_a_stuck_worker_thread_does_not_keep_the_process_alive() -> None:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STUCK_WORKER], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 143, proc.stderr
    assert time.monotonic() - t0 < 15
    assert "busy: stuck-worker" in proc.stderr and "Traceback" not in proc.stderr
