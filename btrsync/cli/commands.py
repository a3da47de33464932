"""Which ``btrsync/cli/cmd_*.py`` modules make each top-level command.

The command line imports only the modules of the command it runs (``--help`` imports them
all): pydantic, prometheus_client, boto3 and the demo cost a command that does not use them
nothing.  ``tests/cli/test_cli.py`` fails when this table and the modules' ``COMMANDS``
disagree, so a new ``cmd_*.py`` module cannot be forgotten here.
"""

from __future__ import annotations

COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "clean": ("cmd_maintenance",),
    "completion": ("cmd_completion",),
    "config": ("cmd_config",),
    "copy": ("cmd_copy",),
    "demo": ("cmd_demo",),
    "find": ("cmd_files",),
    "index": ("cmd_files",),
    "init": ("cmd_repo",),
    "key": ("cmd_key",),
    "list": ("cmd_list",),
    "ls": ("cmd_files",),
    "mount": ("cmd_mount",),
    "prune": ("cmd_prune",),
    "push": ("cmd_push",),
    "receive": ("cmd_receive",),
    "restore": ("cmd_restore",),
    "retention": ("cmd_prune",),
    "run": ("cmd_run",),
    # cmd_snapshot_files adds `snapshot restore` and `snapshot rollback` to cmd_snapshot's group,
    # cmd_prune `snapshot prune`
    "snapshot": ("cmd_snapshot", "cmd_snapshot_files", "cmd_prune"),
    "state": ("cmd_repo",),
    "status": ("cmd_status",),
    "systemd": ("cmd_systemd",),
    "usage": ("cmd_maintenance",),
    "verify": ("cmd_verify",),
}
