"""progress_interval: [push] in the configuration, overridden by BTRSYNC_PROGRESS_INTERVAL."""

from __future__ import annotations

import pytest

from btrsync.config.model import ConfigError, parse_config, progress_interval


def test_progress_interval_from_config_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config({"push": {"progress_interval": 5}})
    assert progress_interval(config) == 5.0
    assert progress_interval(parse_config({})) == 30.0
    monkeypatch.setenv("BTRSYNC_PROGRESS_INTERVAL", "0")
    assert progress_interval(config) == 0.0
    monkeypatch.setenv("BTRSYNC_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ConfigError):
        progress_interval(config)
    with pytest.raises(ConfigError):
        parse_config({"push": {"progress_interval": -1}})
