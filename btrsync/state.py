"""Local state (``state_dir``, default /var/lib/btrsync): what each target held at the last push
or list, so that snapshot listing and deletion can protect the parents of the next incremental
without contacting the targets."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from btrsync.catalog.manifest import Manifest

DEFAULT_STATE_DIR = Path("/var/lib/btrsync")


class State:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _target_file(self, url: str) -> Path:
        return self.root / "targets" / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".json")

    def record_target(self, url: str, manifests: Iterable[Manifest]) -> None:
        """Remember which snapshots (by uuid) ``url`` holds, as of now."""
        doc = {
            "url": url,
            "updated": datetime.now(UTC).isoformat(),
            "held": {m.snapshot_uuid: {"id": m.backup_id, "snapshot": m.snapshot, "subvolume": m.subvolume}
                     for m in manifests},
        }
        write_json_atomic(self._target_file(url), doc)

    def targets(self) -> dict[str, dict[str, Any]]:
        """url -> {uuid: {id, snapshot, subvolume}} for every target seen from this host."""
        found: dict[str, dict[str, Any]] = {}
        directory = self.root / "targets"
        if not directory.is_dir():
            return found
        for path in sorted(directory.glob("*.json")):
            try:
                doc = json.loads(path.read_text())
                found[str(doc["url"])] = dict(doc["held"])
            except (OSError, ValueError, KeyError):
                continue
        return found


def write_json_atomic(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
