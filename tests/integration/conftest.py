"""A small world for end-to-end tests: a source btrfs with a subvolume and snapshot dir, a
directory target, a key, a restore btrfs; commands run through the real CLI entry point."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from btrsync.cli.main import main
from btrsync.config.model import load_config
from btrsync.targets.registry import open_target
from btrsync.crypto.keys import generate_key_file
from tests.support.loopfs import create_subvolume, fresh_area

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)

CONFIG = """
[push]
chunk_size = "64k"
segment_size = "256k"
zstd_level = 3
workers = 2
"""


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class World:
    src: Path
    restore: Path
    target_dir: Path
    key: Path
    config: Path
    state: Path
    capsys: pytest.CaptureFixture[str]
    generation: int = 0
    snapshots: list[Path] = field(default_factory=list)
    target_name: str | None = None  # a configured target; otherwise the directory target

    @property
    def subvol(self) -> Path:
        return self.src / "data"

    @property
    def snapdir(self) -> Path:
        return self.src / ".snapshots"

    @property
    def url(self) -> str:
        return self.target_name or f"file://{self.target_dir}"

    def cli(self, *args: str, key: Path | None = None) -> Run:
        self.capsys.readouterr()
        argv = ["--config", str(self.config), "--state-dir", str(self.state),
                "--key-file", str(key or self.key), *args]
        code = main(argv)
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)

    def set_push(self, **values: str) -> None:
        """Override [push] settings of the world's configuration (e.g. ``segment_size="4M"``: a
        remote store answers each object in milliseconds, so tests of what happens to objects keep
        backups at a few of them)."""
        text = self.config.read_text()
        for key, value in values.items():
            text, found = re.subn(rf"(?m)^{key} = .*$", f"{key} = {json.dumps(value)}", text)
            assert found == 1, f"no {key} in [push]"
        self.config.write_text(text)

    def init(self) -> Run:
        """``btrsync init`` of the world's target (the only way a repository comes to exist)."""
        run = self.cli("init", "--to", self.url)
        assert run.code == 0, run.err
        return run

    def snapshot(self) -> Path:
        when = T0 + timedelta(hours=len(self.snapshots))
        run = self.cli("snapshot", "create", str(self.subvol), "--snapshot-dir", str(self.snapdir),
                       "--timestamp", when.isoformat())
        assert run.code == 0, run.err
        path = Path(run.out.strip())
        self.snapshots.append(path)
        return path

    def push(self, *extra: str) -> Run:
        return self.cli("push", str(self.subvol), "--snapshot-dir", str(self.snapdir), "--to", self.url, *extra)

    def receive(self, backup: str, into: Path | None = None, **kw: Any) -> Run:
        return self.cli("receive", backup, "--from", self.url, "--into", str(into or self.restore), **kw)

    def listing(self) -> list[dict[str, Any]]:
        run = self.cli("list", "--from", self.url, "--json")
        assert run.code == 0, run.err
        return run.json()

    def data_files(self) -> list[str]:
        """Object keys on the target (files, for the directory target, temporaries included)."""
        with self.lister() as keys:
            return keys()

    @contextmanager
    def lister(self) -> Iterator[Callable[[], list[str]]]:
        """``data_files`` for polling: a remote target is opened once (an S3 client costs more
        CPU to make than a listing)."""
        if self.target_name is None:
            yield lambda: sorted(str(p.relative_to(self.target_dir)) for p in self.target_dir.rglob("*")
                                 if p.is_file())
            return
        url, settings = load_config(self.config, explicit=True).target(self.target_name)
        with open_target(url, settings) as target:
            yield lambda: [o.key for o in target.list()]


def toml_table(name: str, values: dict[str, Any]) -> str:
    """A ``[targets.NAME]`` table for simple values (strings, ints, bools, lists of strings)."""
    lines = [f"[targets.{name}]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def add_target(world: World, name: str, url: str, settings: dict[str, Any], **push: str) -> None:
    """Point the world at a configured remote target: commands then use ``--to/--from NAME``.
    ``push`` overrides [push] settings (e.g. ``segment_size="12M"``)."""
    world.set_push(**push)
    world.config.write_text(world.config.read_text() + "\n" + toml_table(name, {"url": url, **settings}))
    world.target_name = name
    world.init()


@pytest.fixture
def world(btrfs_pools, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[World]:
    """The world of one test. Its source and restore places are fresh subvolumes (each is a
    filesystem root's equal: a directory of its own device number, inode 256) in the two btrfs
    filesystems this session's tests share, one for sources and one for restores, so that a receive
    never finds a source snapshot as its parent; both are removed with all they hold after the test.
    """
    with (fresh_area(btrfs_pools("src"), "src") as src,
          fresh_area(btrfs_pools("restore"), "restore") as restore):
        yield _make_world(src, restore, tmp_path, capsys)


def _make_world(src: Path, restore: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> World:
    create_subvolume(src / "data")
    (src / ".snapshots").mkdir()
    target_dir = tmp_path / "target"
    target_dir.mkdir()
    key = tmp_path / "key"
    generate_key_file(key)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    os.environ.pop("BTRSYNC_KEY_FILE", None)
    world = World(src, restore, target_dir, key, config, tmp_path / "state", capsys)
    world.init()
    return world
