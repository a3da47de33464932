"""[jobs.NAME] in the configuration: the one definition of the schema.

    metrics_dir = "/var/lib/prometheus/node-exporter"   # node_exporter textfile directory ("" = off)
    max_parallel_jobs = 1                                # jobs that push at once on this host

    [jobs.home]
    subvolumes = ["/home", "/srv/data"]
    snapshot_dir = "/.snapshots"
    schedule = "hourly"                  # systemd OnCalendar of the job's timer
    window = ["Mon-Fri 22:00-06:00", "Sat-Sun 00:00-24:00"]
    retention = "standard"               # a [retention.profiles.NAME]: snapshots and targets
    targets.usb = {}
    targets.b2 = { every = "daily", bwlimit = "5M", retention = { keep_daily = 7, keep_monthly = 12 } }
    verify = { level = "data", sample = 0.05, drill_every = "30d" }
    hooks = { pre = [["/usr/local/bin/db-dump"]], on_failure = [["curl", "-fsS", "https://hc/fail"]] }

The pydantic models below validate the file (every error names the file, the job and the key),
produce the JSON schema (``btrsync config schema``, for the NixOS module's option checks) and the
reference table in docs/scheduling.md (a test keeps that table equal to ``reference_markdown()``).
``btrsync.config.jobs.parse_jobs`` then resolves what refers to the rest of the file (targets,
retention profiles) into the frozen ``Job`` values the runner uses; this module imports nothing
of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from btrsync.config import DEFAULT_METRICS_DIR
from btrsync.config.timespan import check_timespan
from btrsync.config.windows import BackupWindow, TargetEvery
from btrsync.errors import ConfigError

DEFAULT_STALE_AFTER = "26h"

Timespan = Annotated[str, AfterValidator(check_timespan)]


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):  # a newline would add lines to a unit file
        raise ValueError(f"must not contain control characters, got {value!r}")
    return value


AbsPath = Annotated[str, AfterValidator(_absolute)]


def _search_dir(value: str) -> str:
    if ":" in value:
        raise ValueError(f"a PATH directory cannot contain ':', got {value!r}")
    return value


SearchDir = Annotated[AbsPath, AfterValidator(_search_dir)]


def _argv(value: list[str]) -> list[str]:
    if not value or not value[0]:
        raise ValueError("a hook is a non-empty argv list, e.g. [\"/usr/bin/curl\", \"-fsS\", URL]")
    return value


Argv = Annotated[list[str], AfterValidator(_argv)]


def _windows(value: list[str]) -> list[str]:
    BackupWindow.parse(value)  # raises ValueError naming the bad entry
    return value


Windows = Annotated[list[str], AfterValidator(_windows)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HooksModel(_Strict):
    """Commands run around a job: argv lists, never through a shell unless the argv says so."""

    pre: list[Argv] = Field(default_factory=list, description="before the snapshot; a failure skips the job")
    post: list[Argv] = Field(default_factory=list,
                             description="after the job's work, whatever its outcome (BTRSYNC_STATUS says it)")
    on_success: list[Argv] = Field(default_factory=list, description="after post, when the job succeeded")
    on_failure: list[Argv] = Field(default_factory=list,
                                   description="after post, when the job failed or partly failed")
    timeout: Timespan = Field("5m", description="each hook is killed, with its process group, after this")
    pre_failure: Literal["skip", "continue"] = Field(
        "skip", description="a failing pre hook skips the job (exit 1 for it), or is only logged")
    max_output_lines: int = Field(200, ge=0, description="lines of a hook's output logged (the rest counted)")
    read_write_paths: list[AbsPath] = Field(
        default_factory=list, description="where the hooks write (a dump directory): writable in the job's "
                                          "systemd unit, which is read-only elsewhere (ReadWritePaths=)")
    path: list[SearchDir] = Field(
        default_factory=list, description="directories put in front of the hooks' PATH (not btrsync's own)")


def _sample(value: str | None) -> str | None:
    if value is not None:
        from btrsync.errors import UsageError
        from btrsync.verify.selection import Sample

        try:
            Sample.parse(value)
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("--sample ")) from None
    return value


class VerifyModel(_Strict):
    """What a run checks of the backups it sent (the levels of btrsync verify, docs/verify.md)."""

    level: Literal["none", "catalog", "data", "stream", "restore"] = Field(
        "catalog", description="level at which a run verifies the backups it sent")
    sample: Annotated[str | None, AfterValidator(_sample)] = Field(
        None, description="data/stream: read a random sample of their segments (10%, 2G) instead of all")
    drill_every: Timespan | None = Field(None, description="a restore drill of the newest backup of each "
                                                           "subvolume when the last one is older (30d)")
    drill_level: Literal["stream", "restore"] = Field("restore", description="level of the drill")
    scratch_dir: AbsPath = Field("/var/tmp/btrsync-drills", description="where restore drills make their "
                                                                         "scratch image")


class JobTargetModel(_Strict):
    """One target of a job: [jobs.NAME.targets.TARGET] (TARGET is a [targets.*] name or a URL)."""

    retention: str | dict[str, Any] | None = Field(
        None, description="a profile name or an inline policy {keep_daily = 7, ...}; default: the job's profile")
    bwlimit: str | None = Field(None, description="stored bytes per second (e.g. 5M); default: [push] bwlimit")
    bwlimit_schedule: list[str] | None = Field(None, description="windows over bwlimit, e.g. 'Mon-Fri 08:00-18:00 1M'")
    max_chain: int | None = Field(None, ge=0, description="incrementals before a new full; default: [push]")
    every: str | None = Field(None, description="push only when due: hourly, daily, weekly, monthly or a "
                                                "duration (6h); default: every run")
    window: Windows | None = Field(None, description="this target's own window; default: the job's")
    backfill: bool = Field(False, description="also send older snapshots retention would not keep")
    verify: VerifyModel | None = Field(None, description="this target's verification; default: the job's")
    copy_from: str | None = Field(None, min_length=1, description="copy the job's backups from this other target "
                                                                  "([targets.*] name or URL) instead of pushing")

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None:
            TargetEvery.parse(value)
        return value


class JobModel(_Strict):
    """[jobs.NAME]: subvolumes, their snapshots, targets, and when and how they run."""

    enabled: bool = Field(True, description="a disabled job is skipped by run --all and has no timer")
    subvolumes: list[AbsPath] = Field(min_length=1, description="btrfs subvolumes to snapshot and send")
    snapshot_dir: AbsPath = Field(description="directory of their read-only snapshots (same filesystem)")
    schedule: str = Field("daily", min_length=1, description="systemd OnCalendar of the job's timer")
    randomized_delay: Timespan = Field("0", description="the timer's RandomizedDelaySec")
    timezone: str | None = Field(None, description="timezone of the windows and target schedules "
                                                   "(default: host local time)")
    window: Windows = Field(default_factory=list,
                            description="when the job may run, e.g. 'Mon-Fri 22:00-06:00' (empty: any time)")
    window_end: Literal["continue", "stop"] = Field(
        "continue", description="a push running past the window's end continues, or stops at the next "
                                "segment boundary and resumes next run")
    retention: str | None = Field(None, description="retention profile ([retention.profiles.NAME]) of the "
                                                    "snapshots and of every target without its own")
    snapshots: dict[str, Any] | None = Field(None, description="inline local snapshot policy "
                                                               "{keep_hourly = 24, ...} (over the profile's)")
    targets: dict[str, JobTargetModel] = Field(default_factory=dict,
                                               description="targets of the job (none: snapshots only)")
    verify: VerifyModel = Field(default_factory=VerifyModel, description="verification policy")
    hooks: HooksModel = Field(default_factory=HooksModel, description="commands around the job")
    lock_wait: Timespan = Field("0", description="wait this long for the job's or a target's lock "
                                                 "(0: report exit 11 at once); run --wait overrides")
    stale_after: Timespan = Field(DEFAULT_STALE_AFTER, description="a target whose newest backup is older "
                                                                   "is stale (status, alerts)")
    inhibit_sleep: bool = Field(False, description="hold logind's sleep inhibitor lock while the job runs "
                                                    "(without logind: a warning, and the run goes on)")

    @field_validator("targets", mode="before")
    @classmethod
    def _target_list(cls, value: Any) -> Any:
        if isinstance(value, list):  # targets = ["usb", "b2"]: each with the job's defaults
            return {str(name): {} for name in value}
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            BackupWindow.parse([], value)
        return value


class RunSettingsModel(_Strict):
    """Top-level settings of btrsync run (beside [jobs.*])."""

    metrics_dir: str = Field(str(DEFAULT_METRICS_DIR),
                             description="node_exporter textfile directory for btrsync.prom ('' = none)")
    max_parallel_jobs: int = Field(1, ge=1, le=64, description="jobs pushing at once on this host; "
                                                              "others queue")


def run_settings(doc: Mapping[str, Any], where: str) -> RunSettingsModel:
    """The top-level run settings (metrics_dir, max_parallel_jobs), validated; ``ConfigError``."""
    try:
        return RunSettingsModel.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where, None)) from None


def job_model(name: str, body: Any, where: str) -> JobModel:
    """One [jobs.NAME] table, validated; ``ConfigError`` with a line per problem."""
    try:
        return JobModel.model_validate(body)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where, name)) from None


def _describe(exc: ValidationError, where: str, job: str | None) -> str:
    """One line per problem: 'FILE [jobs.NAME] key.path: message'."""
    lines = []
    table = f"[jobs.{job}]" if job else "(top level)"
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif err["type"] == "missing":
            msg = "required setting missing"
        lines.append(f"{where} {table} {loc or '(table)'}: {msg}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The schema as documentation and JSON schema


SCHEMA_MODELS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("top level", RunSettingsModel),
    ("[jobs.NAME]", JobModel),
    ("[jobs.NAME.targets.TARGET]", JobTargetModel),
    ("[jobs.NAME.verify]", VerifyModel),
    ("[jobs.NAME.hooks]", HooksModel),
)


def json_schema() -> dict[str, Any]:
    """The JSON schema of the run settings and [jobs.NAME] (``btrsync config schema``)."""
    schema = RunSettingsModel.model_json_schema()
    schema["properties"]["jobs"] = {"type": "object", "additionalProperties": {"$ref": "#/$defs/JobModel"},
                                    "description": "[jobs.NAME] tables"}
    job = JobModel.model_json_schema(ref_template="#/$defs/{model}")
    defs = job.pop("$defs", {})
    schema["$defs"] = {**defs, "JobModel": job}
    schema["title"] = "btrsync jobs"
    return schema


def _type_text(annotation: Any, schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " \\| ".join(f'`"{v}"`' for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_type_text(None, s) for s in schema["anyOf"] if s.get("type") != "null")
    if "$ref" in schema:
        return "table"
    kind = schema.get("type", "")
    if kind == "array":
        inner = schema.get("items", {})
        return "list of argv lists" if inner.get("type") == "array" else f"list of {_type_text(None, inner)}s"
    return {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
            "object": "table"}.get(kind, kind or "value")


def reference_markdown() -> str:
    """The configuration reference of jobs, generated from the models (docs/scheduling.md)."""
    out: list[str] = []
    for title, model in SCHEMA_MODELS:
        schema = model.model_json_schema()
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        out.append(f"#### {title}\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for key, info in model.model_fields.items():
            if info.is_required() or key in required:
                default = "required"
            elif info.default_factory is not None:
                value = info.default_factory()  # type: ignore[call-arg]
                default = "`[]`" if value == [] else "`{}`" if value == {} else "see below"
            else:
                default = "none" if info.default is None else f"`{json.dumps(info.default)}`"
            meaning = (info.description or "").replace("|", "\\|")
            out.append(f"| `{key}` | {_type_text(info.annotation, props.get(key, {}))} | {default} | {meaning} |")
        out.append("")
    return "\n".join(out)
