"""btrsync init --to URL; btrsync state show | forget | acknowledge"""

from __future__ import annotations

import click

from btrsync.catalog.repository import Repository, check_marker, read_marker
from btrsync.cli.app import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json, emit_table
from btrsync.errors import EXIT_STATUS_HELP, BtrsyncError, TargetMissingError, UsageError
from btrsync.targets.mounts import refuse_unmounted


@click.command("init", epilog=EXIT_STATUS_HELP)
@global_options
@click.option("--to", "to", required=True, help="target URL (file://, s3://, ssh://) or configured name")
@click.option("--if-empty", "if_empty", is_flag=True,
              help="exit 0 when a repository of this key is already there (for a unit run before each backup)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def init_cmd(app: App, to: str, if_empty: bool, as_json: bool) -> None:
    """Create a repository at an empty location: the only command that creates one.

    Every other command fails with exit 10 where there is no repository, so an unmounted disk or
    a mistyped URL never receives a fresh repository by accident. Prints the repository id and
    the key id; this host remembers the repository id of the URL and refuses another repository
    there later.

    With --if-empty a repository already there is no error when it is this key's (and the one
    this host knows at the URL): exit 0, nothing written.  Anything else is refused as without
    it: a location that is not empty, another key's repository (exit 12), a repository this host
    knew there and no longer finds (exit 10: is the disk mounted?).  A directory target on a
    mount point of /etc/fstab that is not mounted is refused either way.

    An S3 target with object_lock = "governance" or "compliance" (and object_lock_margin, default
    "7d") writes every object of a backup locked until the retention policy's date plus the
    margin; init (and every command) refuses a bucket without Object Lock (exit 2).  See
    docs/immutable.md.

    \b
    Examples:
      btrsync init --to file:///mnt/usb/backups --key-file /root/backup.key
      btrsync init --to b2          # a target configured as [targets.b2]
      btrsync init --to b2 --if-empty
    """
    key = app.key()
    with app.target(to) as target:
        refuse_unmounted(target.display_url)
        known = app.state().target(target.display_url)
        if if_empty:
            info = read_marker(target)
            if info is not None:
                check_marker(info, key, target)  # another key's: exit 12
                if known is not None and known.repo_id and known.repo_id != info.repo_id:
                    raise TargetMissingError(
                        f"{target.display_url} holds btrsync repository {info.repo_id}, but this host knows "
                        f"{known.repo_id} there: see 'btrsync state show'")
                app.state().bind(target.display_url, info.repo_id, info.format)
                if as_json:
                    emit_json({"target": target.display_url, "repo_id": info.repo_id, "key_id": key.key_id,
                               "format": info.format, "created": False})
                else:
                    click.echo(f"btrsync repository {info.repo_id} is already at {target.display_url} "
                               f"(key id {key.key_id}): nothing to do", err=True)
                return
        if known is not None and known.repo_id:
            raise TargetMissingError(
                f"this host knows btrsync repository {known.repo_id} at {target.display_url}: if it is "
                "missing now, is the disk mounted? If that repository is gone for good, run "
                f"'btrsync state forget {target.display_url}' first, then init again")
        repo = Repository.init(target, key)
        app.state().bind(target.display_url, repo.repo_id, repo.info.format)
    if as_json:
        emit_json({"target": target.display_url, "repo_id": repo.repo_id, "key_id": key.key_id,
                   "format": repo.info.format, "created": True})
        return
    click.echo(f"initialised btrsync repository {repo.repo_id} at {target.display_url} "
               f"(format {repo.info.format}, key id {key.key_id})")


@click.group("state", epilog=EXIT_STATUS_HELP)
def state_group() -> None:
    """What this host remembers of its targets (state_dir)."""


@state_group.command("show", epilog=EXIT_STATUS_HELP)
@global_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@pass_app
def state_show(app: App, as_json: bool) -> None:
    """Known targets: repository id, backups held, vanished backups.

    \b
    Examples:
      btrsync state show
      btrsync state show --json --state-dir /var/lib/btrsync
    """
    targets = app.state().all_targets()
    if as_json:
        emit_json([t.as_doc() for t in targets])
        return
    emit_table([(t.url, t.repo_id, len(t.held), ", ".join(sorted(t.subvolumes)) or None,
                 len(t.vanished) or None, t.updated) for t in targets],
               ["TARGET", "REPOSITORY", "BACKUPS", "SUBVOLUMES", "VANISHED", "UPDATED"])


def _urls(app: App, target: str) -> list[str]:
    """A target as the state knows it: a configured name, a URL, or a repository id."""
    known = app.state().all_targets()
    if target in app.config.targets:
        target = str(app.config.targets[target]["url"])
    urls = [t.url for t in known if target in (t.url, t.repo_id)]
    if not urls and app.state().damaged(target):  # a damaged entry: only its URL can name it
        urls = [target]
    if not urls:
        # the state keys targets by the URL as the target displays it (e.g. file:///path)
        try:
            with app.target(target) as opened:
                urls = [t.url for t in known if t.url == opened.display_url]
                if not urls and app.state().damaged(opened.display_url):
                    urls = [opened.display_url]
        except BtrsyncError:  # not a URL either: matches nothing
            urls = []
    if not urls:
        raise UsageError(f"this host knows no target {target!r} (see 'btrsync state show')")
    return urls


@state_group.command("forget", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("target")
@pass_app
def state_forget(app: App, target: str) -> None:
    """Forget TARGET (URL, configured name or repository id): its repository id, what it held.

    Local snapshots are then no longer protected for it by 'snapshot prune' and 'snapshot
    delete', and another repository may be used at its URL.

    \b
    Examples:
      btrsync state forget file:///mnt/old-usb/backups
      btrsync state forget b2          # a target configured as [targets.b2]
    """
    for url in app.state().forget(_urls(app, target)):
        click.echo(f"forgot {url}", err=True)


@state_group.command("acknowledge", epilog=EXIT_STATUS_HELP)
@global_options
@click.argument("target")
@pass_app
def state_acknowledge(app: App, target: str) -> None:
    """Stop warning about backups of TARGET that vanished (after checking why).

    \b
    Examples:
      btrsync list --from b2            # which backups vanished, and is the rest intact?
      btrsync state acknowledge b2
    """
    for url in _urls(app, target):
        ids = app.state().acknowledge(url)
        click.echo(f"{url}: acknowledged {len(ids)} vanished backup(s)", err=True)


COMMANDS = [init_cmd, state_group]
