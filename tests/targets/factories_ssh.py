"""The ssh target in the shared conformance suite, against a throwaway sshd on 127.0.0.1.

One sshd serves the whole test session: :func:`ssh_server` starts it on first use and registers
its shutdown with ``request.config.add_cleanup`` (factories are plain functions, not fixtures).
Each test gets a fresh remote root under its ``tmp_path``; the "remote" host is this machine, so
tests can look at the remote files directly.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from btrsync.targets.base import Target
from btrsync.targets.registry import open_target
from btrsync.targets.ssh.target import SshTarget
from btrsync.targets.url import parse_url
from tests.support.sshd import SshServer, missing_tools

_server: SshServer | None = None
_server_lock = threading.Lock()


def ssh_server(request: pytest.FixtureRequest) -> SshServer:
    """The session's sshd, started once.  Without OpenSSH or rsync the test is skipped with the
    reason, except under CI (env ``CI`` set), where it fails: CI has them, so a skip would hide a
    broken environment."""
    global _server
    missing = missing_tools()
    if missing:
        reason = f"ssh target tests need {', '.join(missing)} installed"
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to run the ssh tests, but: {reason}", pytrace=False)
        pytest.skip(reason)
    with _server_lock:
        if _server is None:
            server = SshServer().start()
            request.config.add_cleanup(_stop_server)
            _server = server
        return _server


def _stop_server() -> None:
    global _server
    server, _server = _server, None
    if server is not None:
        server.stop()


def ssh_settings(server: SshServer, tmp_path: Path, **overrides: Any) -> Mapping[str, Any]:
    """Settings that reach the test server only, with the spool under ``tmp_path``."""
    return {**server.settings(), "spool_dir": str(tmp_path / "spool"), **overrides}


def open_ssh_target(server: SshServer, root: Path, tmp_path: Path, **overrides: Any) -> SshTarget:
    """A bare ``SshTarget`` for ``root`` on the test server (for tests of ssh specifics)."""
    url = parse_url(server.url(root))
    return SshTarget.from_url(url, ssh_settings(server, tmp_path, **overrides))


def make_ssh(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    """A fresh remote root per test, opened through the registry as users do (with whatever
    wrappers it adds)."""
    server = ssh_server(request)
    root = tmp_path / "ssh-root"
    root.mkdir()
    return open_target(server.url(root), ssh_settings(server, tmp_path))


FACTORIES: dict[str, Callable[[Path, pytest.FixtureRequest], Target]] = {"ssh": make_ssh}
