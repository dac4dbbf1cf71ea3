"""Parsing of replay/reset positions: every bad argument is a ConfigError naming the option."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamq.brokers.redis.entries import id_to_offset, offset_from_text, offset_to_id
from streamq.brokers.redis.view import RedisView
from streamq.brokers.view import GroupPosition, LogView, open_view
from streamq.errors import ConfigError
from streamq.replay import parse_offsets, parse_time, plan, positions_from
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


# -- offsets in the broker's own form: Redis entry IDs, Kafka integers --------------------------

ID_A, ID_B = "1764590000000-3", "1764590000001-0"


class _View(LogView):
    """A log of the given bounds; offsets shown and read by the LogView defaults (Kafka's
    form, which KafkaView inherits)."""

    def __init__(self, bounds: dict[int, tuple[int, int]]) -> None:
        self._bounds = bounds

    def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        return self._bounds

    def count(self, topic: str, partition: int, start: int, end: int) -> int:
        return max(0, end - start)  # dense enough for planning


class _RedisLikeView(_View):
    """The same log with RedisView's own offset methods (they need no connection)."""

    offset_text = RedisView.offset_text
    offset_from_text = RedisView.offset_from_text


def test_redis_takes_the_entry_ids_it_prints_and_its_integers() -> None:
    a, b = id_to_offset(ID_A), id_to_offset(ID_B)
    assert parse_offsets(ID_A, "--from-offset", offset_from_text) == a
    assert parse_offsets(f"0:{ID_A},1:{ID_B}", "--from-offset", offset_from_text) == {0: a, 1: b}
    assert parse_offsets(f"0:{a},1:{ID_B}", "--from-offset", offset_from_text) == {0: a, 1: b}
    back = parse_offsets(ID_A, "--to-offset", offset_from_text)
    assert isinstance(back, int) and offset_to_id(back) == ID_A


@pytest.mark.parametrize(
    "bad",
    ["1764590000000-", "-3", "1-2-3", "1-1048576", "abc", f"0:{ID_A},0:{ID_B}", f"0:{ID_A},",
     "", "1764590000000-3x", "0:1764590000000-3:4"],
)  # fmt: skip
def test_bad_entry_ids_name_the_option(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^--to-offset: "):
        parse_offsets(bad, "--to-offset", offset_from_text)


def test_a_sequence_past_the_offset_bits_is_refused_not_carried() -> None:
    with pytest.raises(ConfigError, match="sequence numbers up to 1048575"):
        parse_offsets("1-1048576", "--from-offset", offset_from_text)


@pytest.mark.parametrize("typed", [ID_A, f"0:{ID_A}", f"0:5,1:{ID_B}"])
def test_an_entry_id_given_to_kafka_names_the_option(typed: str) -> None:
    with pytest.raises(ConfigError, match=r"^--from-offset: .* is a Redis entry ID; this broker's"):
        parse_offsets(typed, "--from-offset")
    with pytest.raises(ConfigError, match=r"^--to-offset: .* is a Redis entry ID"):
        plan(_View({0: (0, 9), 1: (0, 9)}), "t", from_beginning=True, to_offset=typed)


def test_redis_plans_a_range_between_two_printed_ids() -> None:
    a, b = id_to_offset(ID_A), id_to_offset(ID_B)
    view = _RedisLikeView({0: (a - 5, b + 5), 1: (a, b)})
    (r,) = plan(view, "t", from_offset=f"0:{ID_A}", to_offset=f"0:{ID_B}", partitions=[0])
    assert (r.partition, r.start, r.end) == (0, a, b)
    positions = positions_from(view, "t", option="--to-offset", offsets=f"1:{ID_B}")
    assert positions == {1: b}


def test_past_the_end_is_told_in_the_brokers_form() -> None:
    a = id_to_offset(ID_A)
    redis = _RedisLikeView({0: (a, a + 1), 1: (a, a + 1)})
    with pytest.raises(ConfigError, match=rf"^--from-offset: {ID_B} is beyond the end of t\[0\] "
                       rf"\(end {offset_to_id(a + 1)}\)$"):  # fmt: skip
        plan(redis, "t", from_offset=f"0:{ID_B}")
    kafka = _View({0: (0, 9)})
    with pytest.raises(
        ConfigError, match=r"^--from-offset: 12 is beyond the end of t\[0\] \(end 9\)"
    ):
        plan(kafka, "t", from_offset="12")


def test_an_empty_offset_names_its_own_option() -> None:
    view = _View({0: (0, 9)})
    with pytest.raises(ConfigError, match=r"^--from-offset: "):
        plan(view, "t", from_offset="")
    with pytest.raises(ConfigError, match=r"^--to-offset: "):
        plan(view, "t", from_beginning=True, to_offset="")
