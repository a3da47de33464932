"""Every command's --help shows two or three real examples."""

from __future__ import annotations

import pytest

from btrsync.cli.main import main
from tests.cli.test_cli import _leaf_commands


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_every_command_shows_examples(command: list[str], capsys) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and "EXIT STATUS" in out
    examples = out.split("Examples:")[1].split("Options:")[0]
    lines = [ln.strip() for ln in examples.splitlines() if ln.strip().startswith(("btrsync ", "BTRSYNC_"))]
    assert len(lines) >= 2, examples
    assert f"btrsync {' '.join(command)}" in examples
