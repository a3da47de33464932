"""The NixOS module (nix/modules/backup) evaluated with nixpkgs' real module system.

No NixOS and no nixpkgs checkout here: nixpkgs' lib and Debian's nix-instantiate evaluate the
module offline, with the NixOS options it sets declared loosely (stubs.nix).  For three hosts
the generated configuration must pass ``btrsync config check``, the units must pass
``systemd-analyze verify`` and carry what ``btrsync systemd generate`` writes for the same
configuration; every assertion must fire with its message.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from btrsync.config.model import parse_config
from btrsync.config.timespan import timespan
from btrsync.jobs.systemd import generate
from tests.nix.nixeval import ROOT, directives, evaluate, find_lib, run_nix, unit_files

EXAMPLES = ["minimal", "b2-opnix", "two-jobs-ssh"]
CONFIG_PATH = "/etc/btrsync/config.toml"


@pytest.fixture(scope="module")
def lib() -> str:
    return find_lib()


@pytest.fixture(scope="module")
def hosts(lib: str) -> dict[str, dict[str, Any]]:
    return {name: evaluate(lib, [f"./tests/nix/{name}.nix"]) for name in EXAMPLES}


def btrsync_bin() -> str:
    return str(Path(sys.executable).parent / "btrsync")


def write_config(settings: dict[str, Any], path: Path) -> Path:
    path.write_text(tomli_w.dumps(settings))
    return path


def test_every_nix_file_parses() -> None:
    files = sorted([ROOT / "flake.nix", *(ROOT / "nix").rglob("*.nix"), *(ROOT / "tests" / "nix").glob("*.nix")])
    assert len(files) >= 15
    for path in files:
        proc = run_nix(["--parse", str(path)], check=False)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_generated_configuration_passes_btrsync_config_check(hosts: dict[str, Any], name: str,
                                                                 tmp_path: Path) -> None:
    host = hosts[name]
    assert host["assertions"] == []
    path = write_config(host["settings"], tmp_path / "config.toml")
    proc = subprocess.run([btrsync_bin(), "--config", str(path), "config", "check", "--json"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    effective = json.loads(proc.stdout)
    assert set(effective["jobs"]) == set(host["settings"]["jobs"])
    # the file the system gets is the same settings, checked when the system is built
    etc = host["etc"]["btrsync/config.toml"]
    assert etc["source"] == "btrsync-config-checked"
    assert f"{btrsync_bin()} --config " in etc["script"] and "config check" in etc["script"]


def test_b2_opnix_host(hosts: dict[str, Any]) -> None:
    host = hosts["b2-opnix"]
    s = host["settings"]
    assert s["key_file"] == "/var/lib/opnix/secrets/btrsyncKey"
    assert s["targets"]["b2"] == {"url": "s3://my-bucket/hosts/web1", "endpoint": "https://s3.us-west-004.backblazeb2.com",
                                  "credentials_file": "/var/lib/opnix/secrets/b2Credentials", "quota": "1T"}
    assert s["retention"]["profiles"]["standard"]["targets"]["b2"] == {"keep_monthly": 36, "keep_yearly": 5}
    assert s["retention"]["subvolumes"] == {"postgres": "databases"}
    assert s["push"] == {"bwlimit": "20M", "bwlimit_schedule": ["Mon-Fri 08:00-18:00 5M"]}
    assert s["jobs"]["home"]["verify"]["sample"] == "5%"
    hooks = s["jobs"]["home"]["hooks"]
    assert hooks["path"] == ["/nix/store/00000000000000000000000000000000-postgresql/bin",
                             "/nix/store/00000000000000000000000000000000-curl/bin",  # extraPackages
                             "/nix/store/00000000000000000000000000000000-bash/bin"]  # 'sh' for hooks
    assert s["jobs"]["home"]["inhibit_sleep"] is True  # inhibitsSleep: btrsync takes logind's lock
    assert "systemd-inhibit" not in json.dumps(host["services"]["btrsync-home"])  # no wrapper (SIGTERM)
    assert hooks["read_write_paths"] == ["/srv/db"]
    home = host["services"]["btrsync-home"]
    assert home["serviceConfig"]["ReadWritePaths"].endswith(" -/srv/db")
    # the hooks' packages are on their PATH (btrsync adds them), not on the unit's
    assert "postgresql" not in json.dumps(home.get("path", [])) + json.dumps(home.get("environment", {}))
    # OpNix: ordered after the unit that writes the secrets, wanted by it, not required
    assert home["after"] == ["network-online.target", "opnix-secrets.service"] == home["wants"]
    assert home["serviceConfig"]["LoadCredential"] == ["key:/var/lib/opnix/secrets/btrsyncKey",
                                                      "target-b2:/var/lib/opnix/secrets/b2Credentials"]
    assert home["serviceConfig"]["ExecStart"].endswith(f"--config {CONFIG_PATH} --key-file %d/key run home")
    assert home["restartIfChanged"] is False
    timer = host["timers"]["btrsync-home"]["timerConfig"]
    assert timer == {"OnCalendar": "*-*-* 01:30:00", "Persistent": True, "RandomizedDelaySec": "20m",
                     "Unit": "btrsync-home.service"}
    weekly = host["services"]["btrsync-verify-b2-weekly"]
    assert "verify --from b2 --level data --subset 1/7" in weekly["serviceConfig"]["ExecStart"]
    assert "opnix-secrets.service" in weekly["after"]
    # the verification unit gets the target's secret too (btrsync verify reads $CREDENTIALS_DIRECTORY)
    assert weekly["serviceConfig"]["LoadCredential"] == home["serviceConfig"]["LoadCredential"]
    assert host["timers"]["btrsync-verify-b2-weekly"]["timerConfig"]["OnCalendar"] == "Sun 03:00"
    # monitoring: node_exporter reads the metrics directory, Prometheus gets the alert rules
    metrics = s["metrics_dir"]
    assert host["prometheus"]["extraFlags"] == [f"--collector.textfile.directory={metrics}"]
    assert host["prometheus"]["enabledCollectors"] == ["textfile"]
    assert host["prometheus"]["ruleFiles"] == [str(ROOT / "monitoring" / "alerts.yml")]
    assert f"d {metrics} 0755 root root -" in host["tmpfiles"]
    assert "d /var/lib/btrsync 0700 root root -" in host["tmpfiles"]
    assert host["auditLog"] == "/var/lib/btrsync/audit.log"


def test_two_jobs_and_an_ssh_target(hosts: dict[str, Any]) -> None:
    host = hosts["two-jobs-ssh"]
    s = host["settings"]
    assert s["targets"]["nas"] == {"url": "ssh://backup@nas.lan/srv/backups/web1", "port": 2222,
                                   "identity_file": "/etc/btrsync/id_ed25519",
                                   "known_hosts_file": "/etc/btrsync/known_hosts"}
    assert s["jobs"]["home"]["targets"]["nas"]["retention"] == {"keep_daily": 30, "keep_monthly": 12}
    assert s["jobs"]["logs"]["enabled"] is False and "btrsync-logs" not in host["timers"]
    assert "btrsync-logs" in host["services"]  # kept for manual runs
    home = host["services"]["btrsync-home"]["serviceConfig"]
    assert home["LoadCredential"] == ["key:/etc/btrsync/backup.key", "ssh-nas:/etc/btrsync/id_ed25519"]
    assert '"-/mnt/usb disk/backups"' in home["ReadWritePaths"]
    # initialize: the repository is made where there is none, before the run, in the same sandbox
    assert s["targets"]["usb"]["initialize"] is True and "initialize" not in s["targets"]["nas"]
    assert home["ExecStartPre"] == [f"{btrsync_bin()} --config {CONFIG_PATH} --key-file %d/key init --to usb --if-empty"]
    assert host["services"]["btrsync-logs"]["serviceConfig"]["ExecStartPre"] == [  # it pushes to usb too
        f"{btrsync_bin()} --config {CONFIG_PATH} --key-file %d/key init --to usb --if-empty"]
    # timerConfig over the module's
    assert host["timers"]["btrsync-home"]["timerConfig"] == {
        "OnCalendar": "Mon..Fri *-*-* 02:30:00", "Persistent": False, "RandomizedDelaySec": "15m",
        "AccuracySec": "1min", "Unit": "btrsync-home.service"}
    assert "CAP_MKNOD" in home["CapabilityBoundingSet"]  # drills receive
    assert "CAP_MKNOD" not in host["services"]["btrsync-logs"]["serviceConfig"]["CapabilityBoundingSet"]
    assert host["services"]["btrsync-logs"].get("after") == []  # a directory target: no network
    drill = host["services"]["btrsync-verify-nas-drill"]["serviceConfig"]
    assert "--level restore --sample 1 --scratch-dir /var/tmp/btrsync-drills --snapshot-dir /.snapshots" in drill["ExecStart"]
    assert "CAP_MKNOD" in drill["CapabilityBoundingSet"]
    assert host["prometheus"] == {"ruleFiles": [], "enabledCollectors": [], "extraFlags": []}  # neither runs here


def test_the_minimal_host(hosts: dict[str, Any]) -> None:
    host = hosts["minimal"]
    home = host["services"]["btrsync-home"]
    assert home["serviceConfig"]["LoadCredential"] == [] and "--key-file" not in home["serviceConfig"]["ExecStart"]
    assert home["wants"] == [] and "key_file" not in host["settings"]
    assert host["settings"]["jobs"]["home"]["snapshots"] == {"keep_hourly": 24}
    assert set(host["services"]) == {"btrsync-home", "btrsync-on-failure@"} and set(host["timers"]) == {"btrsync-home"}


def _normalised(d: dict[str, list[str]]) -> dict[str, list[str]]:
    out = {}
    for key, values in d.items():
        if key == "Timer.RandomizedDelaySec":
            values = [str(int(timespan(v).total_seconds())) for v in values]
        elif key in ("Unit.Wants", "Unit.After", "Unit.RequiresMountsFor", "Service.ReadWritePaths",
                     "Service.CapabilityBoundingSet", "Service.SystemCallFilter", "Service.RestrictAddressFamilies",
                     "Service.BindPaths"):
            values = sorted(" ".join(values).split(" ")) if '"' not in " ".join(values) else values
        values = ["true" if v in ("yes", "true") else "false" if v in ("no", "false") else v for v in values]
        out[key] = values
    return out


TIMER_CONFIG = {("two-jobs-ssh", "btrsync-home.timer"): ("Timer.AccuracySec", "Timer.Persistent")}


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_units_are_what_btrsync_systemd_generate_writes(hosts: dict[str, Any], name: str) -> None:
    """The module mirrors btrsync/jobs/systemd.py; the two must not drift apart."""
    host = hosts[name]
    config = parse_config(tomllib.loads(tomli_w.dumps(host["settings"])))
    expected = generate(config, list(config.jobs.jobs.values()), config_path=Path(CONFIG_PATH),
                        btrsync=btrsync_bin(), check=bool(shutil.which("systemd-analyze")))
    ours = unit_files(host)
    secrets_units = {"opnix-secrets.service"} if name == "b2-opnix" else set()
    for unit, text in expected.items():
        mine = _normalised(directives(ours[unit]))
        theirs = _normalised(directives(text))
        for key in ("Unit.Wants", "Unit.After"):  # the module adds the secrets' unit
            extra = set(mine.pop(key, [])) - set(theirs.get(key, []))
            assert extra <= secrets_units, (unit, key, extra)
            theirs.pop(key, None)
        # generated units make the state and metrics directories ('+mkdir'); on NixOS tmpfiles does
        pre = theirs.pop("Service.ExecStartPre", [])
        for made in [p for p in pre if p.startswith("+")]:
            assert f"d {made.split()[-1]} 0" in " ".join(host["tmpfiles"]), (unit, made)
        if [p for p in pre if not p.startswith("+")]:  # btrsync init --if-empty (targets.<name>.initialize)
            theirs["Service.ExecStartPre"] = [p for p in pre if not p.startswith("+")]
        for key in TIMER_CONFIG.get((name, unit), ()):  # the host's own timerConfig, over the module's
            mine.pop(key, None)
            theirs.pop(key, None)
        assert mine == theirs, unit
    job_units = {u for u in ours if not u.startswith("btrsync-verify-")}
    assert job_units == set(expected)


def test_rendered_units_pass_systemd_analyze_verify(hosts: dict[str, Any], tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (Debian package systemd)")
        pytest.skip("systemd-analyze is missing")
    for name, host in hosts.items():
        out = tmp_path / name
        out.mkdir()
        for unit, text in unit_files(host).items():
            (out / unit).write_text(text)
        # a template is verified by an instance name, as systemd would start it
        shutil.copy(out / "btrsync-on-failure@.service", out / "btrsync-on-failure@btrsync-home.service.service")
        files = sorted(str(p) for p in out.iterdir() if p.name != "btrsync-on-failure@.service")
        proc = subprocess.run([tool, "verify", "--man=no", *files], capture_output=True, text=True, cwd=out,
                              env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}, timeout=120, check=False)
        mine = [line for line in (proc.stdout + proc.stderr).splitlines() if str(out) in line or "btrsync" in line]
        assert proc.returncode == 0 and not mine, f"{name}:\n{proc.stdout}{proc.stderr}"
        # systemd-analyze security: no unit of the module above "OK" either (docs/scheduling.md)
        from tests.jobs.test_systemd import SECURITY_LIMIT, exposure

        for unit in sorted(out.glob("*.service")):
            if unit.name != "btrsync-on-failure@.service":
                assert exposure(tool, unit) <= SECURITY_LIMIT, (name, unit.name)


BASE = """
  services.btrsync.enable = true;
  services.btrsync.keyFile = "/etc/btrsync/backup.key";
  services.btrsync.targets.usb.url = "file:///mnt/usb";
  services.btrsync.retention.profiles.standard.backups.keepDaily = 7;
  services.btrsync.jobs.home = { subvolumes = [ "/home" ]; snapshotDir = "/.snapshots"; targets.usb = { }; };
"""

ASSERTIONS = {
    "unknown target": ('services.btrsync.jobs.home.targets.nope = { };',
                       'services.btrsync.jobs.home.targets.nope: no target named "nope" (defined in services.btrsync.targets: usb).'),
    "unknown job profile": ('services.btrsync.jobs.home.retention = "weekly";',
                            'services.btrsync.jobs.home.retention = "weekly": no profile of that name in '
                            'services.btrsync.retention.profiles (defined: standard).'),
    "unknown target profile": ('services.btrsync.jobs.home.targets.usb.retention = "long";',
                               'services.btrsync.jobs.home.targets.usb.retention = "long": no profile'),
    "unknown default profile": ('services.btrsync.retention.defaultProfile = "x";',
                                'services.btrsync.retention.defaultProfile = "x": no profile'),
    "unknown subvolume profile": ('services.btrsync.retention.subvolumes.pg = "db";',
                                  'services.btrsync.retention.subvolumes.pg = "db": no profile'),
    "profile and inline policy": ('services.btrsync.jobs.home.targets.usb = { retention = "standard"; keep.keepDaily = 3; };',
                                  "services.btrsync.jobs.home.targets.usb: set retention (a profile) or keep"),
    "s3 without credentials": ('services.btrsync.targets.b2.url = "s3://bucket/host";',
                               "services.btrsync.targets.b2 (s3://bucket/host) is an S3 target without credentials"),
    "ssh without known_hosts": ('services.btrsync.targets.nas.url = "ssh://backup@nas/srv";',
                                "services.btrsync.targets.nas (ssh://backup@nas/srv) is an ssh target without knownHostsFile"),
    "bad url": ('services.btrsync.targets.ftp.url = "ftp://x/y";',
                'services.btrsync.targets.ftp.url = "ftp://x/y": use s3://, ssh:// or file:///'),
    "empty job": ('services.btrsync.jobs.empty.snapshotDir = "/.snapshots";',
                  "services.btrsync.jobs.empty is empty: set subvolumes"),
    "bad job name": ('services.btrsync.jobs."my job" = { subvolumes = [ "/srv" ]; snapshotDir = "/.s"; };',
                     "services.btrsync.jobs.\"my job\": a job name is 1-64 letters"),
    "no key": ("services.btrsync.keyFile = lib.mkForce null;",
               "services.btrsync.keyFile is not set, but job(s) home push to targets"),
    "key as a path literal": ("services.btrsync.keyFile = lib.mkForce ./backup.key;",
                              "services.btrsync.keyFile is a Nix path literal: it would be copied into the "
                              "world-readable /nix/store"),
    "key in the store": ('services.btrsync.keyFile = lib.mkForce "/nix/store/0000-backup.key";',
                         'services.btrsync.keyFile = "/nix/store/0000-backup.key" is in the Nix store'),
    "credentials as a path literal": ('services.btrsync.targets.b2 = { url = "s3://b/h"; credentialsFile = ./b2.cred; };',
                                      "services.btrsync.targets.b2.credentialsFile is a Nix path literal"),
    "identity in the store": ('services.btrsync.targets.nas = { url = "ssh://nas/x"; knownHostsFile = "/k"; '
                              'identityFile = "/nix/store/0000-id"; };',
                              'services.btrsync.targets.nas.identityFile = "/nix/store/0000-id" is in the Nix store'),
    "relative secret": ('services.btrsync.targets.b2 = { url = "s3://b/h"; credentialsFile = "b2.cred"; };',
                        'services.btrsync.targets.b2.credentialsFile = "b2.cred" must be an absolute path.'),
    "job name like an option": ('services.btrsync.jobs."--all" = { subvolumes = [ "/srv" ]; snapshotDir = "/.s"; };',
                                "not starting with '-'"),
    "path literal in settings": ("services.btrsync.settings.push.rate_file = ./rates;",
                                 "services.btrsync.settings.push.rate_file is a Nix path literal"),
    "settings file in the store": ('services.btrsync.settings.targets.extra = { url = "s3://b/e"; '
                                   'credentials_file = "/nix/store/0000-c"; };',
                                   'services.btrsync.settings.targets.extra.credentials_file = "/nix/store/0000-c" '
                                   "is in the Nix store"),
    "verification of an unknown target": ('services.btrsync.verifications.w.target = "b2";',
                                          'services.btrsync.verifications.w.target = "b2": no target of that name'),
    "restricted key given": ('services.btrsync.sshAccess = { enable = true; authorizedKeys = '
                             '[ "command=\\"sh\\" ssh-ed25519 AAAA x" ]; };',
                             "services.btrsync.sshAccess.authorizedKeys: give bare public keys"),
}


def test_the_flakes_module_uses_the_hosts_nixpkgs(lib: str, tmp_path: Path) -> None:
    """nixosModules.default is the module itself: its package is built with the host's pkgs, not
    with the flake's own nixpkgs (a second nixpkgs, a second Python in the closure)."""
    expr = tmp_path / "flake.nix"
    expr.write_text(f"""
{{ lib }}:
let flake = import {ROOT}/flake.nix;
    out = flake.outputs {{ self = out; nixpkgs = {{ inherit lib; legacyPackages = {{ }}; }}; }};
in {{ module = toString out.nixosModules.default; inputs = builtins.attrNames flake.inputs; }}
""")
    out = json.loads(run_nix(["--eval", "--strict", "--json", str(expr), "--arg", "lib", lib]).stdout)
    assert out == {"module": str(ROOT / "nix/modules/backup"), "inputs": ["nixpkgs"]}


def test_the_ssh_server_side(lib: str) -> None:
    """sshAccess: a system user whose home holds the repositories; each key restricted and forced to
    a wrapper running the client's command sandboxed in that home (what the ssh target runs: sh
    snippets with coreutils and find, and rsync)."""
    host = evaluate(lib, ["./tests/nix/ssh-server.nix"])
    assert host["assertions"] == []
    user = host["users"]["btrsync"]
    assert user["home"] == "/srv/backups" and user["homeMode"] == "700" and user["isSystemUser"] is True
    assert user["group"] == "btrsync" and "btrsync" in host["groups"]
    keys = user["openssh"]["authorizedKeys"]["keys"]
    assert len(keys) == 2
    wrapper = "/nix/store/00000000000000000000000000000000-btrsync-ssh-access"
    assert all(k.startswith(f'restrict,command="{wrapper}" ssh-ed25519 ') for k in keys), keys
    # no btrsync units on a server that only receives
    assert set(host["services"]) == set() and host["settings"] == {}


def test_the_ssh_access_wrapper_runs_only_a_given_command_confined_to_the_home(lib: str, tmp_path: Path) -> None:
    expr = tmp_path / "wrapper.nix"
    expr.write_text(f"""
{{ lib, btrsyncPrefix }}:
let e = lib.evalModules {{ modules = [ {ROOT}/nix/modules/backup (import {ROOT}/tests/nix/stubs.nix {{ inherit btrsyncPrefix; }})
                                      {ROOT}/tests/nix/ssh-server.nix ]; }};
    key = builtins.head e.config.users.users.btrsync.openssh.authorizedKeys.keys;
in key
""")
    key = json.loads(run_nix(["--eval", "--strict", "--json", str(expr), "--arg", "lib", lib,
                              "--argstr", "btrsyncPrefix", "/x"]).stdout)
    assert key.startswith('restrict,command="')
    # the wrapper's text, from the module source: refuses a shell, binds only the store and the home
    text = (ROOT / "nix/modules/backup/ssh-access.nix").read_text()
    script = text.split('writeShellScript "btrsync-ssh-access" \'\'', 1)[1].split("\'\';", 1)[0]
    for part in ('[ -z "\'\'${SSH_ORIGINAL_COMMAND:-}" ]', "--unshare-all", "--ro-bind /nix/store /nix/store",
                 '--bind "$HOME" "$HOME"', "--clearenv", '-c "$SSH_ORIGINAL_COMMAND"'):
        assert part in script, part
    assert script.count("--bind ") == 1  # nothing else is writable


def test_the_base_of_the_bad_configurations_is_good(lib: str) -> None:
    assert evaluate(lib, [f"({{ lib, ... }}: {{ {BASE} }})"])["assertions"] == []


@pytest.mark.parametrize("case", sorted(ASSERTIONS))
def test_every_assertion_fires_with_its_message(lib: str, case: str) -> None:
    line, message = ASSERTIONS[case]
    result = evaluate(lib, [f"({{ lib, ... }}: {{ {BASE} }})", f"({{ lib, ... }}: {{ {line} }})"])
    assert any(message in m for m in result["assertions"]), result["assertions"]
    assert len(result["assertions"]) == 1, result["assertions"]  # only this one


def test_the_option_reference_in_docs_nixos_md_is_current(lib: str) -> None:
    env = {**os.environ}
    if lib.startswith("import /"):
        env["BTRSYNC_NIXPKGS_LIB"] = lib.removeprefix("import ")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "nixos-option-reference"), "--check"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = (ROOT / "docs" / "nixos.md").read_text()
    for option in ("services.btrsync.keyFile", "services.btrsync.targets.<name>.credentialsFile",
                   "services.btrsync.jobs.<name>.schedule", "services.btrsync.retention.profiles.<name>.backups.keepDaily",
                   "services.btrsync.verifications.<name>.level", "services.btrsync.monitoring.metricsDir"):
        assert f"### `{option}`" in doc, option


VM_EVAL = """
{ lib, btrsyncPrefix }:
let
  drv = name: { type = "derivation"; inherit name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
  pkgs = { testers.runNixOSTest = t: t; rsync = drv "rsync"; bash = drv "bash"; callPackage = _: _: drv "btrsync";
           formats.toml = { }: { generate = name: _: drv name; type = lib.types.attrsOf lib.types.anything; };
           runCommand = name: _: script: drv name // { inherit script; }; };
  test = import ./nix/tests/vm.nix { inherit pkgs; };
  loose = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
  nodeStubs = { options = { virtualisation = loose; services.openssh = loose; }; };
  host = lib.evalModules { modules = [ test.nodes.host (import ./tests/nix/stubs.nix { inherit btrsyncPrefix; }) nodeStubs
                                       { _module.args.pkgs = lib.mkForce pkgs; } ]; };
  server = lib.evalModules { modules = [ test.nodes.server nodeStubs { options.users = loose; }
    { options.environment.systemPackages = lib.mkOption { type = lib.types.listOf lib.types.unspecified; }; } ]; };
in {
  inherit (test) name testScript;
  nodes = lib.attrNames test.nodes;
  failed = map (a: a.message) (lib.filter (a: !a.assertion) host.config.assertions);
  units = lib.attrNames host.config.systemd.services ++ map (t: t + ".timer") (lib.attrNames host.config.systemd.timers);
  exec = host.config.systemd.services.btrsync-data.serviceConfig.ExecStart;
  settings = host.config.services.btrsync.settings;
  sshd = server.config.services.openssh.enable;
}
"""


def test_the_vm_test_evaluates_as_far_as_the_stubs_allow(lib: str, tmp_path: Path) -> None:
    from tests.nix.nixeval import btrsync_prefix

    expr = tmp_path / "vm-eval.nix"
    expr.write_text(VM_EVAL.replace("./nix/", f"{ROOT}/nix/").replace("./tests/", f"{ROOT}/tests/"))
    out = run_nix(["--eval", "--strict", "--json", str(expr), "--arg", "lib", lib, "--argstr", "btrsyncPrefix",
                   "/nix/store/00000000000000000000000000000000-btrsync"])
    vm = json.loads(out.stdout)
    assert vm["name"] == "btrsync" and vm["nodes"] == ["host", "server"] and vm["sshd"] is True
    assert vm["failed"] == []
    assert {"btrsync-data", "btrsync-on-failure@", "btrsync-data.timer"} <= set(vm["units"])
    assert vm["exec"].endswith("--key-file %d/key run data")
    (tmp_path / "vm.toml").write_text(tomli_w.dumps(vm["settings"]))
    proc = subprocess.run([btrsync_bin(), "--config", str(tmp_path / "vm.toml"), "config", "check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    compile(vm["testScript"], "nix/tests/vm.nix testScript", "exec")  # the driver's script is Python
    for step in ("systemctl start btrsync-data.service", "btrsync restore", "btrsync.prom", "is-failed"):
        assert step in vm["testScript"], step
    script = vm["testScript"]
    # the repository exists before the first push (exit 10 otherwise), and the start is checked
    assert script.index("btrsync init --to nas") < script.index("systemctl start btrsync-data.service")
    assert 'host.systemctl("start' not in script and 'host.succeed("systemctl start btrsync-data.service")' in script
    assert btrsync_prefix()  # the rendered units elsewhere run the real one


PACKAGE_EVAL = """
{ lib }:
let
  py = lib.genAttrs [ "boto3" "botocore" "zstandard" "cryptography" "xxhash" "click" "psutil" "pydantic" "prometheus-client" "jeepney"
                      "setuptools" "wheel" "pytestCheckHook" "hypothesis" "pytest-timeout" ] (n: n)
       // { buildPythonApplication = a: a; };
  bin = name: { name = name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
  p = import ./nix/package.nix { inherit lib; python3Packages = py; installShellFiles = bin "installShellFiles";
                                 btrfs-progs = bin "btrfs-progs"; zstd = bin "zstd";
                                 openssh = bin "openssh"; rsync = bin "rsync"; util-linux = bin "util-linux"; };
in { inherit (p) pname dependencies makeWrapperArgs pythonImportsCheck enabledTestPaths pytestFlags preCheck postInstall;
     nativeBuildInputs = map (d: d.name) p.nativeBuildInputs;
     meta = { inherit (p.meta) license maintainers mainProgram platforms; hasHomepage = p.meta ? homepage; }; }
"""


def test_the_package_has_the_projects_dependencies_and_tools(lib: str, tmp_path: Path) -> None:
    expr = tmp_path / "pkg.nix"
    expr.write_text(PACKAGE_EVAL.replace("./nix/", f"{ROOT}/nix/"))
    pkg = json.loads(run_nix(["--eval", "--strict", "--json", str(expr), "--arg", "lib", lib]).stdout)
    assert pkg["meta"]["license"]["spdxId"] == "Apache-2.0" == tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert pkg["meta"]["maintainers"] == [] and pkg["meta"]["mainProgram"] == "btrsync"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower().replace("_", "-") for d in project["dependencies"]}
    assert set(pkg["dependencies"]) == wanted
    path = pkg["makeWrapperArgs"][3]
    for tool in ("btrfs-progs", "zstd", "openssh", "rsync", "util-linux"):  # util-linux: the drills' losetup, mount
        assert f"-{tool}/bin" in path, tool
    assert "btrsync.sendstream._native" in pkg["pythonImportsCheck"]
    assert pkg["enabledTestPaths"] == ["tests/unit"] and "rm -r btrsync" in pkg["preCheck"]
    # the man pages and click's completion scripts, committed (scripts/cli-files), are installed
    assert pkg["nativeBuildInputs"] == ["installShellFiles"]
    assert "installManPage man/*.1" in pkg["postInstall"]
    for shell, file in (("bash", "btrsync.bash"), ("zsh", "_btrsync"), ("fish", "btrsync.fish")):
        assert f"--{shell} completions/{file}" in pkg["postInstall"] and (ROOT / "completions" / file).is_file()
    assert len(list((ROOT / "man").glob("btrsync*.1"))) > 30
    source = (ROOT / "nix" / "package.nix").read_text()
    assert "../man " in source and "../completions " in source  # in the source the build sees
    # no public address exists yet (no remote, none in README or pyproject): no placeholder either
    assert pkg["meta"]["hasHomepage"] is False and "meta.homepage: absent on purpose" in source


def test_the_host_in_docs_nixos_md_evaluates_and_passes_config_check(lib: str, tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "nixos.md").read_text()
    block = doc.split("## A complete host", 1)[1].split("```nix\n", 1)[1].split("```", 1)[0]
    imports = "imports = [ btrsync.nixosModules.default opnix.nixosModules.default ];"
    assert imports in block
    host_file = tmp_path / "host.nix"
    host_file.write_text(block.replace(imports, f"imports = [ {ROOT}/tests/nix/opnix-stub.nix ];"))
    host = evaluate(lib, [str(host_file)])
    assert host["assertions"] == []
    assert set(host["timers"]) == {"btrsync-home", "btrsync-logs", "btrsync-verify-b2-weekly", "btrsync-verify-usb-drill"}
    home = host["services"]["btrsync-home"]
    assert "opnix-secrets.service" in home["after"]
    assert home["serviceConfig"]["LoadCredential"] == [
        "key:/var/lib/opnix/secrets/btrsyncKey", "target-b2:/var/lib/opnix/secrets/b2Credentials"]
    # the disk is mounted for the run; both targets are initialised on the first one
    assert "/mnt/backup/web1" in home["unitConfig"]["RequiresMountsFor"]
    assert [p.split(" init --to ")[1] for p in home["serviceConfig"]["ExecStartPre"] if " init " in p] == [
        "b2 --if-empty", "usb --if-empty"]
    hooks = host["settings"]["jobs"]["home"]["hooks"]
    assert hooks["pre"] == [["systemctl", "start", "postgres-dump.service"]]
    assert hooks["path"] == ["/nix/store/00000000000000000000000000000000-curl/bin",
                             "/nix/store/00000000000000000000000000000000-bash/bin"]
    assert host["prometheus"]["ruleFiles"] == [str(ROOT / "monitoring" / "alerts.yml")]
    assert host["prometheus"]["enabledCollectors"] == ["textfile"]
    # the systemd-analyze security figures the page gives for these units are this version's
    tool = shutil.which("systemd-analyze")
    if tool is not None:
        from tests.jobs.test_systemd import SECURITY_LIMIT, exposure

        units = tmp_path / "units"
        units.mkdir()
        ours = {**host, "services": {k: v for k, v in host["services"].items() if k.startswith("btrsync")}}
        for unit, text in unit_files(ours).items():
            (units / unit).write_text(text)
        (units / "btrsync-on-failure@btrsync-home.service.service").write_text(
            (units / "btrsync-on-failure@.service").read_text())
        for unit in sorted(units.glob("*.service")):
            if unit.name == "btrsync-on-failure@.service":
                continue
            level = exposure(tool, unit)
            shown = "btrsync-on-failure@.service" if unit.name.startswith("btrsync-on-failure@") else unit.name
            assert level <= SECURITY_LIMIT and f"| `{shown}` | {level} |" in doc, (shown, level)
    path = write_config(host["settings"], tmp_path / "config.toml")
    proc = subprocess.run([btrsync_bin(), "--config", str(path), "config", "check"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_backup_server_and_its_target_in_docs_nixos_md_evaluate(lib: str, tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "nixos.md").read_text()
    part = doc.split("## A backup server: `sshAccess`", 1)[1].split("\n## ", 1)[0]
    server, target = [b.split("```", 1)[0] for b in part.split("```nix\n")[1:3]]
    (tmp_path / "server.nix").write_text(server)
    openssh = "({ lib, ... }: { options.services.openssh = lib.mkOption { type = lib.types.attrsOf lib.types.anything; }; })"
    host = evaluate(lib, [str(tmp_path / "server.nix"), openssh])
    assert host["assertions"] == [] and host["users"]["btrsync"]["home"] == "/srv/backups"
    (key,) = host["users"]["btrsync"]["openssh"]["authorizedKeys"]["keys"]
    assert key.startswith('restrict,command="') and key.endswith(" root@web1")
    (tmp_path / "sender.nix").write_text(
        "{ config, pkgs, ... }: { imports = [ %s/tests/nix/opnix-stub.nix ];\n"
        "services.onepassword-secrets = { enable = true; secrets.nasIdentity = { reference = \"op://B/nas/key\"; kind = \"file\"; }; };\n"
        "services.btrsync = { enable = true; keyFile = \"/run/k\"; jobs.home = { subvolumes = [ \"/home\" ]; "
        "snapshotDir = \"/.snapshots\"; targets.nas = { }; }; };\n%s }" % (ROOT, target))
    sender = evaluate(lib, [str(tmp_path / "sender.nix")])
    assert sender["assertions"] == []
    assert sender["settings"]["targets"]["nas"]["url"] == "ssh://btrsync@nas.lan/~/web1"
    assert "ssh-nas:/var/lib/opnix/secrets/nasIdentity" in sender["services"]["btrsync-home"]["serviceConfig"]["LoadCredential"]


def test_the_docs_fetch_1password_documents_with_kind_file(lib: str) -> None:
    """The key and the credentials are stored as 1Password Documents (op document create), which
    OpNix (v0.11.0) fetches only with kind = "file" and a three-part reference op://VAULT/ITEM/FILE."""
    doc = (ROOT / "docs" / "nixos.md").read_text()
    secrets = re.findall(r'(\w+) = \{ reference = "(op://[^"]+)"; kind = "(\w+)";', doc)
    assert {name for name, _ref, _kind in secrets} >= {"btrsyncKey", "b2Credentials"}
    for _name, ref, kind in secrets:
        assert kind == "file" and len(ref.removeprefix("op://").split("/")) == 3, ref
    assert "op document create /root/btrsync-web1.key" in doc and "btrsync-web1/btrsync-web1.key" in doc
    assert "op document create b2.credentials" in doc and "b2-web1/b2.credentials" in doc


def test_the_minimal_host_in_docs_nixos_md_evaluates_and_passes_config_check(lib: str, tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "nixos.md").read_text()
    part = doc.split("## A minimal host: B2 only", 1)[1].split("## A complete host", 1)[0]
    flake, block = [b.split("```", 1)[0] for b in part.split("```nix\n")[1:3]]
    assert 'inputs.nixpkgs.follows = "nixpkgs"' in flake and flake.count("follows") == 2
    imports = "imports = [ btrsync.nixosModules.default opnix.nixosModules.default ];"
    assert imports in block
    host_file = tmp_path / "host.nix"
    host_file.write_text(block.replace("{ config, btrsync, opnix, ... }:", "{ config, ... }:")
                         .replace(imports, f"imports = [ {ROOT}/tests/nix/opnix-stub.nix ];"))
    host = evaluate(lib, [str(host_file)])
    assert host["assertions"] == []
    home = host["services"]["btrsync-home"]["serviceConfig"]
    assert home["ExecStartPre"] == [f"{btrsync_bin()} --config {CONFIG_PATH} --key-file %d/key init --to b2 --if-empty"]
    assert home["LoadCredential"] == ["key:/var/lib/opnix/secrets/btrsyncKey",
                                      "target-b2:/var/lib/opnix/secrets/b2Credentials"]
    proc = subprocess.run([btrsync_bin(), "--config", str(write_config(host["settings"], tmp_path / "c.toml")),
                           "config", "check"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_hosts_own_service_settings_override_the_hardening(lib: str) -> None:
    """The hardening is at mkDefault: `serviceConfig.Nice = 5` is the host's choice, not a conflict."""
    result = evaluate(lib, [f"({{ lib, ... }}: {{ {BASE} }})",
                            "{ systemd.services.btrsync-home.serviceConfig = { Nice = 5; ProtectProc = \"default\"; }; }",
                            "{ services.btrsync = { ioSchedulingClass = \"idle\"; ioSchedulingPriority = 7; }; }"])
    home = result["services"]["btrsync-home"]["serviceConfig"]
    assert home["Nice"] == 5 and home["ProtectProc"] == "default"
    assert home["IOSchedulingClass"] == "idle" and home["IOSchedulingPriority"] == 7
    assert home["LimitCORE"] == "0"  # not a default: the key must never land in a core file
    default = evaluate(lib, [f"({{ lib, ... }}: {{ {BASE} }})"])["services"]["btrsync-home"]["serviceConfig"]
    assert default["IOSchedulingClass"] == "best-effort" and "IOSchedulingPriority" not in default
    assert default["Nice"] == 10 and default["SystemCallFilter"] == ["@system-service", "@mount"]


def test_a_percent_encoded_directory_target_is_the_decoded_directory(lib: str) -> None:
    result = evaluate(lib, [f"({{ lib, ... }}: {{ {BASE} }})",
                            '{ services.btrsync.targets.usb.url = lib.mkForce "file:///mnt/usb%20disk%25/"; }'
                            .replace("{ services", "({ lib, ... }: { services").replace("; }", "; })")])
    home = result["services"]["btrsync-home"]
    assert '"-/mnt/usb disk%%"' in home["serviceConfig"]["ReadWritePaths"]
    assert '"/mnt/usb disk%%"' in home["unitConfig"]["RequiresMountsFor"] and "%20" not in json.dumps(home)


def test_verification_and_failure_units(lib: str) -> None:
    """A verification holds the key: no core file; it starts the host's failure units; the failure
    unit's hooks may notify over the network; drill scratch directories are the host's."""
    result = evaluate(lib, [f"({{ lib, ... }}: {{ {BASE} }})", """{
      services.btrsync.onFailure = [ "notify@%n.service" ];
      services.btrsync.verifications.drill = { target = "usb"; level = "restore"; };
      services.btrsync.jobs.home.verify.drillEvery = "30d";
    }"""])
    drill = result["services"]["btrsync-verify-drill"]
    assert drill["onFailure"] == ["notify@%n.service"] and drill["serviceConfig"]["LimitCORE"] == "0"
    assert drill["serviceConfig"]["BindPaths"] == "-/var/tmp/btrsync-drills"
    home = result["services"]["btrsync-home"]
    assert home["onFailure"] == ["btrsync-on-failure@%n.service", "notify@%n.service"]
    assert home["serviceConfig"]["BindPaths"] == "-/var/tmp/btrsync-drills"
    assert "d /var/tmp/btrsync-drills 0700 root root -" in result["tmpfiles"]
    failure = result["services"]["btrsync-on-failure@"]
    assert failure["wants"] == ["network-online.target"] == failure["after"]
