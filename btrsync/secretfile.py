"""Reading a small secret from a file (the key, S3/B2 credentials) without trusting the file.

One reader for every secret btrsync reads itself, so that all of them get the same checks:

- the path is opened once (``O_NOFOLLOW``: a symbolic link is refused; ``O_NONBLOCK``: a FIFO
  cannot make us wait) and everything else is checked on that descriptor, so nothing can be
  swapped in between a check and the read;
- it must be a regular file, owned by the user btrsync runs as (the effective uid) or by root;
- nobody else may have any access to it: no group or other permission bits (``chmod 600``).  The
  one exception is a POSIX ACL that shows up as group bits but grants access to no group and to
  no user other than the caller; that is how systemd's ``LoadCredential=`` hands a root-owned
  0400 file to a service running as another user;
- at most ``limit`` bytes are read; a larger file is refused without being read.

A string that looks like secret material rather than a path (key material pasted where the file
name belongs) is refused before anything is opened, and no message ever prints it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
import struct
from pathlib import Path

from btrsync.errors import BtrsyncError
from btrsync.fdio import write_all

_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
_ACL_ENTRY = struct.Struct("<HHI")

# Characters of base64 (both alphabets) and hex: what a pasted key or access key is made of.
_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]+")
_ASSIGNMENT = re.compile(r"(key|secret|token|password)\w*\s*[=:]", re.IGNORECASE)


def looks_like_secret(text: str) -> bool:
    """True if ``text`` looks like secret material rather than a file's path.

    Matches a 256-bit key as base64 or hex, pasted file contents (line breaks, control characters,
    ``application_key=…`` lines), and long mixed-case alphanumeric tokens (B2 and AWS access keys)
    unless they name an existing file or start like a path (``/`` followed by an existing
    top-level directory, ``./``, ``../`` or ``~``).
    """
    if not text:
        return False
    if not text.isprintable() or _ASSIGNMENT.search(text):
        return True
    stripped = text.strip()
    if len(stripped) == 64 and all(c in "0123456789abcdefABCDEF" for c in stripped):
        return True
    if len(stripped) == 44 and stripped.endswith("=") and _decodes_to_key(stripped):
        return True
    if text.startswith(("./", "../", "~")) or os.path.lexists(text):
        return False
    if text.startswith("/") and os.path.isdir("/" + text.split("/")[1]):
        return False  # a path under an existing top-level directory
    if len(stripped) == 43 and _decodes_to_key(stripped + "="):
        return True
    core = text.replace("/", "")
    if not _TOKEN.fullmatch(text) or len(core) < 16:
        return False  # a '.', a space or a ':' is unusual in a key and common in a path
    mixed = any(c.isupper() for c in core) and any(c.islower() for c in core) and any(c.isdigit() for c in core)
    long_hex = len(core) >= 32 and all(c in "0123456789abcdefABCDEF-" for c in core)
    return mixed or long_hex


def _decodes_to_key(text: str) -> bool:
    """Base64 (standard or URL-safe alphabet) of exactly 256 bits."""
    for altchars in (None, b"-_"):
        try:
            if len(base64.b64decode(text, altchars=altchars, validate=True)) == 32:
                return True
        except (binascii.Error, ValueError):
            pass
    return False


def read_secret_file(
    path: str | os.PathLike[str],
    *,
    what: str,
    limit: int,
    error: type[BtrsyncError],
    not_a_path: str,
    missing_hint: str = "",
) -> bytes:
    """The contents of the secret file at ``path``, after the checks in the module docstring.

    ``what`` names the file in messages ("key file"); ``limit`` is the largest size accepted;
    ``error`` is the exception raised for every refusal; ``not_a_path`` is the whole message used
    when ``path`` looks like secret material (it must not contain ``path``); ``missing_hint``
    follows the message for a missing file.
    """
    name = os.fspath(path)
    if looks_like_secret(name):
        raise error(not_a_path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise error(f"cannot read {what} {name}: it does not exist{missing_hint}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(
                f"{what} {name} is a symbolic link; btrsync reads secrets only from the real file: "
                f"give the path of the file itself ('readlink -f {name}' shows it)"
            ) from None
        if exc.errno == errno.ENXIO:  # a socket
            raise error(f"{what} {name} is not a regular file") from None
        raise error(f"cannot read {what} {name}: {exc.strerror}") from None
    try:
        _check(fd, name, what, limit, error)
        return _read_at_most(fd, name, what, limit, error)
    finally:
        os.close(fd)


def _check(fd: int, name: str, what: str, limit: int, error: type[BtrsyncError]) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {name} is not a regular file (it is {_kind(st.st_mode)})")
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        raise error(
            f"{what} {name} is owned by uid {st.st_uid}; btrsync (uid {euid}) reads secrets only from "
            f"its own or root's files: run 'chown {euid} {name}'"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007 or (mode & 0o070 and not _acl_allows_only(fd, euid)):
        raise error(
            f"{what} {name} is accessible to other users (mode {mode:04o}); run 'chmod 600 {name}'"
        )
    if st.st_size > limit:
        raise error(f"{what} {name} is too large: {st.st_size} bytes, where at most {limit} are accepted")


def _read_at_most(fd: int, name: str, what: str, limit: int, error: type[BtrsyncError]) -> bytes:
    """At most ``limit`` bytes; refuses a file that turns out longer (it grew, or lies in st_size)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror}") from None
    raise error(f"{what} {name} is too large: more than the {limit} bytes accepted")


def _acl_allows_only(fd: int, euid: int) -> bool:
    """True if the file's access ACL gives no group, and no user but ``euid``, any permission.

    With an ACL the group bits of the mode show the ACL mask, not the owning group's access:
    systemd gives a service user read access to a root-owned 0400 credential this way, which
    ``ls`` shows as ``-r--r-----+``.
    """
    try:
        raw = os.getxattr(fd, _ACL_XATTR)
    except OSError:
        return False  # no ACL (or none readable): the group bits mean what they say
    if len(raw) < 4 or (len(raw) - 4) % _ACL_ENTRY.size or int.from_bytes(raw[:4], "little") != _ACL_VERSION:
        return False
    for offset in range(4, len(raw), _ACL_ENTRY.size):
        tag, perm, ident = _ACL_ENTRY.unpack_from(raw, offset)
        if tag in (_ACL_USER_OBJ, _ACL_MASK):
            continue
        if tag == _ACL_USER and (perm == 0 or ident == euid):
            continue
        if tag in (_ACL_GROUP_OBJ, _ACL_GROUP, _ACL_OTHER) and perm == 0:
            continue
        return False
    return True


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def create_secret_file(path: Path, data: bytes, *, what: str, error: type[BtrsyncError]) -> None:
    """Write ``data`` to a new file at ``path`` with mode 0600, durably; never replaces anything.

    ``O_EXCL`` and ``O_NOFOLLOW``: an existing file or link (even a dangling one) is refused.  The
    file and its directory are fsynced, so a key reported as written survives a crash; a file that
    could not be written completely is removed again.
    """
    name = os.fspath(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(name, flags, 0o600)
    except FileExistsError:
        raise error(f"{name} already exists; btrsync never overwrites a {what}") from None
    except OSError as exc:
        raise error(f"cannot create {what} {name}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may have taken bits away; never add any
            write_all(fd, data)
            os.fsync(fd)
        finally:
            made = os.fstat(fd)
            os.close(fd)
        _fsync_directory(os.path.dirname(os.path.abspath(name)))
    except OSError as exc:
        _remove_if_same(name, made)
        raise error(f"cannot write {what} {name}: {exc.strerror}") from None


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_same(name: str, made: os.stat_result) -> None:
    """Remove the half-written file we created, and nothing that has replaced it since."""
    try:
        now = os.lstat(name)
        if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
            os.unlink(name)
    except OSError:
        pass
