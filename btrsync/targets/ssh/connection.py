"""One persistent OpenSSH connection to a host, and the processes run through it.

:class:`SshConnection` builds every ``ssh`` argv in one place, starts one master connection
(``ControlMaster``, socket in a private temporary directory) the first time it is needed, and runs
remote shell snippets through it, so listing, stat, get and delete pay no handshake each.  rsync
gets the same options as its ``-e`` command.

Nothing here goes through a local shell: every process is started from an argv list.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import IO, Any

from btrsync.errors import ConfigError
from btrsync.targets.errors import TargetError, TransientTargetError
from btrsync.targets.ssh.errors import ssh_error

log = logging.getLogger(__name__)

SSH_FAILED = 255  # ssh's own exit status for connection and authentication failures
MAX_OUTPUT = 1 << 30  # bytes a remote command may answer (a listing of millions of objects fits)


@dataclass(frozen=True, slots=True)
class SshConfig:
    """How to reach the host; ``~/.ssh/config`` (or ``ssh_config``) fills in everything unset."""

    host: str
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts_file: str | None = None
    ssh_config: str | None = None
    ssh_options: tuple[str, ...] = ()
    strict_host_key_checking: str = "yes"
    connect_timeout: int = 30
    server_alive_interval: int = 15
    control_persist: int = 120

    @property
    def display(self) -> str:
        """``user@host:port`` as far as it is known (never contains secrets)."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"


@dataclass(frozen=True, slots=True)
class RemoteResult:
    """The outcome of one remote command."""

    returncode: int
    stdout: bytes
    stderr: str


class SshConnection:
    """Runs remote commands over one shared master connection; safe to use from several threads."""

    def __init__(self, config: SshConfig) -> None:
        if not config.host or config.host.startswith("-"):
            raise TargetError(f"invalid ssh host name {config.host!r}")
        self.config = config
        self._lock = threading.Lock()  # one master start at a time
        self._dir_lock = threading.Lock()
        self._control_dir: str | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- argv ---------------------------------------------------------------------------------
    @property
    def control_path(self) -> str:
        """The master's socket, in a private directory created on first use."""
        with self._dir_lock:
            if self._control_dir is None:
                self._control_dir = tempfile.mkdtemp(prefix="btrsync-ssh-")
                self._finalizer = weakref.finalize(
                    self, stop_master, self._control_dir, self.config.host, self.config.ssh_config
                )
            return os.path.join(self._control_dir, "master")

    def ssh_argv(self, *, master: bool = False) -> list[str]:
        """``ssh`` and its options, without destination; the options we rely on come first
        because ssh keeps the first value it sees for each option."""
        c = self.config
        argv = ["ssh"] + (["-F", c.ssh_config] if c.ssh_config else [])
        argv += ["-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={c.strict_host_key_checking}"]
        argv += ["-o", f"ControlPath={option_path(self.control_path)}"]
        argv += ["-o", f"ControlMaster={'yes' if master else 'no'}"]
        if master:
            argv += ["-o", f"ControlPersist={c.control_persist}"]
        if c.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={option_path(c.known_hosts_file)}"]
        if c.identity_file:
            # -o rather than -i: ssh cannot take a '%' in a -i path, escaped or not.
            argv += [
                "-o",
                f"IdentityFile={option_path(c.identity_file)}",
                "-o",
                "IdentitiesOnly=yes",
            ]
        argv += ["-p", str(c.port)] if c.port else []
        argv += ["-l", c.user] if c.user else []
        for option in c.ssh_options:
            argv += ["-o", option]
        argv += [
            "-o",
            f"ServerAliveInterval={c.server_alive_interval}",
            "-o",
            "ServerAliveCountMax=3",
        ]
        argv += ["-o", f"ConnectTimeout={c.connect_timeout}"]
        return argv

    def command_argv(self, script: str) -> list[str]:
        """The argv that runs ``script`` (a remote shell command line) over the master."""
        self.ensure_master()
        return [*self.ssh_argv(), "-T", "--", self.config.host, script]

    def rsync_rsh(self) -> str:
        """The ``rsync -e`` value: the ssh argv quoted the way rsync splits it (quotes, spaces)."""
        self.ensure_master()
        return " ".join(shlex.quote(arg) for arg in self.ssh_argv())

    @property
    def rsync_host(self) -> str:
        """The host as rsync's ``HOST:PATH`` syntax needs it (IPv6 literals in brackets)."""
        host = self.config.host
        return f"[{host}]" if ":" in host else host

    # -- the master ---------------------------------------------------------------------------
    def ensure_master(self) -> None:
        """Start the master connection unless its socket exists; raise on connect/auth failure.

        A master that died (idle longer than ``control_persist``) removes its socket and is
        restarted here; commands fall back to a direct connection if the socket is stale.
        """
        with self._lock:
            if os.path.exists(self.control_path):
                return
            argv = [*self.ssh_argv(master=True), "-f", "-N", "--", self.config.host]
            # The master daemonizes; its stderr goes to a file so no pipe stays open behind it.
            with tempfile.TemporaryFile() as err:
                try:
                    rc = subprocess.run(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        timeout=self.config.connect_timeout + 30,
                        check=False,
                    ).returncode
                except subprocess.TimeoutExpired:
                    raise TransientTargetError(f"ssh to {self.config.display} timed out") from None
                except FileNotFoundError:
                    raise TargetError(
                        "the ssh client is not installed (package openssh-client)"
                    ) from None
                err.seek(0)
                stderr = err.read().decode(errors="replace")
            if rc != 0:
                raise ssh_error(stderr, self.config.display)
            log.debug("ssh master started host=%s", self.config.display)

    def close(self) -> None:
        """Stop the master connection and remove its private directory (idempotent; also done
        when the connection object is garbage-collected or the interpreter exits)."""
        with self._lock, self._dir_lock:
            self._control_dir = None
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer()

    # -- running commands ---------------------------------------------------------------------
    def run(self, script: str, *, timeout: float) -> RemoteResult:
        """Run ``script`` remotely and collect its output; ssh's own failures raise.

        The output goes to temporary files, watched while it runs: a remote side that answers
        without end (a hostile or broken server) is stopped at ``MAX_OUTPUT`` bytes, never read
        into memory."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self.command_argv(script), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            try:
                self._watch(proc, out, err, timeout)
            except BaseException:  # a limit, or a signal (btrsync.signals): never leave ssh running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                raise
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read().decode(errors="replace")
        if proc.returncode == SSH_FAILED:
            raise ssh_error(stderr, self.config.display)
        return RemoteResult(proc.returncode, stdout, stderr)

    def _watch(self, proc: subprocess.Popen[bytes], out: IO[bytes], err: IO[bytes], timeout: float) -> None:
        """Wait for ``proc``; raise when it runs past ``timeout`` or its output past ``MAX_OUTPUT``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if max(os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size) > MAX_OUTPUT:
                raise TargetError(f"remote command on {self.config.display} answered more than {MAX_OUTPUT} "
                                  "bytes: stopped (a misbehaving server?)")
            if proc.returncode is not None:
                return
            if time.monotonic() > deadline:
                raise TransientTargetError(f"remote command on {self.config.display} timed out after {timeout:.0f}s")

    def popen(self, script: str, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start ``script`` remotely with its stdout as a pipe (for streaming reads)."""
        return subprocess.Popen(
            self.command_argv(script),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )


def stop_master(directory: str, host: str, ssh_config: str | None) -> None:
    """Tell the master behind ``directory``'s socket to exit, then remove the directory."""
    socket_path = os.path.join(directory, "master")
    if os.path.exists(socket_path):
        config = ["-F", ssh_config] if ssh_config else []
        control = ["-o", f"ControlPath={option_path(socket_path)}"]
        subprocess.run(
            ["ssh", *config, *control, "-O", "exit", "--", host],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    shutil.rmtree(directory, ignore_errors=True)


def option_path(path: str) -> str:
    """A path as an ssh ``-o`` value: ``%`` escaped (ssh expands %-tokens in these options) and
    double-quoted if it has blanks (ssh splits option values on whitespace)."""
    if '"' in path:
        raise ConfigError(f"ssh cannot use a path containing a double quote: {path!r}")
    escaped = path.replace("%", "%%")
    return f'"{escaped}"' if any(c.isspace() for c in escaped) else escaped
