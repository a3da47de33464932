"""The NixOS module's units, as the module renders them, started by a real systemd.

The module is evaluated with nixpkgs' lib (tests/nix/nixeval.py); its units become unit files
the way NixOS writes them, with what NixOS adds: ``Environment=PATH=`` of the unit's ``path``
plus NixOS's defaults (coreutils, findutils, grep, sed, systemd), and the package as
``makeWrapper`` builds it (``bin/btrsync`` with nix/package.nix's tools in front of PATH).  The
host's /usr plays the store: each package is a directory of links to the programs of the Debian
packages holding them (``nix_like_path``), so a tool neither the unit nor the package declares
is missing, and the test fails, as it would on NixOS.  tmpfiles rules are applied by hand.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.nix.nixeval import HERE, find_lib, run_nix, unit_files, wrapped_tools
from tests.support.loopfs import create_subvolume
from tests.systemd.conftest import Booted
from tests.systemd.harness import NIXOS_BASE_PATH, nix_like_path
from tests.systemd.test_generated_units import BTRSYNC, host_cli, started

pytestmark = [pytest.mark.systemd, pytest.mark.btrfs]
CONFIG_PATH = Path("/etc/btrsync/config.toml")
STORE = re.compile(r"^/nix/store/[0-9a-z]{32}-")


def wrapped_package(farm: Path) -> Path:
    """``$out`` of the package as makeWrapper makes it: bin/btrsync runs the real one with the
    package's tools in front of PATH (``--prefix PATH : ...``)."""
    out = farm / "btrsync"
    (out / "bin").mkdir(parents=True)
    tools = nix_like_path(farm, wrapped_tools())
    wrapper = out / "bin" / "btrsync"
    wrapper.write_text(f'#!/usr/bin/sh\nPATH="{tools}${{PATH:+:$PATH}}" exec "{BTRSYNC}" "$@"\n')
    wrapper.chmod(0o755)
    return out


def evaluate(module: Path, prefix: Path) -> dict[str, Any]:
    out = run_nix(["--eval", "--strict", "--json", str(HERE / "eval.nix"), "--arg", "lib", find_lib(),
                   "--argstr", "btrsyncPrefix", str(prefix), "--arg", "modules", f"[ {module} ]"])
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def install(booted: Booted, host: dict[str, Any], farm: Path) -> dict[str, str]:
    """The host's units into the container as NixOS would write them; its config.toml and tmpfiles."""
    c = booted.container
    files = unit_files(host)
    for name, unit in host["services"].items():
        packages = [p["name"] if isinstance(p, dict) else str(p) for p in unit.get("path", [])]
        path = nix_like_path(farm, [*packages, *NIXOS_BASE_PATH])
        text = files[f"{name}.service"]
        files[f"{name}.service"] = text.replace("[Service]\n", f"[Service]\nEnvironment=PATH={path}\n", 1)
    # store paths of packages in the settings (hooks.path) -> the same programs of the host's /usr
    for job in host["settings"].get("jobs", {}).values():
        hooks = job.get("hooks", {})
        hooks["path"] = [nix_like_path(farm, [STORE.sub("", p).removesuffix("/bin")]) if STORE.match(p) else p
                         for p in hooks.get("path", [])]
    config = farm / "config.toml"
    config.write_text(tomli_w.dumps(host["settings"]))
    c.run(["mkdir", "-p", str(CONFIG_PATH.parent)])
    c.run(["cp", str(config), str(CONFIG_PATH)])
    for rule in host["tmpfiles"]:
        kind, path, mode, *_ = rule.split()
        assert kind == "d", rule
        c.run(["mkdir", "-p", "-m", mode, path])
    c.install(files)
    return files


def test_the_nixos_job_unit_runs_end_to_end_with_only_what_it_declares(booted: Booted) -> None:
    data = booted.data / "nixos"
    secrets = data / "secrets"
    secrets.mkdir(parents=True, mode=0o700)
    key = secrets / "key"
    assert host_cli(data / "none.toml", "key", "generate", str(key)).returncode == 0
    subvolume = create_subvolume(booted.fs / "nixos")
    (subvolume / "file").write_bytes(os.urandom(200_000))
    snapshots = booted.fs / "nixos.snapshots"
    snapshots.mkdir()
    usb = data / "usb"
    usb.mkdir()
    (data / "hooks").mkdir()
    module = data / "host.nix"
    module.write_text(f"""
{{
  services.btrsync = {{
    enable = true;
    keyFile = "{key}";
    stateDir = "{data / 'state'}";
    monitoring.metricsDir = "{data / 'metrics'}";
    targets.usb = {{ url = "file://{usb}"; initialize = true; }};
    jobs.nixos = {{
      subvolumes = [ "{subvolume}" ];
      snapshotDir = "{snapshots}";
      targets.usb = {{ }};
      verify.drillEvery = "1d";
      verify.scratchDir = "{data / 'scratch'}";
      # the sleep lock is btrsync's own while the job runs: a hook sees it in logind's list
      inhibitsSleep = true;
      hooks.pre = [ [ "sh" "-c" "systemd-inhibit --list --no-pager --no-legend > {data / 'hooks' / 'inhibitors'}" ] ];
      hooks.readWritePaths = [ "{data / 'hooks'}" ];
    }};
  }};
}}
""")
    farm = data / "nix"
    host = evaluate(module, wrapped_package(farm))
    assert host["assertions"] == []
    files = install(booted, host, farm)
    assert f"ExecStart={farm}/btrsync/bin/btrsync --config {CONFIG_PATH}" in files["btrsync-nixos.service"]
    # the secrets are PID 1's to read, not the service's: only LoadCredential= hands the key over
    c = booted.container
    (c.units / "btrsync-nixos.service.d").mkdir()
    c.install({"btrsync-nixos.service.d/secrets.conf": f"[Service]\nInaccessiblePaths={secrets}\n"})

    # the first run creates the repository (initialize), pushes, verifies and drills
    result = started(booted, "btrsync-nixos.service")
    assert result["rc"] == "0" and result["Result"] == "success", result["journal"]
    record = json.loads((data / "state" / "jobs" / "nixos.json").read_text())
    assert record["last_run"]["status"] == "ok", result["journal"]
    assert record["targets"]["usb"]["drill"]["ok"], (record, result["journal"])
    assert (usb / "btrsync-repo.json").exists() and (data / "metrics" / "btrsync.prom").exists()
    held = [line for line in (data / "hooks" / "inhibitors").read_text().splitlines() if "btrsync" in line]
    assert len(held) == 1 and "job nixos runs" in held[0] and "sleep" in held[0], held
    assert "sleep not inhibited" not in result["journal"]
    # the second run finds its repository and does not make another
    c.reset("btrsync-nixos.service")
    result = started(booted, "btrsync-nixos.service")
    assert result["rc"] == "0", result["journal"]
    assert "already at" in result["journal"] and "nothing to do" in result["journal"], result["journal"]
    listed = host_cli(farm / "config.toml", "list", "--from", "usb", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 2, listed.stderr


def test_a_tool_the_unit_does_not_declare_is_missing(booted: Booted) -> None:
    """The PATH of these units is what NixOS gives them: a hook calling a program no package of the
    unit, of NixOS's defaults or of btrsync's wrapper provides ('file') is not found, and the run
    fails; the same hook with the program's directory in hooks.path runs."""
    data = booted.data / "nixos-path"
    data.mkdir()
    subvolume = create_subvolume(booted.fs / "nixospath")
    snapshots = booted.fs / "nixospath.snapshots"
    snapshots.mkdir()
    marker = data / "hook"
    module = data / "host.nix"
    module.write_text(f"""
{{
  services.btrsync = {{
    enable = true;
    stateDir = "{data / 'state'}";
    monitoring.enable = false;
    jobs.nixospath = {{
      subvolumes = [ "{subvolume}" ];
      snapshotDir = "{snapshots}";
      hooks.pre = [ [ "sh" "-c" "file --version > {marker}" ] ];
      hooks.readWritePaths = [ "{data}" ];
    }};
  }};
}}
""")
    farm = data / "nix"
    host = evaluate(module, wrapped_package(farm))
    install(booted, host, farm)
    result = started(booted, "btrsync-nixospath.service")
    assert result["rc"] == "1", result["journal"]
    assert "file: not found" in result["journal"], result["journal"]
    assert not marker.exists() or marker.read_text() == ""

    # declared on the hooks' PATH (the NixOS option takes packages: here the Debian package's bin)
    module.write_text(module.read_text().replace(
        "hooks.readWritePaths", f'hooks.path = [ "{farm / "file" / "bin"}" ];\n      hooks.readWritePaths'))
    (farm / "file" / "bin").mkdir(parents=True)
    (farm / "file" / "bin" / "file").symlink_to("/usr/bin/file")
    host = evaluate(module, farm / "btrsync")
    install(booted, host, farm)
    booted.container.reset("btrsync-nixospath.service")
    result = started(booted, "btrsync-nixospath.service")
    assert result["rc"] == "0", result["journal"]
    assert marker.read_text().startswith("file-")
