"""Evaluate Nix offline for the tests: find nixpkgs' lib, run nix-instantiate in a throwaway state
directory, render NixOS-style unit definitions to unit files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# read at import: tests/conftest.py hides BTRSYNC_* variables from each test
LIB_ENV = os.environ.get("BTRSYNC_NIXPKGS_LIB")


def _need(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI: the NixOS module tests must not skip; scripts/bootstrap installs nix-bin)")
    pytest.skip(reason)


def nix_instantiate() -> str:
    tool = shutil.which("nix-instantiate")
    if tool is None:
        _need("nix-instantiate is missing (Debian package nix-bin)")
    return tool  # type: ignore[return-value]


def run_nix(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="nix-state-") as state:
        env = {**os.environ, "NIX_STATE_DIR": state}
        proc = subprocess.run([nix_instantiate(), *args], capture_output=True, text=True, env=env, timeout=120,
                              cwd=ROOT, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"nix-instantiate {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def find_lib() -> str:
    """The nix expression of nixpkgs' lib: $BTRSYNC_NIXPKGS_LIB, <nixpkgs/lib>, ../shared/nixpkgs-lib/lib."""
    env = LIB_ENV
    if env:
        if not (Path(env) / "default.nix").exists():
            _need(f"$BTRSYNC_NIXPKGS_LIB={env} is not nixpkgs' lib (no default.nix)")
        return f"import {Path(env).resolve()}"
    if run_nix(["--eval", "-E", "<nixpkgs/lib>"], check=False).returncode == 0:
        return "import <nixpkgs/lib>"
    shared = (ROOT.parent / "shared" / "nixpkgs-lib" / "lib").resolve()
    if (shared / "default.nix").exists():
        return f"import {shared}"
    _need(f"no nixpkgs lib: $BTRSYNC_NIXPKGS_LIB is unset, <nixpkgs/lib> is not on NIX_PATH and {shared} is missing")
    raise AssertionError("unreachable")


def btrsync_prefix() -> str:
    """The prefix of the installed btrsync (its bin/btrsync is what the rendered units run)."""
    import sys

    return str(Path(sys.executable).parent.parent)


def evaluate(lib: str, modules: list[str]) -> dict[str, Any]:
    """tests/nix/eval.nix for these modules (Nix expressions): settings, units, failed assertions."""
    out = run_nix(["--eval", "--strict", "--json", str(HERE / "eval.nix"), "--arg", "lib", lib,
                   "--argstr", "btrsyncPrefix", btrsync_prefix(), "--arg", "modules", f"[ {' '.join(modules)} ]"])
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# -- NixOS unit definitions -> unit files (what nixpkgs' systemd-lib does with them) ---------------

def _value(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _section(name: str, entries: dict[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    for key, value in entries.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"{key}={_value(v)}")
    return lines


def render_service(unit: dict[str, Any]) -> str:
    head: dict[str, Any] = {"Description": unit["description"]}
    for option, key in (("wants", "Wants"), ("after", "After"), ("onFailure", "OnFailure")):
        if unit.get(option):
            head[key] = " ".join(unit[option])
    head.update(unit.get("unitConfig", {}))
    return "\n".join(_section("Unit", head) + [""] + _section("Service", unit["serviceConfig"])) + "\n"


def render_timer(timer: dict[str, Any]) -> str:
    lines = _section("Unit", {"Description": timer["description"]}) + [""] + _section("Timer", timer["timerConfig"])
    if timer.get("wantedBy"):
        lines += ["", "[Install]", "WantedBy=" + " ".join(timer["wantedBy"])]
    return "\n".join(lines) + "\n"


def unit_files(result: dict[str, Any]) -> dict[str, str]:
    files = {f"{name}.service": render_service(u) for name, u in result["services"].items()}
    files.update({f"{name}.timer": render_timer(t) for name, t in result["timers"].items()})
    return files


def directives(text: str) -> dict[str, list[str]]:
    """A unit file as {"Section.Key": [values]} (comments dropped)."""
    section = ""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


PACKAGE_TOOLS = """
{ lib }:
let
  py = { buildPythonApplication = a: a; } // lib.genAttrs [ "boto3" "zstandard" "cryptography" "xxhash" "click"
    "psutil" "pydantic" "prometheus-client" "setuptools" "wheel" "pytestCheckHook" "hypothesis" "pytest-timeout" ] (n: n);
  args = builtins.functionArgs (import ROOT/nix/package.nix);
  tools = lib.filterAttrs (n: _: !(builtins.elem n [ "lib" "python3Packages" ])) args;
  p = import ROOT/nix/package.nix ({ inherit lib; python3Packages = py; }
        // lib.mapAttrs (n: _: { name = n; outPath = "/nix/store/00000000000000000000000000000000-${n}"; }) tools);
in p.makeWrapperArgs
"""


def wrapped_tools() -> list[str]:
    """The packages nix/package.nix puts on the wrapped btrsync's PATH (nixpkgs attribute names)."""
    with tempfile.TemporaryDirectory() as tmp:
        expr = Path(tmp) / "tools.nix"
        expr.write_text(PACKAGE_TOOLS.replace("ROOT/", f"{ROOT}/"))
        args = json.loads(run_nix(["--eval", "--strict", "--json", str(expr), "--arg", "lib", find_lib()]).stdout)
    path = args[args.index("PATH") + 2]
    return [entry.split("-", 1)[1].removesuffix("/bin") for entry in path.split(":")]
