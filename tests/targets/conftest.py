"""Target factories for the shared conformance suite: adding a target means adding a factory."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from btrsync.targets.base import Target
from btrsync.targets.local import LocalTarget
from btrsync.targets.memory import MemoryTarget
from tests.support.faultfs import FaultFS, mounted_for_test


def make_memory(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    return MemoryTarget()


def make_local(tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    root = tmp_path / "target"
    root.mkdir()
    return LocalTarget(root)


TARGET_FACTORIES: dict[str, Callable[[Path, pytest.FixtureRequest], Target]] = {
    "memory": make_memory,
    "local": make_local,
}

# Each remote target contributes its factories from its own module, tests/targets/factories_<name>.py,
# exporting FACTORIES: dict[str, factory]; a factory may use session fixtures via request.getfixturevalue.
for _module in sorted(Path(__file__).parent.glob("factories_*.py")):
    _mod = importlib.import_module(f"tests.targets.{_module.stem}")
    TARGET_FACTORIES.update(_mod.FACTORIES)


@pytest.fixture(params=sorted(TARGET_FACTORIES))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    t = TARGET_FACTORIES[request.param](tmp_path, request)
    try:
        yield t
    finally:
        t.close()


def files_below(root: Path) -> list[str]:
    """Every file below ``root`` (relative), symlinks included, never followed."""
    found = []
    for dirpath, _dirs, names in os.walk(root):
        found += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
    return sorted(found)


@pytest.fixture
def faultfs(tmp_path: Path) -> Iterator[FaultFS]:
    """A fault-injecting FUSE mirror of ``tmp_path/backing`` at ``tmp_path/mnt``."""
    with mounted_for_test(tmp_path) as fs:
        yield fs
