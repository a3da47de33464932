"""Retention profiles in the configuration: per kind of data, for local snapshots and per target.

    [retention]
    timezone = "Europe/Berlin"        # the calendar of every policy below (default UTC)
    default_profile = "standard"      # for subvolumes not listed in [retention.subvolumes]

    [retention.profiles.standard]
    snapshots = { keep_hourly = 24, keep_daily = 7 }                  # local snapshots
    backups = { keep_daily = 14, keep_weekly = 8, keep_monthly = 12 }  # every target …
    targets.b2 = { keep_monthly = 36, keep_yearly = 5 }               # … unless overridden

    [retention.subvolumes]
    postgres = "databases"            # subvolume name (the snapshot prefix) -> profile
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from btrsync.errors import ConfigError
from btrsync.retention import Policy

_RETENTION_KEYS = {"timezone", "default_profile", "profiles", "subvolumes"}
_PROFILE_KEYS = {"snapshots", "backups", "targets"}


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    snapshots: Policy | None = None
    backups: Policy | None = None
    targets: dict[str, Policy] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    timezone: str = "UTC"
    default_profile: str | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)
    subvolumes: dict[str, str] = field(default_factory=dict)

    def profile_for(self, subvolume: str) -> Profile | None:
        name = self.subvolumes.get(subvolume, self.default_profile)
        return self.profiles.get(name) if name else None

    def snapshot_policy(self, subvolume: str) -> Policy | None:
        profile = self.profile_for(subvolume)
        return profile.snapshots if profile else None

    def backup_policy(self, subvolume: str, target_names: tuple[str, ...]) -> Policy | None:
        """The target's override if the profile has one (by configured name or URL)."""
        profile = self.profile_for(subvolume)
        if profile is None:
            return None
        for name in target_names:
            if name in profile.targets:
                return profile.targets[name]
        return profile.backups


def policy_from(settings: Mapping[str, Any], timezone: str, where: str) -> Policy:
    try:
        return Policy.from_mapping({"timezone": timezone, **settings})
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_retention(doc: Any, where: str) -> RetentionConfig:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} [retention] must be a table")
    _reject(doc, _RETENTION_KEYS, f"{where} [retention]")
    tz = str(doc.get("timezone", "UTC"))
    profiles = {name: _profile(name, body, tz, where) for name, body in doc.get("profiles", {}).items()}
    subvolumes = {str(k): str(v) for k, v in doc.get("subvolumes", {}).items()}
    default = doc.get("default_profile")
    for name in [*subvolumes.values(), *([default] if default else [])]:
        if name not in profiles:
            raise ConfigError(f"{where} [retention]: no profile named {name!r} "
                              f"(defined: {', '.join(sorted(profiles)) or 'none'})")
    return RetentionConfig(tz, default, profiles, subvolumes)


def _profile(name: str, body: Any, tz: str, where: str) -> Profile:
    here = f"{where} [retention.profiles.{name}]"
    if not isinstance(body, dict):
        raise ConfigError(f"{here} must be a table")
    _reject(body, _PROFILE_KEYS, here)
    snaps = policy_from(body["snapshots"], tz, f"{here} snapshots") if "snapshots" in body else None
    backups = policy_from(body["backups"], tz, f"{here} backups") if "backups" in body else None
    targets = {t: policy_from(p, tz, f"{here} targets.{t}") for t, p in body.get("targets", {}).items()}
    return Profile(name, snaps, backups, targets)


def _reject(doc: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
