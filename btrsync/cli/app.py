"""What the commands share: the ``App`` (configuration, key, state, repositories), ``pass_app``,
the ``snapshot`` group that several command modules add subcommands to, the run environment of
jobs, and the renderers more than one command prints with.

No ``cmd_*`` module imports another: what two of them need lives here.  This module imports
nothing of ``btrsync.cli`` but ``output`` and ``problems``, and nothing heavy at import time
(``btrsync.cli.commands``: a command loads only its own modules).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from btrsync.catalog.cache import CatalogCache
from btrsync.catalog.repository import Repository
from btrsync.cli.output import emit_json, emit_table
from btrsync.cli.problems import report_catalog_problems
from btrsync.config.credentials import apply_credentials
from btrsync.config.model import Config, load_config
from btrsync.crypto.keys import MasterKey, load_key_file
from btrsync.errors import EXIT_STATUS_HELP, KeyFileError, UsageError
from btrsync.jobs.clock import Clock, ShiftedClock, SystemClock
from btrsync.locking import target_lock
from btrsync.snapshots.naming import parse_timestamp
from btrsync.state import State
from btrsync.targets.base import Target
from btrsync.targets.registry import open_target
from btrsync.units import format_bytes

if TYPE_CHECKING:
    from btrsync.jobs.runner import RunEnv
    from btrsync.ops.verify import VerifyReport


@dataclass
class App:
    """Lazily loaded configuration, key and state shared by every command."""

    config_path: Path | None
    config_explicit: bool
    key_file: Path | None
    state_dir: Path | None
    debug: bool
    verbose: int = 0
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            # under systemd, the unit's credentials (LoadCredential=) replace the targets' secret
            # files for every command: run, verify, list, receive ...
            self._config = apply_credentials(load_config(self.config_path, explicit=self.config_explicit),
                                             os.environ.get("CREDENTIALS_DIRECTORY"))
        return self._config

    def key(self) -> MasterKey:
        path = self.key_file or self.config.key_file
        if path is None:
            raise KeyFileError("no key: pass --key-file FILE, set BTRSYNC_KEY_FILE, or set key_file in "
                               "the configuration (create a key with 'btrsync key generate FILE')")
        return load_key_file(path)

    def state(self) -> State:
        return State(self.state_dir or self.config.state_dir)

    def lock(self, name: str) -> AbstractContextManager[None]:
        """A local lock (exit 11 when another process holds it): per repository, per job."""
        return target_lock(self.state().root, name)

    def target(self, url_or_name: str) -> Target:
        url, settings = self.config.target(url_or_name)
        return open_target(url, settings)

    @contextmanager
    def repository(self, url_or_name: str, *, write: bool = False, lock: bool = False,
                   key: MasterKey | None = None, listing: bool = False) -> Iterator[Repository]:
        """Open the repository at a target, checked against what this host knows of it.

        Exit 10 when there is none (``btrsync init`` creates one) or when the URL now holds a
        different repository than this host saw there; 12 for a wrong key.  ``write`` refuses
        read-only (format 1) repositories; ``lock`` takes the local lock of the repository (by
        its id, however the URL is spelled), exit 11 when another process holds it.  ``key``:
        another key than the command's (``copy --from-key-file``); ``listing``: see ``Repository.open``.
        """
        with self.target(url_or_name) as target:
            repo = Repository.open(target, key or self.key(), listing=listing)
            self.state().bind(target.display_url, repo.repo_id, repo.info.format)
            repo.cache = CatalogCache.for_repository(self.state().root, repo.repo_id)
            if write:
                repo.require_writable()
            with self.lock(f"repository {repo.repo_id}") if lock else nullcontext():
                yield repo


pass_app = click.make_pass_decorator(App)


#: ``btrsync snapshot``: cmd_snapshot adds create, list and delete, cmd_snapshot_files restore and
#: rollback, cmd_prune prune (``btrsync.cli.commands`` loads the three for it)
snapshot = click.Group("snapshot", help="Create, list and delete read-only snapshots.", epilog=EXIT_STATUS_HELP)


def clock_for(now_text: str | None) -> Clock:
    """The clock of ``run`` and ``status``: the system's, or ``--now TIME`` (tests)."""
    if not now_text:
        return SystemClock()
    try:
        return ShiftedClock(parse_timestamp(now_text))
    except ValueError as exc:
        raise UsageError(f"--now {now_text!r}: {exc}") from None


def run_env(app: App, *, dry_run: bool = False, wait: float | None = None, now: str | None = None) -> RunEnv:
    """The run's surroundings (the credentials systemd passed in are applied by ``App.config``)."""
    from btrsync.jobs.runner import RunEnv  # prometheus_client: only for the commands that run jobs

    return RunEnv(app.config, app.state().root,
                  open_repository=lambda name, write: app.repository(name, write=write, listing=True),
                  clock=clock_for(now), dry_run=dry_run, wait=wait)


def render_verify(report: VerifyReport, as_json: bool) -> None:
    """A verify report (``verify``, and ``push --verify``)."""
    if as_json:
        emit_json({"backups": [b.as_dict() for b in report.backups], "summary": report.summary()})
        return
    report_catalog_problems(None, report.target)
    emit_table([(b.backup_id, b.level, b.result.upper() if b.result != "ok" else "ok", f"{b.seconds:.1f}s",
                 format_bytes(b.bytes_read), (b.problems[0].message if b.problems else b.note))
                for b in report.backups], ["BACKUP", "LEVEL", "RESULT", "TIME", "READ", "NOTE"])
    extra = []
    if report.orphaned:
        extra.append(f"{len(report.orphaned)} orphaned object(s) ('btrsync clean' removes them)")
    if report.stale_leases:
        extra.append(f"{len(report.stale_leases)} stale lease(s)")
    if report.incomplete:
        extra.append("stopped at --max-duration: run again to continue")
    if report.drill:
        extra.append(f"restore drill {'passed' if report.drill['ok'] else 'FAILED'} "
                     f"in {report.drill['seconds']:.1f}s")
    click.echo(f"verified {len(report.backups)} backup(s) at level {report.level}: " + _verdict(report)
               + f", read {format_bytes(report.bytes_read)} in {report.seconds:.1f}s"
               + ("; " + "; ".join(extra) if extra else ""), err=True)


def _verdict(report: VerifyReport) -> str:
    if report.damaged:
        return f"{len(report.damaged)} damaged or affected"
    if report.incomplete:  # "all intact" would claim what was never read
        done = sum(1 for b in report.backups if b.result == "ok")
        return f"nothing damaged in what was read; {done} of {len(report.backups)} checked whole, the rest not reached"
    return "all intact" if report.ok else "nothing damaged, but a restore drill could not run"
