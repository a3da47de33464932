"""The mount's root directory (``mount/namespace.py``) carries a real date."""

from __future__ import annotations

import time
from types import SimpleNamespace

from btrsync.mount.namespace import Namespace


def test_the_root_of_an_empty_repository_is_dated_by_the_mount_not_1970() -> None:
    repo = SimpleNamespace(target=SimpleNamespace(display_url="file:///mnt/usb"))
    catalog = SimpleNamespace(damaged=[], broken={}, manifests=[])
    before = time.time()
    ns = Namespace(repo, catalog, load_tree=lambda *a: None)  # type: ignore[arg-type]
    mtime = ns.root.inode.mtime_ns / 1e9
    assert before - 1 <= mtime <= time.time() + 1
