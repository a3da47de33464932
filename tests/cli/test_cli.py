"""The command-line contract without btrfs: help texts, exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from btrsync.cli.main import _register, cli, main
from btrsync.errors import BtrsyncError, ExitCode, all_error_classes


def _leaf_commands() -> list[list[str]]:
    _register()
    found = []

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                walk(cmd, [*prefix, name])
            else:
                found.append([*prefix, name])

    walk(cli, [])
    return found


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_every_command_documents_its_exit_status(command: list[str], capsys) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "EXIT STATUS" in out and "12 wrong key" in out and "--key-file" in out


def test_contract_commands_exist() -> None:
    names = {" ".join(c) for c in _leaf_commands()}
    assert {"key generate", "snapshot create", "snapshot list", "snapshot delete", "push", "list",
            "receive", "demo"} <= names


def test_unknown_option_is_a_usage_error(capsys) -> None:
    assert main(["push", "--frobnicate"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_key_is_never_accepted_on_the_command_line(capsys) -> None:
    assert main(["list", "--from", "file:///x", "--key", "0123"]) == 2


def test_missing_key_is_a_clear_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "t").mkdir()
    code = main(["list", "--from", f"file://{tmp_path}/t"])
    assert code == 2 and "no key: pass --key-file FILE" in capsys.readouterr().err


def test_an_explicit_config_file_must_exist(tmp_path: Path, capsys) -> None:
    assert main(["--config", str(tmp_path / "none.toml"), "list", "--from", "file:///x"]) == 2
    assert "none.toml does not exist" in capsys.readouterr().err


def test_malformed_config_is_exit_2_with_the_reason(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[push]\nchunk_size = \n")
    assert main(["--config", str(cfg), "list", "--from", "file:///x"]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    cfg.write_text("[push]\nchunck_size = '4M'\n")
    assert main(["--config", str(cfg), "list", "--from", "file:///x"]) == 2
    assert "unknown setting(s) chunck_size" in capsys.readouterr().err
    cfg.write_text("[push]\nzstd_level = 99\n")
    assert main(["--config", str(cfg), "list", "--from", "file:///x"]) == 2
    assert "zstd_level" in capsys.readouterr().err


def test_bad_target_url_is_a_usage_error(tmp_path: Path, capsys) -> None:
    key = tmp_path / "k"
    assert main(["key", "generate", str(key)]) == 0
    assert main(["list", "--from", "ftp://x/y", "--key-file", str(key)]) == 2
    assert "unsupported target URL" in capsys.readouterr().err


def test_missing_target_directory_exits_10(tmp_path: Path, capsys) -> None:
    key = tmp_path / "k"
    main(["key", "generate", str(key)])
    assert main(["list", "--from", f"file://{tmp_path}/absent", "--key-file", str(key)]) == 10
    assert "is the disk mounted?" in capsys.readouterr().err


def test_empty_target_directory_is_not_initialised_by_list(tmp_path: Path, capsys) -> None:
    key = tmp_path / "k"
    main(["key", "generate", str(key)])
    (tmp_path / "t").mkdir()
    assert main(["list", "--from", f"file://{tmp_path}/t", "--key-file", str(key)]) == 10
    assert list((tmp_path / "t").iterdir()) == []


def test_list_json_of_an_initialised_empty_repository(tmp_path: Path, capsys) -> None:
    from btrsync.catalog.repository import Repository
    from btrsync.crypto.keys import load_key_file
    from btrsync.targets.local import LocalTarget

    key = tmp_path / "k"
    main(["key", "generate", str(key)])
    (tmp_path / "t").mkdir()
    Repository.open(LocalTarget(tmp_path / "t"), load_key_file(key), create=True)
    capsys.readouterr()
    assert main(["--state-dir", str(tmp_path / "s"), "list", "--from", f"file://{tmp_path}/t",
                 "--key-file", str(key), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_every_error_class_is_documented_and_has_a_valid_exit_code() -> None:
    for cls in all_error_classes():
        assert cls.__doc__, cls
        assert cls.exit_code in ExitCode
    assert issubclass(all_error_classes()[0], BtrsyncError)


def test_invalid_timestamp_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert main(["snapshot", "create", str(tmp_path), "--snapshot-dir", str(tmp_path),
                 "--timestamp", "yesterday"]) == 2
    assert "invalid time" in capsys.readouterr().err


def test_bad_bandwidth_schedule_is_a_config_error(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[push]\nbwlimit = "10M"\nbwlimit_schedule = ["weekdays 8-18 5M"]\n')
    assert main(["--config", str(cfg), "list", "--from", "file:///x"]) == 2
    assert "bad bandwidth window" in capsys.readouterr().err


def test_bwlimit_flag_must_be_a_rate(capsys) -> None:
    assert main(["push", "/x", "--snapshot-dir", "/y", "--to", "file:///z", "--bwlimit", "fast"]) == 2
    assert "--bwlimit" in capsys.readouterr().err


def test_bad_keep_flags_are_usage_errors(tmp_path: Path, capsys) -> None:
    key = tmp_path / "k"
    main(["key", "generate", str(key)])
    (tmp_path / "t").mkdir()
    code = main(["--state-dir", str(tmp_path / "s"), "prune", "--from", f"file://{tmp_path}/t",
                 "--key-file", str(key), "--keep-dayly", "3"])
    assert code == 2 and "No such option" in capsys.readouterr().err
    code = main(["prune", "--from", f"file://{tmp_path}/t", "--key-file", str(key), "--keep-daily", "x"])
    assert code == 2 and "keep_daily" in capsys.readouterr().err
    code = main(["prune", "--from", f"file://{tmp_path}/t", "--key-file", str(key), "--keep-within", "3 fortnights"])
    assert code == 2 and "keep_within" in capsys.readouterr().err


def test_retention_profiles_are_validated(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[retention]\ndefault_profile = "nope"\n')
    assert main(["--config", str(cfg), "list", "--from", "file:///x"]) == 2
    assert "no profile named 'nope'" in capsys.readouterr().err
    cfg.write_text('[retention.profiles.a]\nbackups = { keep_dayly = 3 }\n')
    assert main(["--config", str(cfg), "list", "--from", "file:///x"]) == 2
    assert "did you mean 'keep_daily'" in capsys.readouterr().err


def test_retention_simulate_answers_what_a_year_holds(capsys) -> None:
    assert main(["retention", "simulate", "--keep-daily", "7", "--keep-monthly", "12", "--max-chain", "23"]) == 0
    out = capsys.readouterr().out
    assert "held" in out and "monthly" in out
    assert main(["retention", "simulate"]) == 2


def test_the_lazy_command_table_names_every_module_of_every_command() -> None:
    """btrsync.cli.commands names the modules of each command, so that running one imports only
    those: every module a command's callbacks (its subcommands' too) come from must be named."""
    from btrsync.cli.commands import COMMAND_MODULES

    _register()

    def modules(cmd: click.Command) -> set[str]:
        found = {cmd.callback.__module__.rsplit(".", 1)[-1]} if cmd.callback else set()
        for sub in getattr(cmd, "commands", {}).values():
            found |= modules(sub)
        return found

    assert set(COMMAND_MODULES) == set(cli.commands)
    for name, cmd in cli.commands.items():
        assert modules(cmd) <= set(COMMAND_MODULES[name]), name


def test_starting_the_command_line_loads_no_heavy_library_it_does_not_need() -> None:
    """pydantic (jobs), prometheus_client (metrics), boto3 (S3) and zstandard load with the
    commands that use them, not with every `btrsync` start."""
    import subprocess
    import sys

    code = ("import sys; from btrsync.cli.main import main; "
            "main(['key', '--help']); "
            "print(sorted(m for m in ('pydantic', 'prometheus_client', 'boto3', 'botocore', 'zstandard') "
            "if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout


def test_a_push_without_a_metrics_directory_loads_neither_prometheus_nor_verify(tmp_path) -> None:
    """The end of every push, prune, verify and clean rewrites the metrics file only where there is a
    metrics directory: without one (metrics off, or no node_exporter) prometheus_client stays unloaded, and a push
    without --verify does not load the verifier (start-up time of every such command)."""
    import subprocess
    import sys

    metrics_off = 'metrics_dir = ""'
    code = ("import sys, tomllib; from pathlib import Path; import btrsync.cli.cmd_push; "
            "from btrsync.config.model import parse_config; from btrsync.jobs.aftercommand import after_command; "
            f"after_command(parse_config(tomllib.loads({metrics_off!r})), Path({str(tmp_path)!r})); "
            "print(sorted(m for m in ('prometheus_client', 'btrsync.ops.verify', 'btrsync.ops.drill') "
            "if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout + run.stderr


def test_debug_logging_never_opens_up_the_s3_libraries() -> None:
    """--debug set the root logger to DEBUG, and botocore logged every signed request's
    Authorization and session-token headers and the repr of each 16 MiB part."""
    import logging

    from btrsync.cli.options import configure_logging

    configure_logging(2, True)
    try:
        assert logging.getLogger("btrsync").getEffectiveLevel() == logging.DEBUG
        for name in ("botocore.endpoint", "botocore.auth", "urllib3.connectionpool", "s3transfer"):
            assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
    finally:
        configure_logging(0, False)
