"""Safety rules shared by the directory and ssh targets: no system directory as a root, and no
symlink followed inside one.

**System directories.** ``--to file:///`` once walked the whole root filesystem (``/proc`` included) and ended in a
traceback; a ``clean`` there would have treated every file of the system as a leftover candidate.
A target must be a directory of its own, so the directory itself of each entry below is refused
(``/``, ``/etc``, ``/var/lib``, ...), while anything *under* one is fine (``/var/backups/btrsync``,
``/tmp/x``, ``/home/alice/backups``).  The same list applies to the path of an ``ssh://`` target
on the remote host.

**Symlinks.** A link planted inside a target (``data/x -> /etc/passwd``, ``data/<id> -> /home``)
must never lead a ``clean`` or ``prune`` outside it: the targets refuse to read, write or delete
through one, raising :class:`SymlinkInTarget`, and their listings skip links with a warning.
"""

from __future__ import annotations

import os
import posixpath

from btrsync.errors import UsageError
from btrsync.targets.errors import PermissionDenied

SYSTEM_DIRS = frozenset(
    {
        "/", "/bin", "/boot", "/boot/efi", "/dev", "/efi", "/etc", "/home", "/lib", "/lib32",
        "/lib64", "/libx32", "/lost+found", "/nix", "/opt", "/proc", "/root", "/run", "/sbin",
        "/snap", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib32",
        "/usr/lib64", "/usr/libexec", "/usr/libx32", "/usr/local", "/usr/sbin", "/usr/share",
        "/usr/src", "/var", "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/lock",
        "/var/log", "/var/mail", "/var/opt", "/var/run", "/var/spool", "/var/tmp",
    }
)


def system_dir(path: str) -> str | None:
    """The system directory ``path`` names (lexically, or after resolving symlinks when it exists
    on this machine), or ``None`` for a path that is not one."""
    normal = posixpath.normpath(path)
    if normal.startswith("/"):  # POSIX keeps a leading '//': the kernel does not care
        normal = "/" + normal.lstrip("/")
    if normal in SYSTEM_DIRS:
        return normal
    return None


def refuse_system_dir(path: str, what: str, *, resolve: bool = True) -> None:
    """Raise ``UsageError`` (exit 2) when ``path`` is a system directory itself.

    ``resolve`` also checks where symlinks lead on this machine (``/lib`` is ``/usr/lib``); it is
    off for remote paths, which this machine cannot resolve.
    """
    found = system_dir(path)
    if found is None and resolve and os.path.isabs(path):
        found = system_dir(os.path.realpath(path))
    if found is not None:
        shown = path if posixpath.normpath(path) == found else f"{path} (that is {found})"
        raise UsageError(
            f"refusing {what} {shown}: it is a system directory, and a target's directory holds "
            "nothing but btrsync's files; use a dedicated directory, e.g. /srv/backups/btrsync "
            "or a directory on the backup disk"
        )


class SymlinkInTarget(PermissionDenied):
    """A key's path inside a target goes through a symbolic link, which is never followed."""

    def __init__(self, where: str, path: str) -> None:
        self.path = path
        super().__init__(
            f"symlink in target {where} not followed: {path} is a symbolic link; btrsync never "
            "follows links inside a target: replace it with the real directory or file, or remove it"
        )
