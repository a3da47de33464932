"""A throwaway OpenSSH server on 127.0.0.1 for the ssh target tests.

:class:`SshServer` generates a host key and a user key (``ssh-keygen -t ed25519 -N ''``), writes an
``sshd_config`` into its own temporary directory, runs ``/usr/sbin/sshd -D -e -f CONFIG`` on a free
loopback port and writes a ``known_hosts`` file and an empty client ``ssh_config`` for the client.
Nothing reads or writes the real ``~/.ssh`` or ``/etc/ssh``: the client is pointed at these files
with ``-F``, ``-i`` and ``UserKnownHostsFile``.  The server logs to ``sshd.log`` (``-e`` sends the
log to stderr), which lets tests count authentications.

Use it as a context manager, or call :meth:`start` and :meth:`stop`; :meth:`stop` terminates only
the sshd process this object started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

SSHD = "/usr/sbin/sshd"
START_TIMEOUT = 10.0
START_ATTEMPTS = 5


def missing_tools() -> list[str]:
    """Programs the ssh tests need that are not installed (empty when all are there)."""
    needed = {"sshd": SSHD, "ssh": "ssh", "ssh-keygen": "ssh-keygen", "rsync": "rsync"}
    return [name for name, prog in needed.items() if shutil.which(prog) is None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SshServer:
    """One sshd on 127.0.0.1 that accepts ``root`` with a throwaway ed25519 key."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="btrsync-sshd-"))
        self.host = "127.0.0.1"
        self.user = "root"
        self.port = 0
        self.host_key = self.dir / "host_ed25519"
        self.identity_file = self.dir / "id_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts_file = self.dir / "known_hosts"
        self.ssh_config = self.dir / "ssh_config"
        self.config = self.dir / "sshd_config"
        self.log_file = self.dir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Self:
        """Generate keys, write the configuration and start sshd; wait until it accepts."""
        self._keygen(self.host_key)
        self._keygen(self.identity_file)
        self.authorized_keys.write_text(self.identity_file.with_suffix(".pub").read_text())
        self.ssh_config.write_text("# empty: keeps the tests away from ~/.ssh/config\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        for attempt in range(START_ATTEMPTS):
            # the port was free a moment ago; another process (a parallel test worker) may take
            # it first, then sshd cannot bind and exits: try another port
            self.port = free_port()
            self.config.write_text(self._sshd_config())
            with open(self.log_file, "ab") as log:
                self._proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if self._wait_listening(last=attempt + 1 == START_ATTEMPTS):
                break
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts_file.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        return self

    def stop(self) -> None:
        """Terminate the sshd this object started (its sessions end with it) and remove files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need -------------------------------------------------------------------
    def url(self, path: str | os.PathLike[str]) -> str:
        """``ssh://root@127.0.0.1:PORT/path`` for a remote root (quoted as a URL path)."""
        from urllib.parse import quote

        return f"ssh://{self.user}@{self.host}:{self.port}{quote(str(path))}"

    def settings(self) -> dict[str, object]:
        """Target settings that connect to this server and nothing else."""
        return {
            "identity_file": str(self.identity_file),
            "known_hosts_file": str(self.known_hosts_file),
            "ssh_config": str(self.ssh_config),
            "port": self.port,
            "user": self.user,
        }

    def accepted_logins(self) -> int:
        """How many successful authentications sshd has logged so far."""
        try:
            return self.log_file.read_text(errors="replace").count("Accepted publickey")
        except FileNotFoundError:
            return 0

    # -- helpers ------------------------------------------------------------------------------
    def _keygen(self, path: Path) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "btrsync-test", "-f", str(path)],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )

    def _sshd_config(self) -> str:
        return "\n".join(
            [
                f"ListenAddress {self.host}",
                f"Port {self.port}",
                f"HostKey {self.host_key}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                f"PidFile {self.dir / 'sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "UsePAM no",
                "PrintMotd no",
                "LogLevel INFO",
                "MaxSessions 32",
                "MaxStartups 64",
                "SetEnv SHLVL=1",
                "",
            ]
        )

    def _wait_listening(self, *, last: bool) -> bool:
        """Wait until this sshd logs that it listens on its port (a connection alone could reach
        another process that took the port); False if it could not bind and ``last`` is false."""
        listening = f"Server listening on {self.host} port {self.port}."
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._proc is not None
            if listening in self._log_tail(20_000):
                return True
            if self._proc.poll() is not None:
                if not last and "Address already in use" in self._log_tail():
                    self._proc = None
                    return False
                raise RuntimeError(f"sshd exited with {self._proc.returncode}: {self._log_tail()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not listen on port {self.port} within {START_TIMEOUT}s")

    def _log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-size:]
        except FileNotFoundError:
            return ""
