"""Shell completion, driven as the shells drive it: click's ``_BTRSYNC_COMPLETE`` in a subprocess.

The candidates come from a real configuration and a real state directory written by real pushes
(two subvolumes to a directory target, one to another); no target is contacted while completing
(the targets are removed before completing, and the candidates are still there).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.loopfs import create_subvolume, fresh_area

BTRSYNC = str(Path(sys.executable).parent / "btrsync")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BTRSYNC, *args], capture_output=True, text=True, timeout=120, check=False, env=env)


def complete(line: str, *, shell: str = "bash", config: Path | None = None, extra_env: dict[str, str] | None = None
             ) -> list[tuple[str, str]]:
    """(type, value) candidates for the last word of ``line`` (ending in a space: a new word)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    env = {"PATH": "/usr/bin:/bin", "_BTRSYNC_COMPLETE": f"{shell}_complete", **(extra_env or {})}
    if config is not None:
        env["BTRSYNC_CONFIG"] = str(config)
    if shell == "bash":
        env |= {"COMP_WORDS": line, "COMP_CWORD": str(cword)}
        out = subprocess.run([BTRSYNC], capture_output=True, text=True, env=env, timeout=60, check=True).stdout
        return [tuple(item.split(",", 1)) for item in out.splitlines() if item]  # type: ignore[misc]
    if shell == "zsh":
        env |= {"COMP_WORDS": line, "COMP_CWORD": str(cword)}
        lines = subprocess.run([BTRSYNC], capture_output=True, text=True, env=env, timeout=60, check=True).stdout.splitlines()
        return [(lines[i], lines[i + 1]) for i in range(0, len(lines), 3)]  # type, value, help
    env |= {"COMP_WORDS": line, "COMP_CWORD": words[-1] if not line.endswith(" ") else ""}
    out = subprocess.run([BTRSYNC], capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    return [tuple(item.split(",", 1)) for item in out.splitlines() if item]  # type: ignore[misc]


def values(candidates: list[tuple[str, str]]) -> list[str]:
    return [v for t, v in candidates if t == "plain"]


class Host:
    def __init__(self, root: Path, fs: Path) -> None:
        self.root, self.fs = root, fs
        self.state = root / "state"
        self.key = root / "key"
        self.usb, self.nas = root / "usb", root / "nas"
        self.config = root / "config.toml"


@pytest.fixture(scope="module")
def host(btrfs_pools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("completion")
    with fresh_area(btrfs_pools("src"), "completion") as fs:
        h = Host(root, fs)
        assert cli("key", "generate", str(h.key)).returncode == 0
        h.usb.mkdir()
        h.nas.mkdir()
        h.config.write_text(f"""
key_file = "{h.key}"
state_dir = "{h.state}"
metrics_dir = ""
[targets.usb]
url = "file://{h.usb}"
[targets.nas-2]
url = "file://{h.nas}"
[jobs.home]
subvolumes = ["{fs}/home"]
snapshot_dir = "{fs}/snaps"
targets = ["usb"]
[jobs.db]
subvolumes = ["{fs}/db"]
snapshot_dir = "{fs}/snaps"
targets = ["nas-2"]
""")
        (fs / "snaps").mkdir()
        for sub in ("home", "db"):
            (create_subvolume(fs / sub) / "f").write_text(sub)
        conf = ["--config", str(h.config)]
        for target in ("usb", "nas-2"):
            assert cli(*conf, "init", "--to", target).returncode == 0
        for _ in range(2):
            run = cli(*conf, "run", "home")
            assert run.returncode == 0, run.stderr
        run = cli(*conf, "run", "db")
        assert run.returncode == 0, run.stderr
        yield h


def listed(h: Host, target: str) -> list[dict[str, str]]:
    import json

    proc = cli("--config", str(h.config), "list", "--from", target, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_is_click_s_for_each_shell(shell: str) -> None:
    proc = cli("completion", shell)
    assert proc.returncode == 0 and "_BTRSYNC_COMPLETE" in proc.stdout and f"{shell}_complete" in proc.stdout
    if shell == "bash" and shutil.which("bash"):  # it is valid bash
        assert subprocess.run(["bash", "-n"], input=proc.stdout, text=True, check=False).returncode == 0


def test_an_unknown_shell_is_a_usage_error() -> None:
    proc = cli("completion", "tcsh")
    assert proc.returncode == 2 and "tcsh" in proc.stderr


@pytest.mark.slow
@pytest.mark.btrfs
def test_target_and_job_names_come_from_the_configuration(host: Host) -> None:
    assert values(complete("btrsync list --from ", config=host.config)) == ["nas-2", "usb"]
    assert values(complete("btrsync list --from n", config=host.config)) == ["nas-2"]
    assert values(complete("btrsync init --to ", config=host.config)) == ["nas-2", "usb"]
    assert values(complete("btrsync run ", config=host.config)) == ["db", "home"]
    assert values(complete("btrsync run home ", config=host.config)) == ["db"]  # not twice
    assert values(complete("btrsync status h", config=host.config)) == ["home"]
    # --config before the command works as $BTRSYNC_CONFIG does
    assert values(complete(f"btrsync --config {host.config} run ")) == ["db", "home"]
    # restore --to is a directory: paths, not targets
    assert complete("btrsync restore x --from usb --to ", config=host.config) == [("file", "")]


@pytest.mark.slow
@pytest.mark.btrfs
def test_backup_ids_and_snapshot_names_come_from_the_state_of_the_from_target(host: Host, tmp_path: Path) -> None:
    usb, nas = listed(host, "usb"), listed(host, "nas-2")
    assert len(usb) == 2 and len(nas) == 1
    # the targets are gone: completion reads only this host's state
    moved = tmp_path / "gone"
    moved.mkdir()
    for d in (host.usb, host.nas):
        d.rename(moved / d.name)
    try:
        got = values(complete("btrsync restore --from usb ", config=host.config))
        usb_ids = {b["id"] for b in usb}
        usb_snaps = {b["snapshot"] for b in usb}
        assert got[:2] == ["latest", "home@latest"]
        assert set(got[2:]) == usb_ids | usb_snaps
        assert not {b["id"] for b in nas} & set(got)  # the other target's backups are not offered
        # a prefix narrows them; every command taking BACKUP(S) completes the same
        prefix = sorted(usb_snaps)[0][:-3]
        assert set(values(complete(f"btrsync ls --from usb {prefix}", config=host.config))) == {
            v for v in usb_ids | usb_snaps if v.startswith(prefix)}
        for command in ("verify", "receive", "index", "find"):
            assert set(values(complete(f"btrsync {command} --from nas-2 ", config=host.config))) >= {nas[0]["id"]}
        # --from not given yet: every target's
        every = set(values(complete("btrsync restore ", config=host.config)))
        assert usb_ids | {nas[0]["id"]} <= every and {"home@latest", "db@latest"} <= every
        # zsh and fish get the same values, with the snapshot name as help for an id
        zsh = complete("btrsync restore --from nas-2 ", shell="zsh", config=host.config)
        assert (nas[0]["id"]) in [v for _t, v in zsh]
        fish = complete("btrsync restore --from nas-2 ", shell="fish", config=host.config)
        assert any(v.startswith(nas[0]["id"]) for _t, v in fish)
    finally:
        for d in (host.usb, host.nas):
            (moved / d.name).rename(d)


def test_a_broken_configuration_or_state_completes_nothing_and_prints_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[targets.usb\nurl = ")
    state = tmp_path / "state" / "targets"
    state.mkdir(parents=True)
    (state / "0123.json").write_text("{not json")
    for line in ("btrsync list --from ", "btrsync run ", "btrsync restore "):
        got = complete(line, config=bad, extra_env={"BTRSYNC_STATE_DIR": str(tmp_path / "state")})
        assert values(got) in ([], ["latest"]), got
    assert sorted((state).iterdir()) == [state / "0123.json"]  # nothing kept aside or written
