"""The one exception tree of btrsync and the exit codes it maps to.

Every error a user can cause or meet is a ``BtrsyncError`` subclass whose ``exit_code`` is a class
attribute; only ``btrsync.cli.main`` turns exceptions into process exit codes.  Messages come from the
constructor and say what failed, where, and what to do next.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    PARTIAL = 3
    DAMAGE = 4
    TARGET_MISSING = 10
    LOCKED = 11
    WRONG_KEY = 12
    HANGUP = 129  # SIGHUP; 128 + signal number, as a shell reports a process the signal killed
    INTERRUPTED = 130  # SIGINT (Ctrl-C)
    TERMINATED = 143  # SIGTERM (systemctl stop, timeout, kill)


#: The exit status of each outcome of a job (``btrsync run``, the job's record, the metrics): the
#: one mapping of run statuses to codes.  A run recorded as terminated exits 143 in its record
#: whatever the signal was; the process itself exits 128 + its number (``cli/main.py``).
JOB_EXIT = {"ok": ExitCode.OK, "skipped": ExitCode.OK, "partial": ExitCode.PARTIAL, "failed": ExitCode.FAILURE,
            "locked": ExitCode.LOCKED, "terminated": ExitCode.TERMINATED}


def job_exit(status: str) -> ExitCode:
    """The exit status of one job's outcome (an unknown status is a failure)."""
    return JOB_EXIT.get(status, ExitCode.FAILURE)


def run_exit(statuses: list[str]) -> ExitCode:
    """The exit status of a run of jobs: 0 all that ran succeeded, 11 all found their lock held,
    1 all failed, 3 a mixture."""
    ran = [s for s in statuses if s != "skipped"]
    if not ran or all(s == "ok" for s in ran):
        return ExitCode.OK
    if all(s == "locked" for s in ran):
        return ExitCode.LOCKED
    if all(s in ("failed", "locked") for s in ran):
        return ExitCode.FAILURE
    return ExitCode.PARTIAL


EXIT_STATUS_HELP = """\b
EXIT STATUS
  0 success; 1 failure; 2 usage or configuration error; 3 partial (some
  jobs or targets failed); 4 verification found damage; 10 target missing or
  not initialised; 11 another run holds the lock; 12 wrong key; 129 hung up
  (SIGHUP), 130 interrupted (SIGINT), 143 terminated (SIGTERM), each after
  cleaning up: run the command again to resume.
"""


class BtrsyncError(Exception):
    """Base of every error btrsync reports to users without a traceback."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(BtrsyncError):
    """The command line or its arguments are wrong."""

    exit_code = ExitCode.USAGE


class ConfigError(BtrsyncError):
    """The configuration file is missing, malformed or inconsistent."""

    exit_code = ExitCode.USAGE


class KeyFileError(BtrsyncError):
    """The key file is missing, unreadable, has the wrong size or unsafe permissions."""

    exit_code = ExitCode.USAGE


class WrongKeyError(BtrsyncError):
    """The key given is not the key this target was written with."""

    exit_code = ExitCode.WRONG_KEY


class TargetMissingError(BtrsyncError):
    """The target location does not exist or holds no btrsync repository."""

    exit_code = ExitCode.TARGET_MISSING


class LockedError(BtrsyncError):
    """Another btrsync process holds the lock."""

    exit_code = ExitCode.LOCKED


class BtrfsError(BtrsyncError):
    """A btrfs command failed; the message names the subvolume and the next step."""


class SendFailedError(BtrfsError):
    """``btrfs send`` exited non-zero, wrote an error, or its stream ended early."""


class ReceiveFailedError(BtrfsError):
    """``btrfs receive`` failed; the partially received subvolume has been removed."""


class ReceiveNotDurableError(ReceiveFailedError):
    """``btrfs receive`` finished, but the filesystem could not write what it received to disk
    (a writeback I/O error; the disk, or the filesystem holding a loop image, full): btrfs receive
    exits 0 all the same, and the subvolume looks complete until it is read from disk."""


class SnapshotError(BtrsyncError):
    """A snapshot could not be created, found or deleted."""


class PlanError(BtrsyncError):
    """No valid plan exists (for example, a parent needed for a restore is gone)."""


class BackupNotFoundError(BtrsyncError):
    """The backup named on the command line does not exist on the target."""

    exit_code = ExitCode.USAGE


class DamageError(BtrsyncError):
    """Stored data failed a hash, authentication or format check."""

    exit_code = ExitCode.DAMAGE


class ChunkDamageError(DamageError):
    """A stored chunk did not check out.  ``kind`` says which check: ``missing`` (its segment is
    absent or shorter than recorded), ``hash`` (the stored frame, or the bytes it opens to, differ
    from the recorded size and xxh3-128), ``tag`` (GCM authentication: damaged, moved to another
    backup or chunk number, or another key), ``data`` (not a chunk frame, or it does not
    decompress)."""

    KINDS = ("missing", "hash", "tag", "data")

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind if kind in self.KINDS else "data"


class PushError(BtrsyncError):
    """A push failed; nothing was committed for the backup that failed."""


class PartialError(BtrsyncError):
    """Some of the work succeeded and some failed."""

    exit_code = ExitCode.PARTIAL


def all_error_classes() -> list[type[BtrsyncError]]:
    """Every BtrsyncError subclass, depth first (used by the docs and a test)."""
    found: list[type[BtrsyncError]] = []
    stack: list[type[BtrsyncError]] = [BtrsyncError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(reversed(cls.__subclasses__()))
    return found
