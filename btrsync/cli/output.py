"""Rendering: aligned text tables for people, JSON for machines (stdout carries results only)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

import click

_json_emitted = False  # whether the running command has printed its JSON document


def emit_json(data: Any) -> None:
    global _json_emitted
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    _json_emitted = True


def begin_command() -> None:
    """A new command runs (main() may run several in one process, as the tests do)."""
    global _json_emitted
    _json_emitted = False


def emit_json_error(message: str, exit_code: int, kind: str) -> None:
    """A failed ``--json`` command: ``{"error": {"message", "exit_code", "type"}}`` on stdout, so a
    script reads the failure from the same place as a result.  Not when the command already
    printed its JSON document (``list --check``, ``prune`` exiting 4 after their result): stdout
    stays one document, and the exit status says it failed."""
    if _json_emitted:
        return
    with contextlib.suppress(OSError):  # stdout closed (a pipe's reader gone): the exit status remains
        click.echo(json.dumps({"error": {"message": message, "exit_code": exit_code, "type": kind}}))


def emit_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
