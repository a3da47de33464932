"""The effective configuration, as ``btrsync config check`` prints it: defaults filled in,
profiles resolved, secrets shown only as the paths of the files that hold them."""

from __future__ import annotations

import re
from typing import Any

from btrsync.config.model import Config
from btrsync.retention import Policy

_SECRETISH = re.compile(r"(secret|password|passphrase|token|access_key|application_key|key_id)", re.IGNORECASE)


def _policy(p: Policy | None) -> str | None:
    return p.describe() if p is not None else None


def _target_settings(settings: dict[str, Any]) -> dict[str, Any]:
    shown = {}
    for key, value in settings.items():
        if _SECRETISH.search(key) and not key.endswith(("_file", "_path")):
            shown[key] = "(a secret written inline: not shown; put it in a file and name the file)"
        else:
            shown[key] = value
    return shown


def effective(config: Config) -> dict[str, Any]:
    push = config.push
    doc: dict[str, Any] = {
        "file": str(config.path) if config.path else None,
        "key_file": str(config.key_file) if config.key_file else None,
        "state_dir": str(config.state_dir),
        "metrics_dir": str(config.jobs.metrics_dir) if config.jobs.metrics_dir else None,
        "max_parallel_jobs": config.jobs.max_parallel_jobs,
        "push": {"chunk_size": push.chunk_size, "segment_size": push.segment_size, "zstd_level": push.zstd_level,
                 "workers": push.workers, "max_chain": push.max_chain, "read_ahead": push.read_ahead,
                 "bwlimit": "unlimited" if push.bwlimit.is_unlimited else push.bwlimit.default},
        "targets": {name: _target_settings(dict(s)) for name, s in config.targets.items()},
        "retention": {
            "timezone": config.retention.timezone, "default_profile": config.retention.default_profile,
            "profiles": {name: {"snapshots": _policy(p.snapshots), "backups": _policy(p.backups),
                                "targets": {t: _policy(tp) for t, tp in p.targets.items()}}
                         for name, p in config.retention.profiles.items()},
            "subvolumes": dict(config.retention.subvolumes),
        },
        "jobs": {},
    }
    for name, job in config.jobs.jobs.items():
        body = job.model.model_dump(mode="json", exclude={"targets", "snapshots", "retention"})
        body["snapshots"] = _policy(job.snapshot_policy) or "per subvolume ([retention]), or keep all"
        body["window"] = job.window.describe()
        body["targets"] = {
            t.name: {"url": config.target(t.name)[0], "retention": _policy(t.retention) or t.retention_text,
                     "retention_from": t.retention_text,
                     "bwlimit": None if t.bwlimit is None else ("unlimited" if t.bwlimit.is_unlimited
                                                               else t.bwlimit.default),
                     "max_chain": t.max_chain if t.max_chain is not None else push.max_chain,
                     "every": t.every.text if t.every else "every run",
                     "window": t.window.describe() if t.window else "the job's",
                     "verify": t.verify.model_dump(mode="json")}
            for t in job.targets}
        doc["jobs"][name] = body
    return doc
