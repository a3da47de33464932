"""The man pages (man/) and completion scripts (completions/) are generated from the click CLI and
kept current (scripts/cli-files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_cli import _leaf_commands

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cli-files"


def cli_files(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_committed_pages_and_completion_scripts_are_current() -> None:
    proc = cli_files("--check")
    assert proc.returncode == 0, proc.stderr


def test_every_command_has_a_page_with_its_help_options_and_exit_status() -> None:
    for command in _leaf_commands():
        page = (ROOT / "man" / ("btrsync-" + "-".join(command) + ".1")).read_text()
        assert f".B btrsync {' '.join(command)}\n" in page
        assert ".SH OPTIONS" in page and "\\fB\\-\\-key\\-file PATH\\fR" in page
        assert ".SH EXIT STATUS" in page and "12 wrong key" in page
        assert "\b" not in page  # click's verbatim marker is rendered, not copied
    restore = (ROOT / "man" / "btrsync-restore.1").read_text()
    assert ".nf\nExamples:\n  btrsync restore data@latest --from file:///mnt/usb/backups" in restore
    top = (ROOT / "man" / "btrsync.1").read_text()
    assert "\\fBrestore\\fR" in top and "\\fBbtrsync\\-restore\\fR(1)" in top


def test_a_changed_help_text_makes_the_check_fail_and_regenerating_fixes_it(tmp_path: Path) -> None:
    man = tmp_path / "man"
    shutil.copytree(ROOT / "man", man)
    shutil.copytree(ROOT / "completions", tmp_path / "completions")
    committed = (ROOT / "man" / "btrsync-restore.1").read_text()
    page = man / "btrsync-restore.1"
    page.write_text(committed.replace("onto any filesystem", "onto some filesystems"))
    (man / "btrsync-gone.1").write_text(".TH x\n")  # a removed command's page
    (man / "btrsync-status.1").unlink()  # a new command's page missing
    (tmp_path / "completions" / "btrsync.fish").write_text("old\n")
    proc = cli_files("--check", "--dir", str(tmp_path))
    assert proc.returncode == 1
    assert "man/btrsync-gone.1, man/btrsync-restore.1, man/btrsync-status.1, completions/btrsync.fish" in proc.stderr
    assert cli_files("--dir", str(tmp_path)).returncode == 0
    assert cli_files("--check", "--dir", str(tmp_path)).returncode == 0
    assert not (man / "btrsync-gone.1").exists()
    assert (tmp_path / "completions" / "btrsync.fish").read_text() == (ROOT / "completions" / "btrsync.fish").read_text()
    # the changed page was written again, dated today; the unchanged ones kept their date
    date = page.read_text().split('"')[5]
    assert page.read_text() == committed.replace(committed.split('"')[5], date, 1)
    assert (man / "btrsync-list.1").read_text() == (ROOT / "man" / "btrsync-list.1").read_text()


def test_the_completion_scripts_are_what_btrsync_completion_prints() -> None:
    for shell, file in (("bash", "btrsync.bash"), ("zsh", "_btrsync"), ("fish", "btrsync.fish")):
        out = subprocess.run([str(Path(sys.executable).parent / "btrsync"), "completion", shell], capture_output=True,
                             text=True, check=True, timeout=60).stdout
        assert out == (ROOT / "completions" / file).read_text()


def test_the_pages_render_without_warnings() -> None:
    if shutil.which("man") is None or shutil.which("groff") is None:
        reason = "man or groff is not installed (Debian packages man-db, groff-base; scripts/bootstrap installs them)"
        if os.environ.get("CI"):
            pytest.fail(f"CI renders the man pages, but: {reason}")
        pytest.skip(reason)
    for page in sorted((ROOT / "man").glob("*.1")):
        proc = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                              env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}, timeout=60,
                              check=False)
        assert proc.returncode == 0 and proc.stderr == "", (page.name, proc.stderr)
        assert "EXIT STATUS" in proc.stdout
