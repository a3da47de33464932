"""The rsync-over-ssh target, ``ssh://[user@]host[:port]/path``.

The remote layout is the directory target's (:mod:`btrsync.targets.local`): objects are files under
the root and a key's ``/`` separators are directories.  Everything that is not a complete object has
``.tmp-`` in its name, so ``list`` never shows it and ``btrsync clean`` finds it.

``put`` in four steps:

1. spool the parts into one local file (``spool_dir``; only this object is spooled),
2. ``rsync`` that file to ``<key>.tmp-upload`` next to the final name, with
   ``--partial-dir=.tmp-rsync-partial``: an interrupted transfer keeps what arrived, and the next
   attempt sends only the missing blocks (rsync's delta algorithm uses the partial file as its
   basis); rsync verifies every file with its whole-file checksum,
3. on the remote, in the same ssh session: check the size, ``sync`` (fsync) the file, ``mv -T``
   it to the final name (an atomic ``rename``), ``sync`` the directories up to the root,
4. delete the spool file.

So an object is either absent or complete and durable.  A transient transfer failure is retried
from the spool file under ``policy``, each retry resuming the partial upload.  Unlike the other
targets, a ``put`` whose transfer finally fails deliberately leaves its hidden partial upload for
the next ``put`` of the key; ``leftovers`` (``list_temporaries``) and ``remove_leftover``
(``remove_temporary``) let ``btrsync clean`` remove stale ones.  Small operations (``get``,
``stat``, ``list``, ``delete``) are single remote commands run over one shared ssh master
connection (:mod:`btrsync.targets.ssh.connection`).

Safety rules shared with the directory target (:mod:`btrsync.targets.safety`): listings fail
closed (one remote ``find -P``; any error it meets raises, only a missing root or prefix is
empty), no command reads, writes or deletes through a symlink inside the root (each path
component is checked with ``[ -L ]`` first; listings skip links with a warning), and system
directories are refused as roots.  ``set_rate_limit`` passes the push's rate to rsync as
``--bwlimit``.

The remote host needs a POSIX login shell, rsync and GNU coreutils/findutils (``stat -c``,
``dd iflag=skip_bytes``, ``sync FILE``, ``mv -T``, ``df --output``,
``find -P -ignore_readdir_race -printf``).
"""

from __future__ import annotations

import builtins
import logging
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Self

from btrsync.errors import ConfigError, TargetMissingError
from btrsync.fdio import write_all
from btrsync.targets.base import (
    TEMP_MARKER,
    Capabilities,
    Leftover,
    ObjectInfo,
    Target,
    check_range,
    validate_key,
    validate_prefix,
)
from btrsync.targets.errors import (
    InvalidKey,
    NotFound,
    TargetError,
    TransientTargetError,
)
from btrsync.targets.retry import RetryPolicy
from btrsync.targets.safety import SymlinkInTarget
from btrsync.targets.ssh.connection import SshConfig, SshConnection
from btrsync.targets.ssh.errors import remote_error, rsync_error, ssh_error
from btrsync.targets.ssh.parsers import (
    TemporaryUpload,
    TransferStats,
    intended_key,
    is_count,
    leftover_kind,
    parse_int,
    parse_listing,
    parse_mtime,
    parse_stats,
    parse_temporaries,
    symlink_path,
)
from btrsync.targets.ssh.scripts import (
    COMMIT_FAILED,
    MISSING,
    NO_RSYNC,
    NOT_A_DIRECTORY,
    NOT_WRITABLE,
    PARTIAL_DIR,
    READ_BLOCK,
    ROOT_MISSING_TEXT,
    SIZE_MISMATCH,
    SYMLINK,
    SYMLINK_TEXT,
    UPLOAD_SUFFIX,
    RemoteScripts,
)
from btrsync.targets.ssh.settings import (
    checked_rsync_options,
    config_from_settings,
    remote_root,
    setting_int,
    setting_path,
    setting_str,
)

if TYPE_CHECKING:
    from btrsync.targets.url import TargetURL

log = logging.getLogger(__name__)

_TEMP_RE = re.compile(r"^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$")

#: bytes per second for rsync's ``--bwlimit`` (``None``: unlimited), asked at each transfer's start
RateLimit = Callable[[], "float | None"]


class SshTarget(Target):
    """Objects as files under a directory on an ssh host, written with rsync.

    Thread-safe for distinct keys (``capabilities.connections`` at once; each concurrent ``put``
    spools one object).  Two concurrent ``put`` calls of the *same* key are not supported: they
    share the resumable upload name.
    """

    capabilities = Capabilities(max_part_size=64 * 1024 * 1024, connections=4)

    def __init__(
        self,
        config: SshConfig,
        root: str,
        *,
        spool_dir: str | None = None,
        rsync_options: Iterable[str] = (),
        io_timeout: int = 300,
        remote_rsync: str = "rsync",
        policy: RetryPolicy | None = None,
    ) -> None:
        self.root = root
        self.conn = SshConnection(config)
        self.scripts = RemoteScripts(root)
        self.rsync_options = tuple(rsync_options)
        self.io_timeout = io_timeout
        self.remote_rsync = remote_rsync
        self.policy = policy or RetryPolicy()
        self._spool_setting = spool_dir
        self._private_spool: str | None = None
        self._spool_finalizer: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()
        self._rate_limit: RateLimit | None = None
        self._transfers = 0  # rsync transfers running now (they share the rate limit)
        shown = root if root.startswith("/") else f"/~/{root}"
        self.display_url = f"ssh://{config.display}{shown}"

    @classmethod
    def from_url(cls, parsed: TargetURL, settings: Mapping[str, Any]) -> SshTarget:
        """Build the target from a parsed ``ssh://`` URL; URL user and port win over settings.

        Setting names may use ``-`` or ``_``; unknown names (such as ``url``) are ignored.
        """
        settings = {str(k).replace("-", "_"): v for k, v in settings.items() if v is not None}
        return cls(
            config_from_settings(parsed.host, parsed.user, parsed.port, settings),
            remote_root(parsed.path),
            spool_dir=setting_path(settings, "spool_dir"),
            rsync_options=checked_rsync_options(settings),
            io_timeout=setting_int(settings, "io_timeout", 300) or 300,
            remote_rsync=setting_str(settings, "remote_rsync") or "rsync",
            policy=RetryPolicy(attempts=setting_int(settings, "max_attempts", 5) or 5),
        )

    def __enter__(self) -> Self:
        return self

    def set_rate_limit(self, rate: float | RateLimit | None) -> None:
        """Limit what rsync sends: bytes per second, or a function asked for the current rate at
        the start of each transfer (``None``: unlimited).

        The push throttles the parts it hands to ``put`` with its token bucket, but that only
        paces the local spooling; rsync then sent each object at line rate.  The push (or whoever
        holds the bucket) passes the same rate here, and each rsync gets ``--bwlimit`` = its share
        of it (the rate divided by the transfers running when it starts, in KiB/s as rsync
        wants).  Reachable through ``RetryingTarget``, which forwards unknown attributes.
        """
        if rate is None or callable(rate):
            self._rate_limit = rate
        elif isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0:
            fixed = float(rate)
            self._rate_limit = lambda: fixed
        else:
            raise ConfigError(f"rate limit must be a positive number of bytes per second, not {rate!r}")

    def bwlimit_options(self, transfers: int = 1) -> builtins.list[str]:
        """``["--bwlimit=KIB"]`` for one of ``transfers`` concurrent rsyncs, or ``[]``."""
        rate = self._rate_limit() if self._rate_limit is not None else None
        if rate is None or rate <= 0:
            return []
        return [f"--bwlimit={max(1, int(rate / max(1, transfers) / 1024))}"]

    # -- remote commands ----------------------------------------------------------------------
    def _run(self, script: str, where: str) -> bytes:
        """Run a snippet; translate a non-zero exit (``MISSING`` is ``NotFound``)."""
        result = self.conn.run(script, timeout=self.io_timeout)
        if result.returncode == MISSING:
            raise NotFound(f"{where} not found on {self.display_url}")
        if result.returncode == SYMLINK:
            raise self._symlink_error(result.stderr)
        if result.returncode != 0:
            raise remote_error(result.stderr, f"{where} on {self.display_url}")
        return result.stdout

    def _run_listing(self, script: str, what: str) -> bytes | None:
        """Run a listing snippet: its output, or ``None`` when the listed path goes through a
        symlink (warned about).  Fails closed: any other failure raises a ``TargetError`` that
        is never ``NotFound`` (a find that could not read a directory is not an empty one)."""
        result = self.conn.run(script, timeout=self.io_timeout)
        if result.returncode == SYMLINK:
            self._warn_symlink(symlink_path(result.stderr))
            return None
        if result.returncode != 0:
            error = remote_error(result.stderr, f"{what} on {self.display_url}")
            if isinstance(error, NotFound) or type(error) is TargetError:
                error = TargetError(
                    f"cannot {what} on {self.display_url}: {result.stderr.strip()[-300:] or 'no message'}"
                    f" (exit {result.returncode}); a listing with holes would make stored data look "
                    "orphaned: check the remote disk and run again"
                )
            raise error
        return result.stdout

    def _symlink_error(self, stderr: str) -> SymlinkInTarget:
        return SymlinkInTarget(self.display_url, symlink_path(stderr))

    def _warn_symlink(self, path: str) -> None:
        log.warning("symlink in target %s not followed, skipped: %s (btrsync never follows links "
                    "inside a target; replace it with the real file or directory, or remove it)",
                    self.display_url, path)

    def _where(self, key: str) -> str:
        return f"{key} on {self.display_url}"

    # -- the interface ------------------------------------------------------------------------
    def probe(self) -> None:
        """Check that the root exists and is writable and that rsync runs there.

        Raises ``TargetMissingError`` for a missing root, ``PermissionDenied`` for host-key or
        login failures and ``TransientTargetError`` when the host cannot be reached.
        """
        host = self.conn.config.display
        result = self.conn.run(self.scripts.probe(self.remote_rsync), timeout=self.io_timeout)
        if result.returncode == MISSING:
            raise TargetMissingError(
                f"target directory {self.root} does not exist on {host}; create it with "
                f"'ssh {host} mkdir -p {shlex.quote(self.root)}' if this is a new target"
            )
        if result.returncode == NOT_A_DIRECTORY:
            raise TargetMissingError(
                f"target path {self.root} on {host} is not a directory; use a directory there"
            )
        if result.returncode == NOT_WRITABLE:
            raise TargetError(
                f"target directory {self.root} on {host} is not writable by the ssh user"
            )
        if result.returncode == NO_RSYNC:
            raise TargetError(f"rsync is not installed on {host}: install it there")
        if result.returncode != 0:
            raise remote_error(result.stderr, self.display_url)

    def free_space(self) -> int | None:
        """Bytes available to the ssh user in the root's filesystem; ``None`` if unknown."""
        result = self.conn.run(self.scripts.free_space(), timeout=self.io_timeout)
        lines = result.stdout.decode(errors="replace").split()
        if result.returncode != 0 or not lines or not is_count(lines[-1]):
            log.debug("free space unknown url=%s error=%s", self.display_url, result.stderr.strip())
            return None
        return int(lines[-1])

    def put(self, key: str, parts: Iterable[bytes]) -> ObjectInfo:
        """Spool, rsync and atomically rename into place; see the module docstring.

        A transient transfer failure is retried from the spool file under ``policy`` (each retry
        resumes the partial upload), because the parts stream itself cannot be replayed.
        """
        validate_key(key)
        with self._spooled(parts, key) as (spool, size):
            stats = self.policy.call(
                lambda: self._upload(spool, key, size), f"upload {key} to {self.display_url}"
            )
        log.debug(
            "put finished key=%s bytes=%d literal=%d matched=%d sent=%d",
            key,
            size,
            stats.literal,
            stats.matched,
            stats.sent,
            extra={"transfer": stats},
        )
        return ObjectInfo(key, size)

    def get(
        self, key: str, *, offset: int = 0, length: int | None = None
    ) -> Generator[bytes, None, None]:
        """Stream a range with one remote ``dd`` (bounded memory: one block at a time)."""
        validate_key(key)
        if offset < 0 or (length is not None and length < 0):
            check_range(key, 0, offset, length)
        script = self.scripts.read_range(key, offset, length)
        with tempfile.TemporaryFile() as err:
            yield from self._stream(script, err, key, offset, length)

    def stat(self, key: str) -> ObjectInfo:
        """Size of the object file; ``NotFound`` if there is none."""
        where = self._where(key)
        out = self._run(self.scripts.stat(validate_key(key)), where)
        size, _, mtime = out.decode(errors="replace").strip().partition(" ")
        return ObjectInfo(key, parse_int(size.encode(), where), modified=parse_mtime(mtime))

    def first_files(self, limit: int = 3) -> builtins.list[str]:
        """Up to ``limit`` files below the root, whatever their names (one remote ``find``)."""
        out = self._run_listing(self.scripts.first_files(limit), "look for files")
        return [p.removeprefix("./") for p in (out or b"").decode(errors="replace").split("\0") if p][:limit]

    def clock(self) -> datetime | None:
        """The remote filesystem's time, as it stamps a file made now; ``None`` if the root
        cannot be written or the answer is not a time."""
        result = self.conn.run(self.scripts.clock(), timeout=self.io_timeout)
        now = parse_mtime(result.stdout.decode(errors="replace").strip()) if result.returncode == 0 else None
        if now is None:
            log.debug("cannot read the clock of %s: %s", self.display_url, result.stderr.strip()[:200])
        return now

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """One remote ``find -P`` below the deepest directory the prefix names; sorted locally.

        Complete or an error (see :meth:`RemoteScripts.listing`); symlinks are skipped with a
        warning.
        """
        validate_prefix(prefix)
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        out = self._run_listing(self.scripts.listing(base), f"list {prefix or 'everything'!r}")
        found: builtins.list[ObjectInfo] = []
        for kind, path, info in parse_listing(out or b""):
            if kind == "l":
                self._warn_symlink(path)
            elif info is not None and info.key.startswith(prefix):
                found.append(info)
        found.sort(key=lambda o: o.key)
        yield from found

    def delete(self, key: str) -> None:
        """Remove the object, fsync its directory and remove directories left empty."""
        self._run(self.scripts.remove(validate_key(key), sync=True), self._where(key))

    def list_temporaries(self) -> builtins.list[TemporaryUpload]:
        """Leftovers of interrupted uploads (``.tmp-`` files and rsync partials), for ``clean``.

        An upload in progress in another process shows up too: look at ``mtime`` before removing.
        """
        out = self._run_listing(self.scripts.temporaries(), "list temporary files")
        return sorted(parse_temporaries(out or b""), key=lambda t: t.path)

    def remove_temporary(self, path: str) -> None:
        """Remove one file named by ``list_temporaries`` and the directories it leaves empty."""
        if (
            not _TEMP_RE.match(path)
            or TEMP_MARKER not in posixpath.basename(path)
            or any(part in (".", "..") for part in path.split("/"))
        ):
            raise InvalidKey(f"{path!r} is not a temporary file of this target")
        self._run(self.scripts.remove(path, sync=False), f"temporary {path}")

    def leftovers(self) -> builtins.list[Leftover]:
        """``list_temporaries`` as ``Leftover``s, each with the key it was meant to become."""
        return [
            Leftover(leftover_kind(t.path), intended_key(t.path), t.size, t.path)
            for t in self.list_temporaries()
        ]

    def remove_leftover(self, leftover: Leftover) -> None:
        """Remove one leftover; one that is already gone is fine."""
        assert isinstance(leftover.handle, str)
        try:
            self.remove_temporary(leftover.handle)
        except NotFound:
            pass

    def close(self) -> None:
        """Stop the ssh master and remove the private spool directory."""
        self.conn.close()
        with self._lock:
            self._private_spool = None
            finalizer, self._spool_finalizer = self._spool_finalizer, None
        if finalizer is not None:
            finalizer()

    # -- put, step by step --------------------------------------------------------------------
    @contextmanager
    def _spooled(self, parts: Iterable[bytes], key: str) -> Iterator[tuple[str, int]]:
        """Write the parts to one local spool file; yield its path and size; always delete it."""
        directory = self._spool_dir()
        try:
            fd, path = tempfile.mkstemp(prefix="put-", dir=directory)
        except OSError as exc:
            raise TargetError(
                f"cannot create a spool file in {directory}: {exc.strerror}"
            ) from None
        try:
            try:
                size = _write_parts(fd, parts)
            except OSError as exc:
                raise TargetError(
                    f"cannot spool {key} in {directory}: {exc.strerror}; set spool_dir to a "
                    "directory with room for one object per concurrent upload"
                ) from None
            finally:
                os.close(fd)
            yield path, size
        finally:
            _unlink_quietly(path)

    def _spool_dir(self) -> str:
        if self._spool_setting:
            os.makedirs(self._spool_setting, mode=0o700, exist_ok=True)
            return self._spool_setting
        with self._lock:
            if self._private_spool is None:
                self._private_spool = tempfile.mkdtemp(
                    prefix="btrsync-spool-", dir=default_spool_parent()
                )
                self._spool_finalizer = weakref.finalize(
                    self, shutil.rmtree, self._private_spool, ignore_errors=True
                )
            return self._private_spool

    def _upload(self, spool: str, key: str, size: int) -> TransferStats:
        """rsync the spool file to ``<key>.tmp-upload`` (resuming a kept partial upload), then
        commit it on the remote in the same ssh session (see :meth:`RemoteScripts.rsync_path`).

        With a rate limit (:meth:`set_rate_limit`), rsync gets ``--bwlimit`` after the
        ``rsync_options``, so it wins over one given there."""
        with self._lock:
            self._transfers += 1
            transfers = self._transfers
        try:
            return self._rsync(spool, key, size, transfers)
        finally:
            with self._lock:
                self._transfers -= 1

    def rsync_argv(self, spool: str, key: str, size: int, transfers: int = 1) -> builtins.list[str]:
        """The rsync command line of one upload (ssh options, remote commit, rate limit)."""
        rsync_path = self.scripts.rsync_path(key, size, self.remote_rsync, PARTIAL_DIR)
        return [
            "rsync",
            "--protect-args",
            "--ignore-times",
            f"--partial-dir={PARTIAL_DIR}",
            "--stats",
            "--no-human-readable",
            f"--timeout={self.io_timeout}",
            f"--rsync-path={rsync_path}",
            *self.rsync_options,
            *self.bwlimit_options(transfers),
            "-e",
            self.conn.rsync_rsh(),
            "--",
            spool,
            f"{self.conn.rsync_host}:./{key}{UPLOAD_SUFFIX}",
        ]

    def _rsync(self, spool: str, key: str, size: int, transfers: int) -> TransferStats:
        argv = self.rsync_argv(spool, key, size, transfers)
        log.debug("rsync key=%s bwlimit=%s", key, [a for a in argv if a.startswith("--bwlimit")])
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        except FileNotFoundError:
            raise TargetError("rsync is not installed on this machine") from None
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            raise self._upload_error(proc.returncode, stderr, key)
        return parse_stats(key, size, proc.stdout.decode(errors="replace"))

    def _upload_error(self, returncode: int, stderr: str, key: str) -> BaseException:
        """Classify a failed upload: missing root, failed commit, or an rsync/ssh failure."""
        if SYMLINK_TEXT in stderr:
            return self._symlink_error(stderr)
        if ROOT_MISSING_TEXT in stderr:
            return TargetMissingError(
                f"target directory {self.root} does not exist on {self.conn.config.display}"
            )
        if returncode == SIZE_MISMATCH:
            return TargetError(f"upload of {self._where(key)} arrived with the wrong size")
        if returncode == COMMIT_FAILED:
            error = remote_error(stderr, self._where(key))
            if isinstance(error, NotFound):  # the upload vanished (a concurrent clean?)
                return TransientTargetError(f"upload of {self._where(key)} vanished before commit")
            return error
        return rsync_error(returncode, stderr, self._where(key), self.conn.config.display)

    # -- get, step by step --------------------------------------------------------------------
    def _stream(
        self, script: str, err: IO[bytes], key: str, offset: int, length: int | None
    ) -> Iterator[bytes]:
        proc = self.conn.popen(script, err)
        assert proc.stdout is not None
        try:
            size = self._read_size(proc, err, key)
            remaining = check_range(key, size, offset, length) - offset
            while remaining:
                block = proc.stdout.read(min(READ_BLOCK, remaining))
                if not block:
                    break
                remaining -= len(block)
                yield block
            if proc.wait() != 0 or remaining:
                raise self._stream_error(proc.returncode, err, key)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()

    def _read_size(self, proc: subprocess.Popen[bytes], err: IO[bytes], key: str) -> int:
        """The size line the remote snippet prints first; errors when there is none."""
        assert proc.stdout is not None
        header = proc.stdout.readline(64)
        if is_count(header.strip().decode(errors="replace")):
            return int(header)
        if header:  # something else talks on stdout, e.g. a login script
            raise TargetError(
                f"unexpected output from the remote shell reading {self._where(key)}: "
                f"{header[:40]!r}; make sure its startup files print nothing"
            )
        proc.wait()
        raise self._stream_error(proc.returncode, err, key)

    def _stream_error(self, returncode: int, err: IO[bytes], key: str) -> TargetError:
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        if returncode == MISSING:
            return NotFound(f"{self._where(key)} not found")
        if returncode == SYMLINK:
            return self._symlink_error(stderr)
        if returncode == 255:
            return ssh_error(stderr, self.conn.config.display)
        if returncode == 0:
            return TransientTargetError(f"read of {self._where(key)} ended early")
        return remote_error(stderr, self._where(key))



def default_spool_parent() -> str:
    """``$TMPDIR`` if set, else ``/var/tmp`` (disk-backed, unlike a tmpfs ``/tmp``)."""
    if os.environ.get("TMPDIR"):
        return os.environ["TMPDIR"]
    return "/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir()


def _write_parts(fd: int, parts: Iterable[bytes]) -> int:
    return sum(write_all(fd, part) for part in parts)



def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
