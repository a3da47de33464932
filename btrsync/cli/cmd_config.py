"""btrsync config check | schema"""

from __future__ import annotations

import json

import click

from btrsync.cli.app import App, pass_app
from btrsync.cli.options import global_options
from btrsync.cli.output import emit_json
from btrsync.config.effective import effective
from btrsync.config.schema import json_schema
from btrsync.errors import EXIT_STATUS_HELP
from btrsync.jobs.systemd import check_calendars


@click.group("config", epilog=EXIT_STATUS_HELP)
def config_group() -> None:
    """Validate the configuration; its schema."""


@config_group.command("check", epilog=EXIT_STATUS_HELP)
@global_options
@click.option("--json", "as_json", is_flag=True, help="print the effective configuration as JSON")
@pass_app
def check_cmd(app: App, as_json: bool) -> None:
    """Validate the configuration without touching anything (no target, no state, no btrfs) and
    print the effective configuration: defaults filled in, profiles resolved, secrets shown only
    as the paths of their files.  Exit 2 naming the file, the table and the key of every problem.
    Each job's schedule is checked with 'systemd-analyze calendar' when it is installed (a note
    says when it is not).

    \b
    Examples:
      btrsync config check
      btrsync --config ./new.toml config check --json
    """
    config = app.config
    # the schedules as systemd reads them (the one check 'systemd generate' makes too)
    unchecked = check_calendars(list(config.jobs.jobs.values()), str(config.path or "configuration"))
    doc = effective(config)
    if unchecked:
        click.echo(unchecked, err=True)
    if as_json:
        emit_json(doc)
        return
    click.echo(_toml_like(doc))
    jobs = doc["jobs"]
    click.echo(f"configuration {doc['file'] or '(defaults: no file)'} is valid: {len(jobs)} job(s), "
               f"{len(doc['targets'])} target(s)", err=True)


@config_group.command("schema", epilog=EXIT_STATUS_HELP)
@global_options
def schema_cmd() -> None:
    """Print the JSON schema of [jobs.NAME] and the run settings (for editors and the NixOS module).

    \b
    Examples:
      btrsync config schema > btrsync-jobs.schema.json
      btrsync config schema | jq '."$defs".JobModel.properties | keys'
    """
    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


def _toml_like(doc: dict, prefix: str = "") -> str:  # type: ignore[type-arg]
    """Tables as [a.b] sections, other values as key = JSON lines (readable, close to TOML)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in doc.items() if not (isinstance(v, dict) and v)]
    out = ([f"[{prefix}]"] if prefix and lines else []) + lines
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            out += ["", _toml_like(value, f"{prefix}.{key}" if prefix else key)]
    return "\n".join(out).strip("\n")


COMMANDS = [config_group]
