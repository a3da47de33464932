"""Project-wide fixtures: real btrfs filesystems on loop devices, and a clean BTRSYNC_* environment.

Tests that use ``btrfs_fs`` or ``btrfs_factory`` should also carry ``@pytest.mark.btrfs``. Where
btrfs loop filesystems cannot be made (not root, no btrfs, no loop devices) those tests are skipped,
except under CI (env ``CI`` set), where they fail: CI has root and btrfs, so a skip there would hide
a broken environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.loopfs import (
    btrfs_unavailable_reason,
    default_pytest_root,
    detach_loops_under,
    loop_btrfs,
    remove_image_mirror,
    require_loop_btrfs,
    sweep_orphaned_pytest_loops,
)

BtrfsFactory = Callable[..., Path]


# --------------------------------------------------------------------------------------------------
# Bytecode: kept between runs, outside the tree


def _keep_bytecode() -> None:
    """With ``PYTHONDONTWRITEBYTECODE`` set, every xdist worker rewrites the asserts of and compiles
    all ~170 test modules anew (~6 s of CPU each), and every ``btrsync`` a test starts compiles the
    modules changed since their last ``.pyc``: the suite keeps its bytecode in a private cache
    outside the tree instead (``PYTHONPYCACHEPREFIX``, passed on to workers and subprocesses)."""
    if not sys.dont_write_bytecode or sys.pycache_prefix:
        return
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    prefix = os.path.join(home, "btrsync-tests", "pycache")  # the user's own: nobody else writes there
    try:
        os.makedirs(prefix, mode=0o700, exist_ok=True)
    except OSError:
        return
    sys.pycache_prefix, sys.dont_write_bytecode = prefix, False
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


_keep_bytecode()


def _default_sigint() -> None:
    """A shell starts a background job (``pytest ... &``, a CI runner's step) with SIGINT ignored,
    and every process inherits that: the tests that interrupt a btrsync with SIGINT (Ctrl-C)
    would see it ignored.  The suite runs with SIGINT's default, as a terminal gives it."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_default_sigint()


# --------------------------------------------------------------------------------------------------
# Safety net: loop devices of crashed runs never outlive the next run


def _may_manage_loops() -> bool:
    return os.geteuid() == 0 and btrfs_unavailable_reason() is None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Release loop devices that dead pytest runs left under pytest's temporary directories.

    Runs before pytest prunes old ``pytest-N`` directories, so their mounts are gone first.
    Loop devices of live concurrent runs are left alone (see ``sweep_orphaned_pytest_loops``).
    """
    if not _may_manage_loops():
        return
    sweep_orphaned_pytest_loops(default_pytest_root())
    given = session.config.option.basetemp
    if given:
        detach_loops_under([Path(given)])  # pytest is about to wipe it anyway


@pytest.fixture(scope="session", autouse=True)
def _release_session_loops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At session end, release every loop device still backed by a file in this session's temp dir."""
    yield
    if _may_manage_loops():
        detach_loops_under([tmp_path_factory.getbasetemp()])
        remove_image_mirror(tmp_path_factory.getbasetemp())


# --------------------------------------------------------------------------------------------------
# Markers given by what a test uses, and pytest-xdist groups


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per core. Most of a test's time is spent waiting (btrfs, fsync,
    subprocesses, servers, bandwidth limits), so twice the cores keeps them busy."""
    return 2 * max(1, len(os.sched_getaffinity(0)))


# modules whose throwaway servers make a test "remote" (SeaweedFS, sshd, the B2 rules proxy, moto)
_SERVER_MODULES = ("tests.support.s3server", "tests.support.sshd", "tests.support.b2proxy",
                   "tests.support.motoserver", "tests.targets.factories_")


def _names(code: object) -> set[str]:
    """The global names a function's code (nested functions included) refers to."""
    import types

    names: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        if isinstance(c, types.CodeType):
            names.update(c.co_names)
            stack.extend(c.co_consts)
    return names


def _refers_to_servers(func: object) -> bool:
    """Whether a test or fixture function refers to a server module or to something of one, by a
    global name of its module (imports inside the function count too)."""
    func = getattr(func, "__wrapped__", func)
    code = getattr(func, "__code__", None)
    module_globals = getattr(func, "__globals__", {})
    if code is None:
        return False
    for name in _names(code):
        if name.startswith(_SERVER_MODULES) or any(name == m.rsplit(".", 1)[-1] for m in _SERVER_MODULES):
            return True
        value = module_globals.get(name)
        if value is None:
            continue
        owner = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        if isinstance(owner, str) and owner.startswith(_SERVER_MODULES):
            return True
    return False


def _uses_servers(item: pytest.Item) -> bool:
    """The test function, or one of its fixtures outside the conftest files, refers to a server
    module, or the test runs the conformance suite on a remote target."""
    if _refers_to_servers(getattr(item, "function", None)):
        return True
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        for fixturedef in defs:
            module = getattr(fixturedef.func, "__module__", "") or ""
            if module.startswith("tests.") and not module.endswith("conftest") and _refers_to_servers(fixturedef.func):
                return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "target" in callspec.params:
        # the conformance suite's target factories: remote ones live in tests/targets/factories_*.py
        from tests.targets.conftest import TARGET_FACTORIES

        factory = TARGET_FACTORIES.get(callspec.params["target"])
        return factory is not None and factory.__module__.startswith(_SERVER_MODULES)
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that start servers ``remote``, and give pytest-xdist (``--dist loadgroup``) its
    groups: the tests of every module with a module-scoped fixture (one set of nix evaluations) run
    on one worker, and so do all the ``systemd`` tests: their containers run in the host's cgroup
    (``--keep-unit``), where two booted at once disturb each other's units (status 219/CGROUP)."""
    for item in items:
        if _uses_servers(item) and "remote" not in item.keywords:
            item.add_marker(pytest.mark.remote)
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if item.get_closest_marker("systemd") is not None:
            item.add_marker(pytest.mark.xdist_group("systemd-container"))
        elif any(d and d[-1].scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    _longest_first(items)
    if getattr(config.option, "loadgroup", False):  # set on xdist workers under --dist loadgroup
        _group_node_ids(items)


def _group_node_ids(items: list[pytest.Item]) -> None:
    """``NODEID@GROUP``, the node id by which xdist's scheduler keeps a group on one worker. xdist
    3.8 sets it through ``item._nodeid``, which pytest 9.2 no longer reads (a node id is now a
    ``NodeId``): without this every group was spread over all workers (each booting its own
    containers at once). An id that already ends in its group is left as it is."""
    from _pytest.nodeid import NodeId

    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if not names or not hasattr(item, "_id"):
            continue
        suffix = "@" + "_".join(names)
        if not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)


def _longest_first(items: list[pytest.Item]) -> None:
    """The slow tests first, then those with servers, then the rest, each in collection order:
    the workers end together instead of one running a 60 s test while the others idle. The tests
    of one xdist group keep their place next to each other (their module fixture is made once)."""

    def rank(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("remote") else 2

    group_rank: dict[str, int] = {}
    for item in items:
        group = item.get_closest_marker("xdist_group")
        if group is not None:
            name = str(group.args[0])
            group_rank[name] = min(group_rank.get(name, 2), rank(item))

    def key(item: pytest.Item) -> int:
        group = item.get_closest_marker("xdist_group")
        return group_rank[str(group.args[0])] if group is not None else rank(item)

    items.sort(key=key)


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def _clean_btrsync_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees BTRSYNC_* variables from the developer's or CI's environment."""
    for name in list(os.environ):
        if name.startswith("BTRSYNC_"):
            monkeypatch.delenv(name)


@pytest.fixture
def btrfs_factory(tmp_path: Path) -> Iterator[BtrfsFactory]:
    """A callable making fresh mounted btrfs filesystems, all unmounted and detached at teardown.

    ``btrfs_factory(size="512M", *, label="btrsync-test", mount_options=(), mkfs_options=())``
    returns the mount point of a new filesystem.
    """
    require_loop_btrfs()
    with ExitStack() as stack:

        def make(
            size: str = "512M",
            *,
            label: str = "btrsync-test",
            mount_options: Sequence[str] = (),
            mkfs_options: Sequence[str] = (),
        ) -> Path:
            return stack.enter_context(loop_btrfs(
                tmp_path / "loopfs", size, label,
                mount_options=mount_options, mkfs_options=mkfs_options,
            ))

        yield make


@pytest.fixture
def btrfs_fs(btrfs_factory: BtrfsFactory) -> Path:
    """The mount point of one fresh 512M btrfs filesystem on a loop device."""
    return btrfs_factory()


POOL_SIZE = "4G"  # sparse: only what the tests write takes space, and each test's area is removed


@pytest.fixture(scope="session")
def btrfs_pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """Loop btrfs filesystems shared by the tests of this session (of this xdist worker), by name.

    ``btrfs_pools("src")`` makes the filesystem on first use and returns its mount point; every
    one is unmounted and detached at session end. Tests never work in a pool's root: they take an
    area of their own with ``tests.support.loopfs.fresh_area``, removed after the test. A test that
    fills, remounts, unmounts or counts the filesystem itself uses ``btrfs_factory`` instead.
    """
    with ExitStack() as stack:
        pools: dict[str, Path] = {}

        def get(name: str) -> Path:
            require_loop_btrfs()
            if name not in pools:
                pools[name] = stack.enter_context(loop_btrfs(tmp_path_factory.mktemp("pool"), POOL_SIZE, name))
            return pools[name]

        yield get
