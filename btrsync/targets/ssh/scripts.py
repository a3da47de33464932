"""The remote shell snippets the ssh target runs, and the exit statuses they answer with.

The remote side always gets a shell command string (that is how ssh works), so every remote path
goes through :func:`shlex.quote`; :class:`RemoteScripts` builds every snippet in one place.
"""

from __future__ import annotations

import posixpath
import secrets
import shlex

from btrsync.targets.base import TEMP_MARKER

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
UPLOAD_SUFFIX = f"{TEMP_MARKER}upload"  # rsync's destination name, renamed into place on commit
READ_BLOCK = 1 << 20
PARTIAL_DIR = f"{TEMP_MARKER}rsync-partial"  # rsync --partial-dir, relative to the key's directory


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
