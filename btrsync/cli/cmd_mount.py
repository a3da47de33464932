"""btrsync mount --from URL MOUNTPOINT: every backup as a read-only FUSE filesystem."""

from __future__ import annotations

from pathlib import Path

import click

from btrsync.catalog.manifest import Manifest
from btrsync.catalog.repository import Repository
from btrsync.cli.app import App, pass_app
from btrsync.cli.options import global_options
from btrsync.errors import EXIT_STATUS_HELP, UsageError
from btrsync.fileindex.tree import FileTree
from btrsync.mount.session import Mounted, MountOptions, serve
from btrsync.ops.files import tree_of
from btrsync.signals import Terminated
from btrsync.units import format_bytes, parse_size


def _load_tree(repo: Repository, chain: list[Manifest]) -> tuple[FileTree, int]:
    return tree_of(repo, chain, with_ops=True)


@click.command("mount", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--from", "source", required=True, help="target URL or configured name")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="where file contents are cached while mounted [default: STATE_DIR/mount-cache]")
@click.option("--cache-size", default="1G", show_default=True,
              help="bytes of file contents kept cached (files open beyond it stay until closed)")
@click.option("--read-window", default="16M", show_default=True,
              help="a larger file is rebuilt this many bytes at a time, as they are read (files with clones whole)")
@click.option("--allow-non-empty", is_flag=True, help="mount over a directory that holds entries (hiding them)")
@click.option("--allow-other", is_flag=True,
              help="let other users in (modes and owners of the backup apply; non-root needs user_allow_other "
                   "in /etc/fuse.conf)")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True,
              help="threads fetching and opening chunks for each file read")
@pass_app
def mount_cmd(app: App, mountpoint: Path, source: str, cache_dir: Path | None, cache_size: str, read_window: str,
              allow_non_empty: bool, allow_other: bool, workers: int) -> None:
    """Mount every backup of a repository, read-only, at MOUNTPOINT: MOUNTPOINT/<subvolume>/<snapshot>/...

    Names, modes, owners, times, symlinks, hard links (one inode number), xattrs and sparse
    files are as in the snapshot, from the file indexes; a file's contents are fetched when it
    is first read, only the chunks that hold it (of a file larger than --read-window, those of
    the windows read), each authenticated, and kept in a bounded
    cache (plaintext, in a 0700 directory removed at unmount). A damaged chunk makes reads of
    the files it holds fail with EIO; everything else reads on. ls, cp, diff -r, rsync and file
    managers work.

    Runs in the foreground until Ctrl-C (SIGINT) or SIGTERM, which unmount and exit 130/143, or
    until 'fusermount3 -u MOUNTPOINT' from another shell (exit 0). A server that was killed
    leaves a mount point that answers "Transport endpoint is not connected": 'fusermount3 -u
    MOUNTPOINT' removes it. MOUNTPOINT must be an empty directory (--allow-non-empty to hide
    what it holds). No --json: a foreground mount prints nothing for scripts; its messages go
    to stderr.

    \b
    Examples:
      btrsync mount --from file:///mnt/usb/backups /mnt/backups
      btrsync mount --from b2 /mnt/backups --cache-size 4G &
      diff -r /mnt/backups/data/data.20261120T030000Z/etc /etc
      rsync -aHAXS /mnt/backups/data/data.20261127T030000Z/home/me/ /home/me/restored/
      fusermount3 -u /mnt/backups
    """
    try:
        limit = parse_size(cache_size)
    except ValueError as exc:
        raise UsageError(f"--cache-size: {exc}") from None
    try:
        window = parse_size(read_window)
    except ValueError as exc:
        raise UsageError(f"--read-window: {exc}") from None
    if window < 4096:
        raise UsageError("--read-window: at least 4k")
    root = cache_dir if cache_dir is not None else app.state().root / "mount-cache"
    options = MountOptions(root, limit, allow_non_empty=allow_non_empty, allow_other=allow_other, workers=workers,
                           window=window)

    def ready(m: Mounted) -> None:
        click.echo(f"btrsync: mounted {m.backups} backup(s) of {repo.target.display_url} at {m.mountpoint} "
                   f"(read-only); Ctrl-C here, or 'fusermount3 -u {m.mountpoint}', unmounts", err=True)

    with app.repository(source, listing=True) as repo:  # it reads the catalog first
        try:
            done = serve(repo, mountpoint, _load_tree, options, on_ready=ready)
        except Terminated as exc:  # serve unmounted it: say so, not the "resume" of a transfer
            exc.add_note(f"unmounted {mountpoint}")
            raise
    click.echo(f"btrsync: unmounted {done.mountpoint}; read {format_bytes(done.fetched.stored_bytes)} of chunks "
               f"for {done.fetched.files} file(s) and {format_bytes(done.index_bytes)} of file indexes", err=True)


COMMANDS = [mount_cmd]
