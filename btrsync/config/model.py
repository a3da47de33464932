"""The configuration file (default /etc/btrsync/config.toml, env BTRSYNC_CONFIG).

    key_file  = "/run/credentials/btrsync.service/key"   # never the key itself
    state_dir = "/var/lib/btrsync"

    [push]
    chunk_size = "4M"      # raw send-stream bytes per chunk
    segment_size = "128M"  # stored bytes per segment object
    zstd_level = 3         # 0 disables compression
    workers = 2            # compression/encryption threads
    max_chain = 30         # incrementals before a new full
    bwlimit = "25M"        # stored bytes per second, optional ("unlimited" by default)
    bwlimit_schedule = ["Mon-Fri 08:00-18:00 5M"]   # windows over bwlimit, host local time
    bwlimit_timezone = "Europe/Berlin"              # optional: the windows' timezone
    progress_interval = 30  # seconds between progress lines when stderr is not a terminal (0: none);
                            # push and receive; env BTRSYNC_PROGRESS_INTERVAL overrides it

    [targets.usb]
    url = "file:///mnt/usb/backups"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from btrsync.config.jobs import JobsConfig, parse_jobs
from btrsync.config.retention import RetentionConfig, parse_retention
from btrsync.errors import ConfigError
from btrsync.pipeline.schedule import RateSchedule
from btrsync.planner.plan import DEFAULT_MAX_CHAIN
from btrsync.state import DEFAULT_STATE_DIR
from btrsync.targets.settings import unknown_settings
from btrsync.units import parse_size

DEFAULT_CONFIG = Path("/etc/btrsync/config.toml")
_TOP_KEYS = {"key_file", "state_dir", "push", "targets", "retention", "jobs", "metrics_dir", "max_parallel_jobs"}
_PUSH_KEYS = {"chunk_size", "segment_size", "zstd_level", "workers", "max_chain", "bwlimit",
              "bwlimit_schedule", "bwlimit_timezone", "progress_interval", "verify_after_push", "chain",
              "full_threshold", "read_ahead"}
CHAINS = ("tree", "linear")
DEFAULT_PROGRESS_INTERVAL = 30.0
PROGRESS_INTERVAL_ENV = "BTRSYNC_PROGRESS_INTERVAL"


@dataclass(frozen=True, slots=True)
class PushDefaults:
    chunk_size: int = 4 << 20
    segment_size: int = 128 << 20
    zstd_level: int = 3
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    max_chain: int = DEFAULT_MAX_CHAIN
    bwlimit: RateSchedule = field(default_factory=lambda: RateSchedule(None))
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL  # seconds between lines when not on a terminal
    verify_after_push: str = "none"  # none | catalog | data: re-read what a push just wrote
    chain: str = "tree"  # tree: parents by the retention policy (docs/retention.md); linear
    full_threshold: float = 0.5  # tree: a full when the best delta is more than this share of one
    read_ahead: int = 64 << 20  # bytes of the snapshot read ahead of btrfs send (ops/push/readahead.py); 0: off


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None = None
    key_file: Path | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    push: PushDefaults = field(default_factory=PushDefaults)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)  # [jobs.*], metrics_dir, max_parallel_jobs

    def target_names(self, url: str) -> tuple[str, ...]:
        """The configured names of a target URL, and the URL itself (for per-target settings)."""
        return (*(n for n, s in self.targets.items() if s.get("url") == url), url)

    def target(self, url_or_name: str) -> tuple[str, dict[str, Any]]:
        """A ``--to``/``--from`` value, a URL or a target name, -> (url, settings)."""
        if url_or_name in self.targets:
            settings = self.targets[url_or_name]
            return str(settings["url"]), settings
        for settings in self.targets.values():
            if settings.get("url") == url_or_name:
                return url_or_name, settings
        if "://" not in url_or_name:
            raise ConfigError(f"no target named {url_or_name!r} in the configuration and not a URL")
        return url_or_name, {}


def load_config(path: Path | None, *, explicit: bool) -> Config:
    """Read ``path``; a missing default file means defaults, a missing explicit file is an error."""
    if path is None or not path.exists():
        if explicit and path is not None:
            raise ConfigError(f"configuration file {path} does not exist")
        return Config()
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(doc, path)


def parse_config(doc: dict[str, Any], path: Path | None = None) -> Config:
    where = str(path or "configuration")
    _reject_unknown(doc, _TOP_KEYS, where)
    push_doc = doc.get("push", {})
    _reject_unknown(push_doc, _PUSH_KEYS, f"{where} [push]")
    try:
        push = PushDefaults(
            chunk_size=_size(push_doc, "chunk_size", "4M"),
            segment_size=_size(push_doc, "segment_size", "128M"),
            zstd_level=int(push_doc.get("zstd_level", 3)),
            workers=int(push_doc.get("workers", PushDefaults().workers)),
            max_chain=int(push_doc.get("max_chain", DEFAULT_MAX_CHAIN)),
            bwlimit=RateSchedule.parse(push_doc.get("bwlimit"), list(push_doc.get("bwlimit_schedule", [])),
                                       push_doc.get("bwlimit_timezone")),
            progress_interval=float(push_doc.get("progress_interval", DEFAULT_PROGRESS_INTERVAL)),
            verify_after_push=str(push_doc.get("verify_after_push", "none")),
            chain=str(push_doc.get("chain", "tree")),
            full_threshold=float(push_doc.get("full_threshold", 0.5)),
            read_ahead=_size(push_doc, "read_ahead", "64M"),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{where} [push]: {exc}") from None
    _check_push(push, where)
    targets = doc.get("targets", {})
    for name, settings in targets.items():
        if not isinstance(settings, dict) or "url" not in settings:
            raise ConfigError(f"{where} [targets.{name}] needs a url")
        unknown = unknown_settings(str(settings["url"]), settings)
        if unknown:
            raise ConfigError("\n".join(f"{where} [targets.{name}] {line}" for line in unknown))
        if not isinstance(settings.get("initialize", False), bool):
            raise ConfigError(f"{where} [targets.{name}] initialize must be true or false")
        try:
            chain_settings(settings, None)
        except ValueError as exc:
            raise ConfigError(f"{where} [targets.{name}] {exc}") from None
    retention = parse_retention(doc.get("retention", {}), where)
    return Config(
        path=path,
        key_file=Path(doc["key_file"]) if doc.get("key_file") else None,
        state_dir=Path(doc.get("state_dir", DEFAULT_STATE_DIR)),
        push=push,
        targets=targets,
        retention=retention,
        jobs=_jobs(doc, where, targets, retention),
    )


def _jobs(doc: dict[str, Any], where: str, targets: dict[str, Any], retention: RetentionConfig) -> JobsConfig:
    """[jobs.*] and the run settings, validated; the validator (pydantic) loads only for a file
    that has any: most commands never need it."""
    if not any(key in doc for key in ("jobs", "metrics_dir", "max_parallel_jobs")):
        return JobsConfig()
    return parse_jobs(doc, where, targets, retention)


def _size(doc: dict[str, Any], key: str, default: str) -> int:
    try:
        return parse_size(doc.get(key, default))
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _reject_unknown(doc: Any, allowed: set[str], where: str) -> None:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(allowed))})")


def _check_push(push: PushDefaults, where: str) -> None:
    if not 64 * 1024 <= push.chunk_size <= 64 << 20:
        raise ConfigError(f"{where} [push] chunk_size must be between 64k and 64M")
    if push.segment_size < push.chunk_size:
        raise ConfigError(f"{where} [push] segment_size must be at least chunk_size")
    if not 0 <= push.zstd_level <= 22:
        raise ConfigError(f"{where} [push] zstd_level must be 0 (off) to 22")
    if push.read_ahead and not push.chunk_size <= push.read_ahead <= 4 << 30:
        raise ConfigError(f"{where} [push] read_ahead must be 0 (off) or from chunk_size to 4G")
    if not 1 <= push.workers <= 64:
        raise ConfigError(f"{where} [push] workers must be 1 to 64")
    if push.verify_after_push not in ("none", "catalog", "data"):
        raise ConfigError(f"{where} [push] verify_after_push must be none, catalog or data")
    if push.max_chain < 0:
        raise ConfigError(f"{where} [push] max_chain must be 0 or more")
    try:
        chain_settings({"chain": push.chain, "full_threshold": push.full_threshold}, None)
    except ValueError as exc:
        raise ConfigError(f"{where} [push] {exc}") from None
    if not 0 <= push.progress_interval <= 86400:
        raise ConfigError(f"{where} [push] progress_interval must be 0 (no progress lines) to 86400 seconds")


def chain_settings(settings: dict[str, Any], defaults: PushDefaults | None) -> tuple[str, float]:
    """``chain`` and ``full_threshold`` of a target's settings over the [push] ``defaults``;
    raises ValueError naming a bad one."""
    base = defaults or PushDefaults()
    chain = settings.get("chain", base.chain)
    if chain not in CHAINS:
        raise ValueError(f"chain must be {' or '.join(map(repr, CHAINS))}, not {chain!r}")
    threshold = settings.get("full_threshold", base.full_threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise ValueError(f"full_threshold must be a share above 0 and at most 1 (e.g. 0.5), not {threshold!r}")
    return str(chain), float(threshold)


def progress_interval(config: Config) -> float:
    """Seconds between progress lines when stderr is not a terminal: env BTRSYNC_PROGRESS_INTERVAL,
    else ``[push] progress_interval`` (push and receive), else 30; 0 means none."""
    text = os.environ.get(PROGRESS_INTERVAL_ENV)
    if text is None or not text.strip():
        return config.push.progress_interval
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{PROGRESS_INTERVAL_ENV}={text!r} is not a number of seconds") from None
    if not 0 <= value <= 86400:
        raise ConfigError(f"{PROGRESS_INTERVAL_ENV} must be 0 (no progress lines) to 86400 seconds")
    return value
