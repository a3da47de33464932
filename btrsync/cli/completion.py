"""Shell completion candidates from this host's configuration and state, never from a target.

click completes commands, options and paths itself (``_BTRSYNC_COMPLETE=bash_source btrsync``,
or ``btrsync completion bash``).  :func:`attach` gives the parameters that name btrsync's own
things a ``shell_complete`` callback, by parameter name, to every command as it is loaded (so a
new command's ``--from`` completes without anyone remembering to wire it):

- ``--from`` / ``--to`` (not a directory) and ``state`` subcommands' TARGET: the configured
  target names (``[targets.NAME]``), then the target URLs this host remembers;
- BACKUP / BACKUPS: the backup ids, snapshot names and ``SUBVOL@latest`` of the ``--from``
  target as ``state_dir/targets/*.json`` last recorded them (every target's when ``--from`` is
  not given yet or not known there), and ``latest``;
- JOBS: the configured job names (``[jobs.NAME]``).

The configuration is ``--config`` given before the command, ``$BTRSYNC_CONFIG`` or the default;
the state directory ``--state-dir``, ``$BTRSYNC_STATE_DIR``, the configuration's ``state_dir`` or
the default.  Everything is read, nothing is written (a damaged state file is skipped, not kept
aside), and any error means no candidates: completion never prints a traceback into a shell.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from btrsync.config.model import DEFAULT_CONFIG

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from btrsync.state import TargetState

Completer = Callable[[click.Context, click.Parameter, str], "list[CompletionItem]"]


def _root_param(ctx: click.Context, name: str) -> Any:
    root = ctx.find_root()
    return root.params.get(name)


def _config_doc(ctx: click.Context) -> dict[str, Any]:
    path = _root_param(ctx, "config_path") or os.environ.get("BTRSYNC_CONFIG") or DEFAULT_CONFIG
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


def _state_dir(ctx: click.Context, doc: dict[str, Any]) -> Path:
    from btrsync.state import DEFAULT_STATE_DIR

    given = _root_param(ctx, "state_dir") or os.environ.get("BTRSYNC_STATE_DIR") or doc.get("state_dir")
    return Path(given) if isinstance(given, str | Path) and str(given) else DEFAULT_STATE_DIR


def _known_targets(state_dir: Path) -> list[TargetState]:
    from btrsync.state import TargetState

    found = []
    try:
        paths = sorted((state_dir / "targets").glob("*.json"))
    except OSError:
        return []
    for path in paths:
        try:
            found.append(TargetState.from_doc(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


def _starting(items: Iterable[CompletionItem], incomplete: str) -> list[CompletionItem]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item.value.startswith(incomplete) and item.value not in seen:
            seen.add(item.value)
            out.append(item)
    return out


def complete_targets(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    try:
        doc = _config_doc(ctx)
        targets = _table(doc, "targets")
        items = [CompletionItem(name, help=str(t.get("url", "")) if isinstance(t, dict) else None)
                 for name, t in sorted(targets.items())]
        if "://" in incomplete or not [i for i in items if i.value.startswith(incomplete)]:
            items += [CompletionItem(t.url, help="remembered by this host") for t in _known_targets(_state_dir(ctx, doc))]
        return _starting(items, incomplete)
    except Exception:  # noqa: BLE001 - a completion never fails the shell
        return []


def complete_jobs(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    try:
        jobs = _table(_config_doc(ctx), "jobs")
        already = set(ctx.params.get(_param.name or "", ()) or ())
        return _starting((CompletionItem(n) for n in sorted(jobs) if n not in already), incomplete)
    except Exception:  # noqa: BLE001
        return []


def _source_url(ctx: click.Context, doc: dict[str, Any]) -> str | None:
    source = ctx.params.get("source")
    if not source:
        return None
    target = _table(doc, "targets").get(source)
    if isinstance(target, dict) and isinstance(target.get("url"), str):
        return str(target["url"])
    return str(source)


def complete_backups(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    try:
        doc = _config_doc(ctx)
        known = _known_targets(_state_dir(ctx, doc))
        url = _source_url(ctx, doc)
        if url is not None:
            norm = url.rstrip("/")
            matching = [t for t in known if t.url.rstrip("/") == norm]
            known = matching or known
        backups: dict[str, tuple[str, str]] = {}  # id -> (snapshot, subvolume)
        for t in known:
            for entry in t.held.values():
                if entry.get("id"):
                    backups[str(entry["id"])] = (str(entry.get("snapshot", "")), str(entry.get("subvolume", "")))
            for bid, entry in t.seen.items():
                backups.setdefault(str(bid), (str(entry.get("snapshot", "")), str(entry.get("subvolume", ""))))
        items = [CompletionItem("latest", help="the newest backup (of the only subvolume)")]
        subvolumes = sorted({sub for _snap, sub in backups.values() if sub})
        items += [CompletionItem(f"{sub}@latest", help=f"the newest backup of {sub}") for sub in subvolumes]
        for bid, (snapshot, _sub) in sorted(backups.items(), key=lambda kv: kv[1][0], reverse=True):
            items.append(CompletionItem(bid, help=snapshot or None))
            if snapshot:
                items.append(CompletionItem(snapshot, help=f"backup {bid}"))
        return _starting(items, incomplete)
    except Exception:  # noqa: BLE001
        return []


def _completer_for(param: click.Parameter) -> Completer | None:
    name = param.name or ""
    if name in ("backup", "backups"):
        return complete_backups
    if name == "jobs":
        return complete_jobs
    if name in ("source", "target", "dest", "destination"):
        return complete_targets
    if name == "to" and not isinstance(param.type, click.Path):  # restore --to DIR completes paths
        return complete_targets
    return None


def attach(command: click.Command) -> None:
    """Give ``command`` and its subcommands' parameters their completers (see the module docstring);
    a parameter that has its own ``shell_complete`` keeps it."""
    for param in command.params:
        completer = _completer_for(param)
        if completer is not None and getattr(param, "_custom_shell_complete", None) is None:
            param._custom_shell_complete = completer  # what click.Parameter(shell_complete=...) sets
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            attach(sub)
