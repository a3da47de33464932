"""[push] read_ahead: from the configuration into the push's settings, refused when out of range."""

from __future__ import annotations

import pytest

from btrsync.config.model import ConfigError, parse_config
from btrsync.ops.push.settings import settings_from


def test_read_ahead_from_config_into_the_push() -> None:
    assert settings_from(parse_config({}).push).read_ahead == 64 << 20
    assert settings_from(parse_config({"push": {"read_ahead": "16M"}}).push).read_ahead == 16 << 20
    assert settings_from(parse_config({"push": {"read_ahead": "0"}}).push).read_ahead == 0


@pytest.mark.parametrize("value", ["8G", "-1M", "lots", "1M"])  # 1M: below chunk_size
def test_read_ahead_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="read_ahead"):
        parse_config({"push": {"read_ahead": value}})
