"""One persistent OpenSSH connection to a host, and the shell snippets the ssh target runs there.

:class:`SshConnection` builds every ``ssh`` argv in one place, starts one master connection
(``ControlMaster``, socket in a private temporary directory) the first time it is needed, and runs
remote shell snippets through it, so listing, stat, get and delete pay no handshake each.  rsync
gets the same options as its ``-e`` command.  The functions at the bottom translate ssh, rsync and
remote-shell failures into the target error types.

Nothing here goes through a local shell: every process is started from an argv list.  The remote
side always gets a shell command string (that is how ssh works), so every remote path must
go through :func:`shlex.quote`; :class:`RemoteScripts` builds every snippet in one place.
"""

from __future__ import annotations

import logging
import os
import posixpath
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from btrsync.errors import ConfigError
from btrsync.targets.base import TEMP_MARKER
from btrsync.targets.errors import (
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    TargetError,
    TransientTargetError,
)

log = logging.getLogger(__name__)

SSH_FAILED = 255  # ssh's own exit status for connection and authentication failures
HOST_KEY_VALUES = ("yes", "accept-new", "no")
_TRANSIENT_RSYNC_CODES = {5, 10, 12, 20, 30, 35, 255}  # start-up, socket, stream, signal, timeouts

# Exit statuses of our remote snippets (the remote tools use 0-2 and 126-127, ssh itself 255).
MISSING = 44  # no such object
NOT_WRITABLE, NO_RSYNC = 45, 46  # probe
SYMLINK = 47  # a path inside the root goes through a symlink (never followed)
NOT_A_DIRECTORY = 48  # probe: the root is a file
SIZE_MISMATCH, COMMIT_FAILED = 65, 66  # the commit after rsync
ROOT_MISSING_TEXT = "btrsync: remote target directory missing"
SYMLINK_TEXT = "btrsync: symlink in target not followed"  # followed by ': <path>' on stderr
# stat(1) errors that mean "no such path": the only failure a listing may take for "empty"
_GONE_PATTERNS = "*'No such file or directory'*|*'Not a directory'*"
MAX_OUTPUT = 1 << 30  # bytes a remote command may answer (a listing of millions of objects fits)
UPLOAD_SUFFIX = f"{TEMP_MARKER}upload"  # rsync's destination name, renamed into place on commit
READ_BLOCK = 1 << 20


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
                    self, _stop_master, self._control_dir, self.config.host, self.config.ssh_config
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


# -- shell snippets ------------------------------------------------------------------------------
class RemoteScripts:
    """The remote shell snippets for one target root (pure string building, no I/O).

    Each snippet first enters the root; paths inside it are ``./``-prefixed (a key may begin with
    ``-``) and quoted.  Snippets use POSIX sh, GNU coreutils and GNU find.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.quoted_root = shlex.quote(root)

    def in_root(self, *lines: str, missing_ok: bool = False) -> str:
        """``lines`` run inside the root (with C-locale messages, which the error translation
        reads).  A missing root exits 0 (``missing_ok``) or 1 with ``ROOT_MISSING_TEXT``; a root
        that cannot be entered for any other reason (``EIO``, ``EACCES``, not a directory) always
        exits 1 with what ``stat`` says, never as "missing"."""
        message = shlex.quote(f"{ROOT_MISSING_TEXT}: No such file or directory")
        on_missing = "exit 0" if missing_ok else "exit 1"
        return "\n".join(
            [
                "export LC_ALL=C",
                f"if ! cd -- {self.quoted_root} 2>/dev/null; then",
                f"  if t=$(stat -c %F -- {self.quoted_root} 2>&1); then",
                f'    echo "btrsync: cannot enter the target directory {_dq(self.root)}'
                + ' (it exists: $t)" >&2; exit 1',
                "  fi",
                f"  case $t in {_GONE_PATTERNS}) echo {message} >&2; {on_missing};; esac",
                '  echo "$t" >&2; exit 1',
                "fi",
                *lines,
            ]
        )

    def no_symlinks(self, *paths: str) -> str:
        """Exit ``SYMLINK`` (naming it on stderr) if any component of a ``./path`` is a symlink.

        A check before the operation, not race-free: it keeps a link planted on the disk from
        leading a delete or a write out of the root; a concurrent attacker with write access to
        the root is out of scope (they could delete the backups directly).
        """
        components = dict.fromkeys(c for path in paths for c in path_components(path))
        quoted = " ".join(shlex.quote(c) for c in components)
        return (
            f'for p in {quoted}; do if [ -L "$p" ]; then '
            f'echo "{SYMLINK_TEXT}: ${{p#./}}" >&2; exit {SYMLINK}; fi; done'
        )

    def need_file(self, path: str) -> str:
        """Exit ``MISSING`` when ``./path`` does not exist or is not a regular file; exit 1 with
        stat's error for anything else (``EIO`` is not "missing": a catalog would drop it)."""
        quoted = shlex.quote(f"./{path}")
        return "\n".join(
            [
                f"if ! t=$(stat -c %F -- {quoted} 2>&1); then",
                f'  case $t in {_GONE_PATTERNS}) exit {MISSING};; esac; echo "$t" >&2; exit 1',
                "fi",
                f'case $t in "regular file"|"regular empty file") ;; *) exit {MISSING};; esac',
            ]
        )

    def probe(self, remote_rsync: str) -> str:
        """Exit ``MISSING``, ``NOT_A_DIRECTORY``, ``NOT_WRITABLE`` or ``NO_RSYNC`` when the root
        is not usable."""
        program = shlex.quote(remote_rsync.split()[0]) if remote_rsync.split() else "rsync"
        return "\n".join(
            [
                f"if [ -e {self.quoted_root} ] && [ ! -d {self.quoted_root} ]; then exit {NOT_A_DIRECTORY}; fi",
                f"[ -d {self.quoted_root} ] || exit {MISSING}",
                f"[ -w {self.quoted_root} ] || exit {NOT_WRITABLE}",
                f"command -v {program} >/dev/null 2>&1 || exit {NO_RSYNC}",
            ]
        )

    def free_space(self) -> str:
        return f"df -B1 --output=avail -- {self.quoted_root}"

    def read_range(self, key: str, offset: int, length: int | None) -> str:
        """Print the object's size on one line, then the range if it fits (from one open fd,
        so a concurrent replacement cannot mix two versions)."""
        path = shlex.quote(f"./{key}")
        count = "" if length is None else f" count={length}"
        return self.in_root(
            self.no_symlinks(key),
            self.need_file(key),
            f"exec <{path} || exit 1",
            "s=$(stat -L -c %s /dev/stdin) || exit 1",
            'echo "$s"',
            f'[ {offset} -le "$s" ] && [ {offset + (length or 0)} -le "$s" ] || exit 0',
            f"exec dd bs={READ_BLOCK} iflag=skip_bytes,count_bytes skip={offset}{count}"
            + " status=none",
        )

    def stat(self, key: str) -> str:
        """``size mtime`` of the object file (mtime in seconds since the epoch, remote clock)."""
        path = shlex.quote(f"./{key}")
        return self.in_root(self.no_symlinks(key), self.need_file(key), f"exec stat -c '%s %Y' -- {path}")

    def first_files(self, limit: int) -> str:
        """NUL-terminated paths of up to ``limit`` files below the root, whatever their names."""
        return self.in_root(f"find -P . -type f -print0 | head -z -n {int(limit)}", missing_ok=True)

    def clock(self) -> str:
        """The mtime (seconds since the epoch) a file made now in the root gets: the remote
        filesystem's clock.  A fresh temporary file (never an existing one: ``set -C``) is made,
        read and removed."""
        name = shlex.quote(f"./clock{TEMP_MARKER}{secrets.token_hex(6)}")
        return self.in_root(
            f'f={name}; set -C; : > "$f" || exit 1',
            's=$(stat -c %Y -- "$f"); r=$?; rm -f -- "$f"; [ $r = 0 ] || exit 1',
            'echo "$s"',
        )

    def listing(self, base: str) -> str:
        """NUL-terminated ``f<TAB>./key<TAB>size<TAB>inode:mtime`` records for the files below ``base`` (a
        directory relative to the root, ``""`` for the root), ``l<TAB>./path`` for symlinks
        (never followed: ``find -P``), skipping anything temporary.

        Fails closed: a missing ``base`` (or root) lists nothing; any other error, on ``base`` or
        on anything below it, exits non-zero (find's status), so a listing is never partial.
        An entry removed while find runs is no error (``-ignore_readdir_race``).  A symlink on
        the way to ``base`` exits ``SYMLINK``.
        """
        start = shlex.quote(f"./{base}" if base else ".")
        lines = []
        if base:
            lines += [
                self.no_symlinks(base),
                f"if ! t=$(stat -c %F -- {start} 2>&1); then",
                f'  case $t in {_GONE_PATTERNS}) exit 0;; esac; echo "$t" >&2; exit 1',
                "fi",
                '[ "$t" = directory ] || exit 0',
            ]
        lines.append(
            f"exec find -P {start} -ignore_readdir_race \\( -name '*{TEMP_MARKER}*' -prune"
            " -o -type l -printf 'l\\t%p\\0' -o -type f -printf 'f\\t%p\\t%s\\t%i:%T@\\0' \\)"
        )
        return self.in_root(*lines, missing_ok=True)

    def temporaries(self) -> str:
        """NUL-terminated ``path<TAB>size<TAB>mtime`` records for every temporary file below the
        root (symlinks are not followed, nor listed); fails closed like ``listing``."""
        return self.in_root(
            f"exec find -P . -ignore_readdir_race -name '*{TEMP_MARKER}*' -type f"
            " -printf '%P\\t%s\\t%T@\\0'",
            missing_ok=True,
        )

    def remove(self, path: str, *, sync: bool) -> str:
        """Remove a file (``MISSING`` if absent, ``SYMLINK`` if its path goes through a link),
        optionally fsync its directory, then remove the directories it leaves empty."""
        quoted, parent = shlex.quote(f"./{path}"), posixpath.dirname(path)
        lines = [self.no_symlinks(path), self.need_file(path), f"rm -f -- {quoted} || exit 1"]
        if sync:
            lines.append(f"sync -- {shlex.quote('./' + parent)} || exit 1")
        if parent:
            lines.append(f"rmdir -p -- {shlex.quote(parent)} 2>/dev/null; exit 0")
        return self.in_root(*lines)

    def rsync_path(self, key: str, size: int, remote_rsync: str, partial_dir: str = "") -> str:
        """The remote command rsync starts instead of plain ``rsync``.

        Before the rsync server: enter the root (refusing to create a missing one, which may be an
        unmounted disk), refuse a key whose path (or upload name, or ``partial_dir`` next to it)
        goes through a symlink (``SYMLINK_TEXT`` on stderr), and create the key's directories.  After it succeeded: check the size,
        ``sync`` the file, rename it into place and ``sync`` the directories up to the root.  rsync
        appends its server arguments, which reach the inner ``sh -c`` as ``"$@"``; the client
        waits for this command, so the commit has happened (or failed) when rsync returns.
        """
        tmp, final = shlex.quote(f"./{key}{UPLOAD_SUFFIX}"), shlex.quote(f"./{key}")
        dirs = " ".join(shlex.quote(d) for d in dirs_up_to_root(key))
        commit = "; ".join(
            [
                f'{remote_rsync} "$@" || exit',
                f"s=$(stat -c %s -- {tmp}) || exit {COMMIT_FAILED}",
                f'if [ "$s" != {size} ]; then rm -f -- {tmp}; '
                + f'echo "uploaded size $s is not {size}" >&2; exit {SIZE_MISMATCH}; fi',
                # stamped with the remote's time whatever rsync_options say (-t would keep the
                # writer's): leases are judged by these stamps
                f"touch -c -- {tmp} && sync -- {tmp} && mv -f -T -- {tmp} {final} && sync -- {dirs}"
                + f" || exit {COMMIT_FAILED}",
            ]
        )
        missing = shlex.quote(ROOT_MISSING_TEXT)
        directory = posixpath.dirname(key)
        parent = shlex.quote("./" + (directory or "."))
        extra = [f"{key}{UPLOAD_SUFFIX}"]
        if partial_dir:
            partial = posixpath.join(directory, partial_dir)
            extra += [partial, posixpath.join(partial, posixpath.basename(key) + UPLOAD_SUFFIX)]
        return (
            f"export LC_ALL=C; cd -- {self.quoted_root} || {{ echo {missing} >&2; exit 1; }}; "
            f"{self.no_symlinks(key, *extra)}; "
            f"{{ [ -d {parent} ] || mkdir -p -- {parent}; }} && sh -c {shlex.quote(commit)} rsync"
        )


def path_components(path: str) -> list[str]:
    """``a/b/k`` -> ``./a ./a/b ./a/b/k``: every path a walk from the root to ``path`` opens."""
    parts = path.split("/")
    return ["./" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _dq(text: str) -> str:
    """``text`` safe inside a double-quoted shell string (for messages)."""
    return "".join("\\" + c if c in '\\"$`' else c for c in text)


def dirs_up_to_root(key: str) -> list[str]:
    """``a/b/k`` -> ``./a/b ./a .``: every directory a new object may have added an entry to."""
    dirs, parent = [], posixpath.dirname(key)
    while parent:
        dirs.append(f"./{parent}")
        parent = posixpath.dirname(parent)
    return [*dirs, "."]


def _stop_master(directory: str, host: str, ssh_config: str | None) -> None:
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


# -- failure translation ----------------------------------------------------------------------
def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


def ssh_error(stderr: str, where: str) -> TargetError:
    """Translate a failed ssh connection (exit status 255) into a target error with a hint."""
    if "Host key verification failed" in stderr or "HOST IDENTIFICATION HAS CHANGED" in stderr:
        return PermissionDenied(
            f"ssh refused the host key of {where}: the host is not in known_hosts or its key "
            "changed; check the key fingerprint out of band, then add it (ssh-keyscan, or connect "
            "once with plain ssh) to the known_hosts file the target uses"
        )
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return PermissionDenied(
            f"ssh authentication to {where} failed ({_last_line(stderr)}): check the user, the "
            "identity_file setting and the authorized_keys entry on the remote host"
        )
    if "Could not resolve hostname" in stderr:
        return TransientTargetError(f"cannot resolve the ssh host {where}: {_last_line(stderr)}")
    return TransientTargetError(f"cannot reach {where} over ssh: {_last_line(stderr)}")


def remote_error(stderr: str, where: str) -> TargetError:
    """Translate a failed remote command from its error text."""
    if "No space left" in stderr or "Disk quota exceeded" in stderr:
        return QuotaExceeded(f"target full while writing {where}: free space there and run again")
    if (
        "Permission denied" in stderr
        or "Read-only file system" in stderr
        or "Operation not permitted" in stderr
    ):
        return PermissionDenied(f"the remote host refused access to {where}: {_last_line(stderr)}")
    if "No such file or directory" in stderr:
        return NotFound(f"{where} not found")
    if _is_missing_program(stderr):
        return TargetError(
            f"a required program is missing on the remote host ({_last_line(stderr)}): install "
            "rsync and GNU coreutils there"
        )
    return TargetError(f"remote command failed for {where}: {_last_line(stderr)}")


def _is_missing_program(stderr: str) -> bool:
    """bash says 'rsync: command not found', dash says 'sh: 1: rsync: not found'."""
    return "command not found" in stderr or ("sh: " in stderr and ": not found" in stderr)


def rsync_error(returncode: int, stderr: str, where: str, display: str) -> TargetError:
    """Translate a failed rsync run: ssh failures, full disks, refused writes, dropped links."""
    if _is_missing_program(stderr):
        return remote_error(stderr, where)
    if "Host key verification failed" in stderr or "Permission denied (" in stderr:
        return ssh_error(stderr, display)
    if (
        "No space left" in stderr
        or "Disk quota exceeded" in stderr
        or "Permission denied" in stderr
    ):
        return remote_error(stderr, where)
    if returncode < 0 or returncode in _TRANSIENT_RSYNC_CODES:
        return TransientTargetError(
            f"rsync transfer of {where} was interrupted (exit {returncode}): {_last_line(stderr)}; "
            "the partial upload is kept and the next attempt resumes it"
        )
    return TargetError(f"rsync failed for {where} (exit {returncode}): {_last_line(stderr)}")


# -- settings ---------------------------------------------------------------------------------
def _listed(name: str) -> str:
    """``name``, which must be in btrsync.targets.settings.SSH (what config check accepts)."""
    from btrsync.targets.settings import SSH

    if name not in SSH:
        raise AssertionError(f"ssh target setting {name!r} is read but not listed in btrsync/targets/settings.py")
    return name


def setting_str(settings: Mapping[str, Any], name: str) -> str | None:
    """A string setting, or ``None`` when unset; ``ConfigError`` for other types."""
    value = settings.get(_listed(name))
    if value is None or isinstance(value, str):
        return value or None
    raise ConfigError(f"ssh target setting {name!r} must be a string, not {type(value).__name__}")


def setting_path(settings: Mapping[str, Any], name: str) -> str | None:
    """A path setting with ``~`` expanded."""
    value = settings.get(_listed(name))
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    text = setting_str({name: value}, name)
    return os.path.expanduser(text) if text else None


def setting_int(settings: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    """A positive integer setting."""
    value = settings.get(_listed(name), default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"ssh target setting {name!r} must be a positive integer, not {value!r}")
    return value


def setting_strings(settings: Mapping[str, Any], name: str) -> tuple[str, ...]:
    """A list-of-strings setting (each one a single argument, never split on spaces)."""
    value = settings.get(_listed(name)) or ()
    if isinstance(value, str) or not all(isinstance(v, str) and "\n" not in v for v in value):
        raise ConfigError(f"ssh target setting {name!r} must be a list of strings")
    return tuple(value)


def host_key_checking(settings: Mapping[str, Any]) -> str:
    """``strict_host_key_checking``: ``yes`` (default), ``accept-new`` or ``no`` (true = yes)."""
    value = settings.get(_listed("strict_host_key_checking"), "yes")
    if isinstance(value, bool):
        value = "yes" if value else "no"
    if value not in HOST_KEY_VALUES:
        raise ConfigError(
            "ssh target setting 'strict_host_key_checking' must be one of "
            + ", ".join(HOST_KEY_VALUES)
        )
    return str(value)


def config_from_settings(
    host: str, user: str | None, port: int | None, settings: Mapping[str, Any]
) -> SshConfig:
    """The connection part of an ssh target's settings; the URL's user and port win."""
    return SshConfig(
        host=host,
        user=user or setting_str(settings, "user"),
        port=port or setting_int(settings, "port"),
        identity_file=setting_path(settings, "identity_file"),
        known_hosts_file=setting_path(settings, "known_hosts_file"),
        ssh_config=setting_path(settings, "ssh_config"),
        ssh_options=setting_strings(settings, "ssh_options"),
        strict_host_key_checking=host_key_checking(settings),
        connect_timeout=setting_int(settings, "connect_timeout", 30) or 30,
        server_alive_interval=setting_int(settings, "server_alive_interval", 15) or 15,
        control_persist=setting_int(settings, "control_persist", 120) or 120,
    )
