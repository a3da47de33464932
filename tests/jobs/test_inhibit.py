"""The sleep inhibitor fails soft: no bus, or a bus without logind, is a warning, not a failed run.

The lock itself (logind's answer, ``systemd-inhibit --list``, SIGTERM still reaching btrsync) is
tested under a real systemd: tests/systemd/test_generated_units.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from btrsync.jobs.inhibit import sleep_inhibited


@pytest.fixture
def bus_without_logind(tmp_path: Path) -> Iterator[str]:
    """A real dbus-daemon on a private socket, where no org.freedesktop.login1 is registered."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        if os.environ.get("CI"):
            pytest.fail("CI runs the inhibit tests, but dbus-daemon is missing (scripts/bootstrap installs dbus)")
        pytest.skip("dbus-daemon is missing (Debian package dbus-daemon)")
    address = f"unix:path={tmp_path / 'bus'}"
    proc = subprocess.Popen([daemon, "--session", "--nofork", "--nopidfile", f"--address={address}",
                             "--print-address"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("unix:")  # listening
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


def test_no_system_bus_is_a_warning_and_the_block_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-such-socket'}")
    ran = False
    with caplog.at_level(logging.WARNING), sleep_inhibited("job x runs") as fd:
        ran = True
    assert ran and fd is None
    assert "sleep not inhibited: no system D-Bus" in caplog.text


def test_a_bus_without_logind_is_a_warning_naming_its_answer(bus_without_logind: str, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_without_logind)
    with caplog.at_level(logging.WARNING), sleep_inhibited("job x runs") as fd:
        assert fd is None
    assert "sleep not inhibited: logind refused the lock" in caplog.text
    assert "org.freedesktop.login1" in caplog.text  # the bus's own words: no such name


def test_disabled_asks_nobody(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-such-socket'}")
    with caplog.at_level(logging.WARNING), sleep_inhibited("job x runs", enabled=False) as fd:
        assert fd is None
    assert caplog.text == ""
