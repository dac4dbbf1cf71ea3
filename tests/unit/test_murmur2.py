from collections import deque

import confluent_kafka
from hypothesis import given
from hypothesis import strategies as st

from streamq.murmur2 import partition_for_key
from tests.core import Core


@given(key=st.binary(max_size=64), partitions=st.integers(min_value=1, max_value=1000))
def test_partition_matches_confluent_kafka(core: Core, key: bytes, partitions: int) -> None:
    assert core.partition_for_key(key, partitions) == confluent_kafka.murmur2(key, partitions)


@given(key=st.binary(max_size=64))
def test_the_whole_hash_matches_confluent_kafka(core: Core, key: bytes) -> None:
    """A modulus of 2**31 - 1 keeps nearly every bit of the masked hash."""
    n = 2**31 - 1
    assert core.partition_for_key(key, n) == confluent_kafka.murmur2(key, n)
    assert (core.murmur2(key) & 0x7FFFFFFF) % n == confluent_kafka.murmur2(key, n)


def test_known_vectors() -> None:
    # Values from the Java client's DefaultPartitioner, as librdkafka reproduces them.
    assert [partition_for_key(b"hello", n) for n in (4, 7)] == [1, 4]
    assert [partition_for_key(b"", n) for n in (4, 7)] == [1, 2]


def test_acks_count_acknowledgements_and_keep_refusals(core: Core) -> None:
    refused: deque[tuple[BaseException, object]] = deque()
    acks = core.Acks(refused)
    acks(None, None)
    acks(None, None)
    error = RuntimeError("refused")
    acks(error, "the output")
    assert acks.acked == 2 and list(refused) == [(error, "the output")]


def test_relay_hands_successes_on_and_failures_to_refuse(core: Core) -> None:
    seen: list[tuple[str, object, object]] = []
    relay = core.Relay(lambda e, o: seen.append(("delivered", e, o)),
                       lambda e, m: seen.append(("refuse", e, m)))  # fmt: skip
    relay(None, "message 1")
    relay("an error", "message 2")
    assert seen == [("delivered", None, None), ("refuse", "an error", "message 2")]
