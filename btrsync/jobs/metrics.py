"""The Prometheus textfile: every metric btrsync exports, and the only place that names them.

After every run (and after ``push``/``prune``/``verify``/``clean``), the whole file is rendered
again from the local records (``state_dir/jobs/*.json`` and the targets' state), so concurrent
runs of different jobs never lose each other's series: the last writer writes everything.  It is
written with ``prometheus_client`` to ``metrics_dir/btrsync.prom`` atomically (a temporary file
renamed into place), under a lock.  Names follow the Prometheus conventions; the labels are
``btrsync_job`` (not ``job``, which Prometheus itself sets on every scraped series), ``target``
(the name in the job) and ``subvolume``.  docs/metrics.md is the reference.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from btrsync import __version__
from btrsync.config.model import Config
from btrsync.fdio import write_all
from btrsync.jobs.clock import Clock
from btrsync.jobs.records import JobRecords, is_later, latest_time, parse_iso
from btrsync.locking import target_lock
from btrsync.state import State, last_success

if TYPE_CHECKING:  # prometheus_client is imported only to write the file (a command without a
    # metrics directory, the default without node_exporter, never loads it: ~40 ms of start-up)
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

FILENAME = "btrsync.prom"
JOB_STATUSES = ("ok", "partial", "failed", "skipped", "locked", "terminated")
TARGET_STATUSES = ("ok", "failed", "damaged", "skipped", "stopped", "locked")

JL = ["btrsync_job"]
TL = ["btrsync_job", "target"]
SL = ["btrsync_job", "target", "subvolume"]


def _ts(text: Any) -> float | None:
    t = parse_iso(text)
    return t.timestamp() if t else None


class _Families:
    """Metric families by name, created on first use (help, type and labels in one place)."""

    SPEC: dict[str, tuple[str, str, list[str]]] = {
        # job
        "btrsync_job_enabled": ("gauge", "1 if the job is enabled in the configuration", JL),
        "btrsync_job_stale_after_seconds": ("gauge", "age after which the job's newest backup is stale", JL),
        "btrsync_job_last_run_timestamp_seconds": ("gauge", "end of the job's last run", JL),
        "btrsync_job_last_success_timestamp_seconds": ("gauge", "end of the job's last successful run", JL),
        "btrsync_job_last_run_duration_seconds": ("gauge", "duration of the job's last run", JL),
        "btrsync_job_last_run_exit_code": ("gauge", "exit status of the job's last run (0 ok, 3 partial, 1 "
                                                    "failed, 11 locked, 143 terminated)", JL),
        "btrsync_job_last_run_status": ("gauge", "1 for the status of the job's last run", JL + ["status"]),
        "btrsync_job_consecutive_failures": ("gauge", "failed or partial runs since the last success", JL),
        "btrsync_job_runs": ("counter", "runs of the job by status", JL + ["status"]),
        "btrsync_snapshots_deleted": ("counter", "local snapshots deleted by retention", JL),
        # job x target
        "btrsync_target_last_run_timestamp_seconds": ("gauge", "last run that tried this target", TL),
        "btrsync_target_last_success_timestamp_seconds": ("gauge", "last successful push to the target", TL),
        "btrsync_target_last_run_duration_seconds": ("gauge", "push, prune and verify time of the last run", TL),
        "btrsync_target_last_run_status": ("gauge", "1 for the status of the target in the last run",
                                           TL + ["status"]),
        "btrsync_target_consecutive_failures": ("gauge", "failed runs of the target since its last success", TL),
        "btrsync_target_last_run_stream_bytes": ("gauge", "send-stream bytes of the backups of the last run", TL),
        "btrsync_target_last_run_stored_bytes": ("gauge", "bytes stored by the backups of the last run", TL),
        "btrsync_target_backups": ("gauge", "backups of the subvolume on the target", SL),
        "btrsync_target_stored_bytes": ("gauge", "bytes stored for the subvolume on the target", SL),
        "btrsync_target_newest_backup_timestamp_seconds": ("gauge", "snapshot time of the newest backup", SL),
        "btrsync_target_oldest_backup_timestamp_seconds": ("gauge", "snapshot time of the oldest backup", SL),
        "btrsync_target_newest_backup_stream_bytes": ("gauge", "send-stream bytes of the newest backup", SL),
        "btrsync_target_newest_backup_stored_bytes": ("gauge", "stored bytes of the newest backup", SL),
        "btrsync_target_chain_depth": ("gauge", "incrementals between the newest backup and its full", SL),
        "btrsync_target_vanished_backups": ("gauge", "backups this host pushed that vanished from the target "
                                            "without a prune by it (a rollback?), until acknowledged", TL),
        "btrsync_retention_deleted_backups": ("counter", "backups deleted from the target by retention", TL),
        "btrsync_verify_last_run_timestamp_seconds": ("gauge", "last verification of the target", TL),
        "btrsync_verify_last_success_timestamp_seconds": ("gauge", "last verification that found no damage", TL),
        "btrsync_verify_damaged_backups": ("gauge", "backups damaged or affected at the last verification", TL),
        "btrsync_drill_last_run_timestamp_seconds": ("gauge", "last restore drill", TL),
        "btrsync_drill_last_success_timestamp_seconds": ("gauge", "last restore drill that passed", TL),
        "btrsync_drill_success": ("gauge", "1 if the last restore drill passed", TL),
        "btrsync_drill_duration_seconds": ("gauge", "duration of the last restore drill", TL),
        # target capacity (seed 7.4)
        "btrsync_target_used_bytes": ("gauge", "bytes of every backup on the target", ["target"]),
        "btrsync_target_quota_bytes": ("gauge", "the target's configured quota", ["target"]),
        "btrsync_target_free_bytes": ("gauge", "free bytes where the target can tell (directory, ssh)", ["target"]),
        # the file itself
        "btrsync_metrics_written_timestamp_seconds": ("gauge", "when this file was written", []),
        "btrsync_build_info": ("gauge", "the btrsync version that wrote this file", ["version"]),
    }

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def add(self, name: str, labels: list[str], value: float | None) -> None:
        if value is None:
            return
        kind, doc, label_names = self.SPEC[name]
        family = self.families.get(name)
        if family is None:
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = cls(name, doc, labels=label_names)
            self.families[name] = family
        family.add_metric(labels, float(value))


class RecordsCollector:
    """A ``prometheus_client`` collector (the registry asks only for ``collect``)."""

    def __init__(self, config: Config, state_dir: Path, now: float) -> None:
        self.config, self.state_dir, self.now = config, Path(state_dir), now

    def collect(self) -> Iterator[Metric]:
        f = _Families()
        records = JobRecords(self.state_dir)
        state = State(self.state_dir)
        capacity: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, job in self.config.jobs.jobs.items():
            f.add("btrsync_job_enabled", [name], 1 if job.enabled else 0)
            f.add("btrsync_job_stale_after_seconds", [name], job.stale_after.total_seconds())
            doc = records.load(name)
            _job_series(f, name, doc)
            for jt in job.targets:
                rec = doc.get("targets", {}).get(jt.name, {})
                _target_series(f, name, jt.name, rec, state)
                cap = rec.get("capacity")
                when = str((rec.get("catalog") or {}).get("time") or "")
                if cap is not None and (jt.name not in capacity or when > capacity[jt.name][0]):
                    capacity[jt.name] = (when, {**cap, "used_bytes": rec["catalog"].get("used_bytes")})
        for target, (_when, cap) in sorted(capacity.items()):
            f.add("btrsync_target_used_bytes", [target], cap.get("used_bytes"))
            f.add("btrsync_target_quota_bytes", [target], cap.get("quota_bytes"))
            f.add("btrsync_target_free_bytes", [target], cap.get("free_bytes"))
        f.add("btrsync_metrics_written_timestamp_seconds", [], self.now)
        f.add("btrsync_build_info", [__version__], 1)
        yield from f.families.values()


def _job_series(f: _Families, name: str, doc: dict[str, Any]) -> None:
    last = doc.get("last_run") or {}
    if not last:
        return
    f.add("btrsync_job_last_run_timestamp_seconds", [name], _ts(last.get("finished")))
    f.add("btrsync_job_last_success_timestamp_seconds", [name], _ts(doc.get("last_success")))
    f.add("btrsync_job_last_run_duration_seconds", [name], last.get("seconds"))
    f.add("btrsync_job_last_run_exit_code", [name], last.get("exit_code"))
    for status in JOB_STATUSES:
        f.add("btrsync_job_last_run_status", [name, status], 1 if last.get("status") == status else 0)
    f.add("btrsync_job_consecutive_failures", [name], doc.get("failures_since_success", 0))
    for status in JOB_STATUSES:
        f.add("btrsync_job_runs", [name, status], doc.get("runs_total", {}).get(status, 0))
    f.add("btrsync_snapshots_deleted", [name], doc.get("snapshots_deleted_total", 0))


def _target_series(f: _Families, job: str, target: str, rec: dict[str, Any], state: State) -> None:
    labels = [job, target]
    last = rec.get("last_run") or {}
    if last:
        f.add("btrsync_target_last_run_timestamp_seconds", labels, _ts(last.get("time")))
        f.add("btrsync_target_last_run_duration_seconds", labels, last.get("seconds"))
        for status in TARGET_STATUSES:
            f.add("btrsync_target_last_run_status", [*labels, status], 1 if last.get("status") == status else 0)
        f.add("btrsync_target_last_run_stream_bytes", labels, last.get("stream_bytes"))
        f.add("btrsync_target_last_run_stored_bytes", labels, last.get("stored_bytes"))
        f.add("btrsync_target_consecutive_failures", labels, rec.get("failures_since_success", 0))
    f.add("btrsync_target_last_success_timestamp_seconds", labels, _ts(rec.get("last_success")))
    for sub, s in sorted((rec.get("catalog") or {}).get("subvolumes", {}).items()):
        sl = [*labels, sub]
        f.add("btrsync_target_backups", sl, s.get("backups"))
        f.add("btrsync_target_stored_bytes", sl, s.get("stored_bytes"))
        f.add("btrsync_target_newest_backup_timestamp_seconds", sl, _ts(s.get("newest_time")))
        f.add("btrsync_target_oldest_backup_timestamp_seconds", sl, _ts(s.get("oldest_time")))
        f.add("btrsync_target_newest_backup_stream_bytes", sl, s.get("newest_stream_bytes"))
        f.add("btrsync_target_newest_backup_stored_bytes", sl, s.get("newest_stored_bytes"))
        f.add("btrsync_target_chain_depth", sl, s.get("chain_depth"))
    if rec.get("url"):
        known = state.target(rec["url"], strict=False)
        f.add("btrsync_target_vanished_backups", labels, len(known.vanished) if known is not None else 0)
    if last or rec.get("deleted_total"):
        f.add("btrsync_retention_deleted_backups", labels, rec.get("deleted_total", 0))
    verify, drill = _verification(rec, state)
    if verify:
        f.add("btrsync_verify_last_run_timestamp_seconds", labels, _ts(verify.get("time")))
        f.add("btrsync_verify_last_success_timestamp_seconds", labels, _ts(verify.get("last_success")))
        f.add("btrsync_verify_damaged_backups", labels, verify.get("damaged", 0))
    if drill:
        f.add("btrsync_drill_last_run_timestamp_seconds", labels, _ts(drill.get("time")))
        f.add("btrsync_drill_last_success_timestamp_seconds", labels, _ts(drill.get("last_success")))
        f.add("btrsync_drill_success", labels, 1 if drill.get("ok") else 0)
        f.add("btrsync_drill_duration_seconds", labels, drill.get("seconds"))


def _verification(rec: dict[str, Any], state: State) -> tuple[dict[str, Any], dict[str, Any]]:
    """The newest verification and drill of the target: by a run of this job, or by a manual
    ``btrsync verify`` (the target's state); each with the latest success either knows."""
    verify = dict(rec.get("verify") or {})
    drill = dict(rec.get("drill") or {})
    known = state.target(rec["url"], strict=False) if rec.get("url") else None
    v = known.verification if known is not None and known.verification else {}
    d = known.drill if known is not None and getattr(known, "drill", None) else {}
    if is_later(v.get("started"), verify.get("time")):
        verify.update(time=v.get("started"), damaged=int(v.get("damaged", 0)) + int(v.get("affected", 0)),
                      ok=v.get("ok"))
    if is_later(d.get("time"), drill.get("time")):
        drill.update(time=d.get("time"), ok=d.get("ok"), seconds=d.get("seconds"))
    # whichever ran last, a success the other knows of stays the last success
    verify["last_success"] = latest_time(rec.get("verify_last_success"), last_success(v, "started"))
    drill["last_success"] = latest_time(rec.get("drill_last_success"), last_success(d, "time"))
    return (verify if verify.get("time") else {}), (drill if drill.get("time") else {})


def render(config: Config, state_dir: Path, now: float) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecordsCollector(config, state_dir, now))
    return registry


def write_metrics(config: Config, state_dir: Path, clock: Clock) -> Path | None:
    """Rewrite ``metrics_dir/btrsync.prom``; None when metrics are off or the default directory
    (no node_exporter installed) is missing."""
    directory = config.jobs.metrics_dir
    if directory is None:
        return None
    if not directory.is_dir():
        if not config.jobs.metrics_dir_explicit:
            log.debug("no metrics: %s does not exist (set metrics_dir to write them elsewhere)", directory)
            return None
        directory.mkdir(parents=True, exist_ok=True)
    from prometheus_client import generate_latest

    path = directory / FILENAME
    with target_lock(Path(state_dir), "metrics", wait=30.0):
        _replace(path, generate_latest(render(config, state_dir, clock.now().timestamp())))
    return path


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary name node_exporter ignores (not ``*.prom``),
    already readable by node_exporter's user (a 0600 file left by a kill under UMask=0077 would
    silence every alert), synced, renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_metrics_safely(config: Config, state_dir: Path, clock: Clock) -> Path | None:
    """``write_metrics``, logging instead of failing: a metrics problem never fails a backup."""
    try:
        return write_metrics(config, state_dir, clock)
    except Exception as exc:  # noqa: BLE001 - anything at all: the backup itself must not fail here
        log.warning("could not write the metrics file in %s: %s", config.jobs.metrics_dir, exc)
        return None


def metric_names() -> Iterable[str]:
    """Every metric name as exposed (counters with ``_total``), for the docs test."""
    for name, (kind, _doc, _labels) in _Families.SPEC.items():
        yield f"{name}_total" if kind == "counter" else name
