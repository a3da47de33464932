"""What ``btrsync-on-failure@`` may write, from ``systemd generate`` and from the NixOS module alike.

It runs the ``on_failure`` hooks of a run that could not (killed, timed out): they write where the
job's hooks write, so every job's ``hooks.read_write_paths`` is writable in it, besides the state
directory.  Under a real systemd: tests/systemd/test_nixos_units.py (the module's unit) and the
generated one's hooks in tests/systemd/test_generated_units.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from btrsync.config.model import parse_config
from btrsync.jobs.systemd import FAILURE_UNIT, generate
from tests.nix.nixeval import directives, evaluate, find_lib, unit_files


def writable(unit: str) -> set[str]:
    return {p for line in directives(unit)["Service.ReadWritePaths"] for p in shlex.split(line)}


@pytest.mark.slow
def test_the_on_failure_unit_may_write_where_every_jobs_hooks_write(tmp_path: Path) -> None:
    module = tmp_path / "host.nix"
    module.write_text("""
{
  services.btrsync = {
    enable = true;
    stateDir = "/var/lib/btrsync";
    jobs.db = { subvolumes = [ "/srv" ]; snapshotDir = "/srv/.snapshots"; hooks.readWritePaths = [ "/srv/db dumps" ]; };
    jobs.home = { subvolumes = [ "/home" ]; snapshotDir = "/home/.snapshots"; hooks.readWritePaths = [ "/var/log/hooks" ]; };
    jobs.logs = { subvolumes = [ "/var/log" ]; snapshotDir = "/var/.snapshots"; };
  };
}
""")
    host = evaluate(find_lib(), [str(module)])
    assert host["assertions"] == []
    expected = {"-/var/lib/btrsync", "-/srv/db dumps", "-/var/log/hooks"}
    assert writable(unit_files(host)[FAILURE_UNIT]) == expected

    config = parse_config(host["settings"], None)
    units = generate(config, list(config.jobs.jobs.values()), config_path=Path("/etc/btrsync/config.toml"),
                     btrsync="/usr/bin/btrsync", check=False)
    assert writable(units[FAILURE_UNIT]) == expected
