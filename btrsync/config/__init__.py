"""Configuration: TOML file -> frozen dataclasses; validation only, no side effects."""

from pathlib import Path

#: node_exporter's textfile directory: the default ``metrics_dir`` of the jobs (``config.jobs``)
#: and of their schema (``config.schema``), which imports nothing of ``config.jobs``
DEFAULT_METRICS_DIR = Path("/var/lib/prometheus/node-exporter")
