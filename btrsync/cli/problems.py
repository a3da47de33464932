"""Warnings about a target's catalog that every command reading it prints the same way:
damaged manifests, broken chains, and backups of this host that vanished (a rollback)."""

from __future__ import annotations

from collections.abc import Sequence

import click

from btrsync.catalog.repository import Catalog


def catalog_problems(catalog: Catalog | None, url: str, vanished: Sequence[str] = ()) -> list[str]:
    """One line per problem, each saying what is wrong and what to do."""
    lines: list[str] = []
    if catalog is not None:
        lines += [d.advice(url) for d in catalog.damaged]
        lines += [f"backup {b.backup_id} cannot be restored: {b.reason}" for b in catalog.broken.values()]
    if vanished:
        lines.append(f"{len(vanished)} backup(s) this host saw on {url} are gone without a prune by this "
                     f"host (rolled back or deleted?): {', '.join(vanished[:5])}"
                     + (" …" if len(vanished) > 5 else "")
                     + f"; check the target, then 'btrsync state acknowledge {url}'")
    return lines


def report_catalog_problems(catalog: Catalog | None, url: str, vanished: Sequence[str] = ()) -> list[str]:
    """Print the problems as warnings on stderr; returns them."""
    lines = catalog_problems(catalog, url, vanished)
    for line in lines:
        click.echo(f"btrsync: warning: {line}", err=True)
    return lines
