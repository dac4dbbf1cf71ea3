"""Parsing of replay/reset positions: every bad argument is a ConfigError naming the option."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamq.brokers.view import GroupPosition, open_view
from streamq.errors import ConfigError
from streamq.replay import parse_offsets, parse_time
from streamq.settings import load_settings


def test_offsets_for_every_partition_or_per_partition() -> None:
    assert parse_offsets("42", "--from-offset") == 42
    assert parse_offsets("0:10,3:7", "--from-offset") == {0: 10, 3: 7}


@pytest.mark.parametrize("bad", ["", "-1", "a:1", "1:", "0:1,0:2", "1;2", "0:1,"])
def test_bad_offsets_name_the_option(bad: str) -> None:
    with pytest.raises(ConfigError, match="--to-offset"):
        parse_offsets(bad, "--to-offset")


def test_times_are_iso_8601_or_epoch_ms() -> None:
    moment = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    expected = int(moment.timestamp() * 1000)
    assert parse_time("2026-11-21T10:00:00Z", "--from-time") == expected
    assert parse_time("2026-11-21T11:00:00+01:00", "--from-time") == expected
    assert parse_time(str(expected), "--from-time") == expected


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "10:00 tomorrow", ""])
def test_bad_times_name_the_option(bad: str) -> None:
    with pytest.raises(ConfigError, match="--from-time"):
        parse_time(bad, "--from-time")


def test_memory_broker_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="inside one process"):
        open_view("memory://x", load_settings())


def test_lag_is_counted_where_offsets_are_not_dense() -> None:
    assert GroupPosition(0, committed=5, end=9).lag == 4
    assert GroupPosition(0, committed=None, end=9).lag is None
    assert GroupPosition(0, committed=1 << 40, end=(1 << 41), records_behind=3).lag == 3
