"""``services.btrsync.sshAccess`` under a real sshd: a push goes through the restricted key, nothing
else does.

The NixOS module is evaluated (tests/nix/nixeval.py) for a receiving server; what it renders (the
user, its home, the ``restrict,command="<wrapper>"`` authorized_keys line and the wrapper script)
is installed in the booted container (tests/systemd/harness.py: its /etc is a throwaway tmpfs, so
the user exists only there), and OpenSSH's sshd runs there with NixOS's ``AuthorizedKeysFile``
(``/etc/ssh/authorized_keys.d/%u``).  The host's /usr plays the Nix store: the wrapper's store
paths become directories of links to the Debian programs (``nix_like_path``) and its ``--ro-bind
/nix/store /nix/store`` binds /usr (with the merged-/usr links) and those directories instead.
The container shares the host's network: btrsync on the host pushes to
``ssh://btrsync@127.0.0.1:PORT/~/web1`` with the host's ssh client.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.nix.nixeval import evaluate, find_lib
from tests.support.loopfs import create_subvolume
from tests.support.sshd import free_port
from tests.systemd.conftest import Booted
from tests.systemd.harness import nix_like_path
from tests.systemd.test_generated_units import host_cli

pytestmark = [pytest.mark.systemd, pytest.mark.btrfs]

STUB_STORE = "/nix/store/00000000000000000000000000000000-"
# the host's /usr as the store: what a program found through it needs (Debian 12 is merged-/usr)
USR_AS_STORE = "--ro-bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/bin /bin"


class Server:
    """The receiving server in the container, and the sending host's ssh client files."""

    def __init__(self, booted: Booted) -> None:
        self.booted = booted
        self.c = booted.container
        self.work = booted.data / "ssh-access"
        self.work.mkdir()
        for d in (booted.data, self.work):  # the user's home is below: it must be reachable
            d.chmod(0o755)
        self.client_key = self.work / "client"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@web1", "-f", str(self.client_key)],
                       check=True, capture_output=True)
        self.host_key = self.work / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True,
                       capture_output=True)
        self.outside = self.work / "outside"  # a directory beside the home: never reachable
        self.outside.mkdir()
        (self.outside / "secret").write_text("not for the backup key\n")
        self.ssh_config = self.work / "ssh_config"
        self.ssh_config.write_text("# empty\n")
        self.known_hosts = self.work / "known_hosts"
        self.port = 0

    def render(self) -> dict[str, str]:
        """Evaluate the module for this server; install the user, its key line and the wrapper."""
        home = self.work / "home"
        module = self.work / "server.nix"
        pub = self.client_key.with_suffix(".pub").read_text().strip()
        module.write_text(f'{{ services.btrsync.sshAccess = {{ enable = true; home = "{home}"; '
                          f'authorizedKeys = [ "{pub}" ]; }}; }}\n')
        result = evaluate(find_lib(), [str(module)])
        assert result["assertions"] == []
        user = result["users"]["btrsync"]
        assert user["home"] == str(home) and user["homeMode"] == "700" and user["isSystemUser"] is True
        (key_line,) = user["openssh"]["authorizedKeys"]["keys"]
        farm = self.work / "store"
        nix_like_path(farm, ["bash", "coreutils", "findutils", "rsync", "bubblewrap"])
        wrapper = self.work / "btrsync-ssh-access"
        text = result["sshForcedCommand"]
        assert "--ro-bind /nix/store /nix/store" in text
        text = text.replace("--ro-bind /nix/store /nix/store", f"{USR_AS_STORE} --ro-bind {farm} {farm}")
        wrapper.write_text("#!/bin/bash\n" + text.replace(STUB_STORE, f"{farm}/"))  # writeShellScript's
        wrapper.chmod(0o755)
        key_line = key_line.replace(f"{STUB_STORE}btrsync-ssh-access", str(wrapper))
        assert key_line == f'restrict,command="{wrapper}" {pub}'
        keys = self.work / "authorized_keys"
        keys.write_text(key_line + "\n")
        # users.users.btrsync as NixOS creates it: a system user, its group, its home 0700, bash
        c = self.c
        c.run(["groupadd", "--system", user["group"]])
        # password '*' (none), not '!' (locked): NixOS's sshd goes through PAM, which lets a key log in
        # to an account without a password; this one runs without PAM (the container has no
        # /etc/pam.d), where OpenSSH refuses a locked account
        c.run(["useradd", "--system", "--gid", user["group"], "--home-dir", str(home), "--shell", "/bin/bash",
               "--password", "*", "btrsync"])
        c.run(["install", "-d", "-m", "0700", "-o", "btrsync", "-g", user["group"], str(home)])
        c.run(["install", "-D", "-m", "0444", str(keys), "/etc/ssh/authorized_keys.d/btrsync"])
        return {"home": str(home)}

    def start_sshd(self) -> None:
        self.port = free_port()
        config = self.work / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {self.host_key}",
            # NixOS: users.users.<name>.openssh.authorizedKeys.keys land in /etc/ssh/authorized_keys.d/%u
            "AuthorizedKeysFile %h/.ssh/authorized_keys /etc/ssh/authorized_keys.d/%u",
            "PermitRootLogin no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "StrictModes yes", "UsePAM no", "PrintMotd no", "LogLevel VERBOSE",
            f"PidFile {self.work / 'sshd.pid'}", ""]))
        self.c.run(["mkdir", "-p", "-m", "0755", "/run/sshd"])
        # the container's /etc is empty: sshd's privilege separation user, as services.openssh has it
        self.c.run(["useradd", "--system", "--no-create-home", "--home-dir", "/run/sshd", "--shell",
                    "/usr/sbin/nologin", "sshd"])
        self.c.run(["systemd-run", "--unit=btrsync-test-sshd", "/usr/sbin/sshd", "-D", "-e", "-f", str(config)])
        deadline = time.monotonic() + 20
        while f"Server listening on 127.0.0.1 port {self.port}" not in self.c.journal("btrsync-test-sshd"):
            state = self.c.show("btrsync-test-sshd.service", "ActiveState")["ActiveState"]
            assert time.monotonic() < deadline and state != "failed", self.c.journal("btrsync-test-sshd")
            time.sleep(0.1)
        pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")

    def ssh_argv(self, *extra: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), "-i", str(self.client_key), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                *extra]

    def ssh(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.ssh_argv(*args), input=stdin, capture_output=True, text=True, timeout=60,
                              check=False)

    def rsync(self, *args: str) -> subprocess.CompletedProcess[str]:
        rsh = " ".join(self.ssh_argv())
        return subprocess.run(["rsync", "-e", rsh, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def server(booted: Booted) -> Server:
    s = Server(booted)
    s.render()
    s.start_sshd()
    return s


def test_a_push_goes_through_the_restricted_key_into_the_home(server: Server, booted: Booted) -> None:
    work = server.work / "sender"
    work.mkdir()
    key = work / "key"
    assert host_cli(work / "none.toml", "key", "generate", str(key)).returncode == 0
    config = work / "config.toml"
    config.write_text(f"""
key_file = "{key}"
state_dir = "{work / 'state'}"
[targets.nas]
url = "ssh://btrsync@127.0.0.1:{server.port}/~/web1"
identity_file = "{server.client_key}"
known_hosts_file = "{server.known_hosts}"
ssh_config = "{server.ssh_config}"
""")
    subvolume = create_subvolume(booted.fs / "ssh-access")
    (subvolume / "file").write_bytes(os.urandom(200_000))
    (subvolume / "dir").mkdir()
    (subvolume / "dir" / "small").write_text("hello\n")
    snaps = booted.fs / "ssh-access.snapshots"
    snaps.mkdir()
    # the repository directory is made through the same key (btrsync init does not create a missing
    # ssh target directory: it could be an unmounted disk's mount point)
    made = server.ssh("btrsync@127.0.0.1", "mkdir web1")
    assert made.returncode == 0, made.stderr
    init = host_cli(config, "init", "--to", "nas")
    assert init.returncode == 0, init.stderr + server.c.journal("btrsync-test-sshd")
    for _ in range(2):  # a full, then an incremental
        (subvolume / "dir" / "small").write_text(f"hello {time.monotonic()}\n")
        snap = host_cli(config, "snapshot", "create", str(subvolume), "--snapshot-dir", str(snaps))
        assert snap.returncode == 0, snap.stderr
        time.sleep(1.1)  # snapshot names are by the second
        push = host_cli(config, "push", str(subvolume), "--snapshot-dir", str(snaps), "--to", "nas")
        assert push.returncode == 0, push.stderr
    listed = host_cli(config, "list", "--from", "nas", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 2
    verify = host_cli(config, "verify", "--from", "nas", "--level", "data")
    assert verify.returncode == 0, verify.stderr
    restore = work / "restore"
    restore.mkdir()
    got = host_cli(config, "restore", "ssh-access@latest", "--from", "nas", "--to", str(restore))
    assert got.returncode == 0, got.stderr
    (restored,) = restore.iterdir()
    assert (restored / "file").read_bytes() == (subvolume / "file").read_bytes()
    # the repository is in the user's home, owned by it
    repo = server.work / "home" / "web1"
    assert (repo / "btrsync-repo.json").is_file() or any(repo.iterdir())
    owner = server.c.run(["stat", "-c", "%U", str(repo)]).stdout.strip()
    assert owner == "btrsync"


def test_no_shell_for_the_key(server: Server) -> None:
    proc = server.ssh("-T", "btrsync@127.0.0.1", stdin="id\nexit\n")
    assert proc.returncode == 1, proc
    assert "this key runs btrsync's commands only (no shell)" in proc.stderr, proc
    assert "uid=" not in proc.stdout
    # a terminal is refused (restrict: no-pty), so no interactive shell either
    proc = server.ssh("-tt", "btrsync@127.0.0.1", stdin="id\nexit\n")
    assert proc.returncode != 0 and "PTY allocation request failed" in proc.stderr and "uid=" not in proc.stdout, proc


def test_commands_see_only_the_home_and_the_programs(server: Server) -> None:
    home = server.work / "home"
    # the rest of the filesystem is not there: not the host's /etc, not a directory beside the home
    for path in ("/etc/passwd", "/etc/ssh/authorized_keys.d/btrsync", str(server.outside / "secret"),
                 "/var/lib/btrsync", "/root"):
        proc = server.ssh("btrsync@127.0.0.1", f"cat {path}")
        assert proc.returncode != 0 and "No such file or directory" in proc.stderr, (path, proc)
    # writing anywhere but the home fails; the home is writable
    assert server.ssh("btrsync@127.0.0.1", f"echo x > {server.outside}/new").returncode != 0
    assert not (server.outside / "new").exists()
    assert server.ssh("btrsync@127.0.0.1", "touch /usr/new").returncode != 0
    assert server.ssh("btrsync@127.0.0.1", "echo ok > probe && cat probe").stdout == "ok\n"
    assert (home / "probe").read_text() == "ok\n"
    # no network from inside (--unshare-all): the sandbox cannot reach the server's own sshd
    proc = server.ssh("btrsync@127.0.0.1", f"exec 3<>/dev/tcp/127.0.0.1/{server.port}")
    assert proc.returncode != 0
    # the PATH is exactly the programs the ssh target uses
    assert server.ssh("btrsync@127.0.0.1", "command -v curl || command -v python3 || command -v ssh").returncode != 0


def test_rsync_outside_the_home_is_refused(server: Server, tmp_path: Path) -> None:
    local = tmp_path / "payload"
    local.write_text("payload\n")
    proc = server.rsync(str(local), f"btrsync@127.0.0.1:{server.outside}/payload")
    assert proc.returncode != 0, proc
    assert not (server.outside / "payload").exists()
    proc = server.rsync(f"btrsync@127.0.0.1:{server.outside}/secret", str(tmp_path / "stolen"))
    assert proc.returncode != 0 and not (tmp_path / "stolen").exists(), proc
    proc = server.rsync("btrsync@127.0.0.1:/etc/shadow", str(tmp_path / "shadow"))
    assert proc.returncode != 0 and not (tmp_path / "shadow").exists(), proc
    # inside the home it works (what the ssh target does)
    assert server.rsync(str(local), "btrsync@127.0.0.1:payload").returncode == 0
    assert (server.work / "home" / "payload").read_text() == "payload\n"


def test_no_forwarding_for_the_key(server: Server) -> None:
    proc = server.ssh("-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22", "btrsync@127.0.0.1", "true")
    assert proc.returncode == 255, proc
    assert "remote port forwarding failed" in proc.stderr.lower() or "forward" in proc.stderr.lower(), proc
