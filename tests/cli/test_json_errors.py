"""``--json`` failures are JSON on stdout too, with the command's exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from btrsync.cli.main import main
from btrsync.crypto.keys import generate_key_file


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    generate_key_file(path)
    return path


def test_a_json_command_that_fails_prints_a_json_error_with_the_same_exit_code(key: Path, capsys) -> None:
    code = main(["list", "--from", "file:///nonexistent", "--json", "--key-file", str(key)])
    out, err = capsys.readouterr()
    assert code == 10
    doc = json.loads(out)
    assert doc["error"]["exit_code"] == 10 and doc["error"]["type"] == "TargetMissingError"
    assert "/nonexistent" in doc["error"]["message"]
    assert "btrsync: error:" in err  # the one-liner for people is still on stderr


def test_a_json_usage_error_is_json_too(capsys) -> None:
    code = main(["push", "--frobnicate", "--json"])
    out, _ = capsys.readouterr()
    assert code == 2
    assert json.loads(out)["error"]["exit_code"] == 2


def test_without_json_stdout_stays_empty_on_failure(key: Path, capsys) -> None:
    assert main(["list", "--from", "file:///nonexistent", "--key-file", str(key)]) == 10
    assert capsys.readouterr().out == ""


def test_a_failure_after_the_json_result_keeps_stdout_one_document(tmp_path: Path, key: Path, capsys) -> None:
    """list --check prints its listing, then exits 4: no second document is appended."""
    target = tmp_path / "t"
    target.mkdir()
    assert main(["init", "--to", f"file://{target}", "--key-file", str(key), "--state-dir", str(tmp_path / "s")]) == 0
    (target / "backups" / "x-00000000").mkdir(parents=True)
    (target / "backups" / "x-00000000" / "manifest").write_bytes(b"garbage")
    capsys.readouterr()
    code = main(["list", "--from", f"file://{target}", "--check", "--json", "--key-file", str(key),
                 "--state-dir", str(tmp_path / "s")])
    out, _ = capsys.readouterr()
    assert code == 4
    assert isinstance(json.loads(out), list)
