"""Units as the NixOS module and ``systemd generate`` render them, checked without booting them
(tests/systemd/test_nixos_units.py starts them).

``btrsync-on-failure@`` runs the ``on_failure`` hooks of a run that could not (killed, timed out): they write where the
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


@pytest.mark.slow
@pytest.mark.parametrize(("verification", "message"), [
    ('"b2 weekly" = { target = "b2"; }', 'verifications."b2 weekly": a verification name is 1-64 letters'),
    ('drill = { target = "b2"; level = "restore"; sample = "10%"; }',
     'verifications.drill.sample = "10%" with level "restore": give the number of backups'),
])
def test_a_verification_systemd_would_never_run_is_refused_when_the_system_is_built(
        tmp_path: Path, verification: str, message: str) -> None:
    """A unit name systemd does not load, or a drill count ``btrsync verify`` refuses (exit 2): the
    timer would never verify anything, and nothing would say so."""
    module = tmp_path / "host.nix"
    body = """
{
  services.btrsync = {
    enable = true;
    keyFile = "/run/keys/btrsync";
    targets.b2 = { url = "file:///mnt/backup/host"; };
    verifications.VERIFICATION;
  };
}
"""
    module.write_text(body.replace("VERIFICATION", verification))
    failed = evaluate(find_lib(), [str(module)])["assertions"]
    assert len(failed) == 1 and message in failed[0], failed
    fine = 'weekly = { target = "b2"; }; verifications.drill = { target = "b2"; level = "restore"; sample = "2"; }'
    module.write_text(body.replace("VERIFICATION", fine))
    assert evaluate(find_lib(), [str(module)])["assertions"] == []
