"""ssh, rsync and remote-shell failures to target errors, each with a hint of what to do."""

from __future__ import annotations

from btrsync.targets.errors import (
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    TargetError,
    TransientTargetError,
)

_TRANSIENT_RSYNC_CODES = {5, 10, 12, 20, 30, 35, 255}  # start-up, socket, stream, signal, timeouts


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
